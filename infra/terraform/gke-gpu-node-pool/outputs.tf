output "node_pool_name" {
  description = "Name of the GPU node pool."
  value       = google_container_node_pool.gpu.name
}

output "node_labels" {
  description = "Labels every GPU node carries (gpu-release's nodeSelector)."
  value       = local.gpu_node_labels
}

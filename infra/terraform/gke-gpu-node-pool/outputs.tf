output "node_pool_name" {
  description = "Name of the GPU node pool."
  value       = google_container_node_pool.gpu.name
}

output "node_labels" {
  description = "Labels every GPU node carries (what the GPU runtimes select; gpu-release must not)."
  value       = local.gpu_node_labels
}

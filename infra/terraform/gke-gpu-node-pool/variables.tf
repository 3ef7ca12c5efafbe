variable "project_id" {
  description = "Google Cloud project of the GKE cluster."
  type        = string
}

variable "location" {
  description = "Region or zone of the cluster (the node pool's location)."
  type        = string
}

variable "cluster_name" {
  description = "Name of the existing GKE cluster the pool joins."
  type        = string
}

variable "node_pool_name" {
  description = "Name of the GPU node pool."
  type        = string
  default     = "gpu"
}

variable "machine_type" {
  description = "Machine type of the GPU nodes; must support the accelerator (g2-* for L4, a2-* for A100, a3-* for H100)."
  type        = string
  default     = "g2-standard-8"
}

variable "accelerator_type" {
  description = "GPU model, e.g. nvidia-l4, nvidia-tesla-a100, nvidia-h100-80gb."
  type        = string
  default     = "nvidia-l4"
}

variable "accelerator_count" {
  description = "GPUs per node."
  type        = number
  default     = 1
}

variable "min_nodes" {
  description = "Fewest nodes per zone the autoscaler keeps. 0 lets the pool scale to zero when no runtime needs a GPU; gpu-release does not run here."
  type        = number
  default     = 1
  validation {
    condition     = var.min_nodes >= 0
    error_message = "min_nodes cannot be negative."
  }
}

variable "node_locations" {
  description = "Zones of the pool's nodes, in the cluster's region: at least two, so one zone's loss leaves GPU nodes (min_nodes and max_nodes count per zone)."
  type        = list(string)
  validation {
    condition     = length(distinct(var.node_locations)) >= 2
    error_message = "node_locations must name at least two distinct zones."
  }
}

variable "max_nodes" {
  description = "Most nodes per zone."
  type        = number
  default     = 8
}

variable "node_service_account" {
  description = "Email of the least-privilege service account the nodes run as."
  type        = string
}

# The GKE node pool the GPU inference runtimes (and gpu-release, next to them) run on. Its label and taint are
# the ones gpu-release's nodeSelector and tolerations name; they are defined once, in scheduling.tf.json.

provider "google" {
  project = var.project_id
}

resource "google_container_node_pool" "gpu" {
  name     = var.node_pool_name
  project  = var.project_id
  location = var.location
  cluster  = var.cluster_name

  autoscaling {
    min_node_count = var.min_nodes
    max_node_count = var.max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  # Replace GPU nodes one at a time: each holds sessions whose GPU memory gpu-release must free.
  upgrade_settings {
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = var.machine_type
    service_account = var.node_service_account
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.accelerator_type
      count = var.accelerator_count
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    labels = local.gpu_node_labels

    # Keeps everything but the runtimes and gpu-release off the GPU nodes. GKE adds nvidia.com/gpu itself.
    dynamic "taint" {
      for_each = local.gpu_node_taints
      content {
        key    = taint.value.key
        value  = taint.value.value
        effect = taint.value.effect
      }
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }
}

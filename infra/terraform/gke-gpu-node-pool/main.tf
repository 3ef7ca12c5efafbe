# The GKE node pool the GPU inference runtimes run on. Its label and taint are defined once, in scheduling.tf.json;
# session-reaper's gpu-release deliberately runs elsewhere (tests/deploy checks it neither selects nor tolerates them).

provider "google" {
  project = var.project_id
}

resource "google_container_node_pool" "gpu" {
  name     = var.node_pool_name
  project  = var.project_id
  location = var.location
  cluster  = var.cluster_name
  # The zones the pool's nodes are in, named explicitly: unset, the pool inherits the cluster's zones, which for a
  # zonal cluster is one zone, and a zone's loss takes every runtime with it. The provider's node_locations
  # (hashicorp/terraform-provider-google, google_container_node_pool; GKE API NodePool.locations); note that unsetting
  # it later does not return the pool to the cluster's zones.
  node_locations = var.node_locations

  autoscaling {
    min_node_count = var.min_nodes
    max_node_count = var.max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  # Replace GPU nodes one at a time: each holds sessions whose GPU memory must be freed before it goes.
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

    # Keeps everything but the runtimes off the GPU nodes. GKE adds nvidia.com/gpu itself.
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

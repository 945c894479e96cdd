# The edge's cluster: an Autopilot cluster with private nodes created here, or an existing
# cluster (var.existing_cluster) that has Workload Identity enabled.

resource "google_compute_network" "edge" {
  count = var.existing_cluster == null ? 1 : 0

  name                    = "${local.prefix}-net"
  auto_create_subnetworks = false

  depends_on = [google_project_service.enabled]
}

resource "google_compute_subnetwork" "edge" {
  count = var.existing_cluster == null ? 1 : 0

  name          = "${local.prefix}-subnet"
  region        = var.region
  network       = google_compute_network.edge[0].id
  ip_cidr_range = var.network_cidr

  # Private nodes reach Google APIs (GCS, Pub/Sub, the Healthcare API, the functions) this way.
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = var.pods_cidr
  }

  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = var.services_cidr
  }

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# GKE creates the allow rules the cluster and its internal load balancer need (at priority
# 1000); everything else arriving at the network is refused, and logged.
resource "google_compute_firewall" "deny_other_ingress" {
  count = var.existing_cluster == null ? 1 : 0

  name      = "${local.prefix}-deny-other-ingress"
  network   = google_compute_network.edge[0].id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }

  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_container_cluster" "autopilot" {
  count = var.existing_cluster == null ? 1 : 0

  name             = "${local.prefix}-edge"
  location         = var.region
  enable_autopilot = true
  network          = google_compute_network.edge[0].id
  subnetwork       = google_compute_subnetwork.edge[0].id

  deletion_protection = var.deletion_protection

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = var.master_ipv4_cidr_block
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  release_channel {
    channel = "REGULAR"
  }

  cluster_autoscaling {
    auto_provisioning_defaults {
      service_account = google_service_account.nodes[0].email
      oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    }
  }

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  depends_on = [google_project_iam_member.nodes_default_role]
}

data "google_container_cluster" "existing" {
  count = var.existing_cluster == null ? 0 : 1

  name     = var.existing_cluster.name
  location = var.existing_cluster.location
}

locals {
  cluster = var.existing_cluster == null ? {
    name           = google_container_cluster.autopilot[0].name
    location       = google_container_cluster.autopilot[0].location
    endpoint       = google_container_cluster.autopilot[0].endpoint
    ca_certificate = google_container_cluster.autopilot[0].master_auth[0].cluster_ca_certificate
    } : {
    name           = data.google_container_cluster.existing[0].name
    location       = data.google_container_cluster.existing[0].location
    endpoint       = data.google_container_cluster.existing[0].endpoint
    ca_certificate = data.google_container_cluster.existing[0].master_auth[0].cluster_ca_certificate
  }
}

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}

data "google_project" "current" {}

data "google_client_config" "current" {}

# The edge's Kubernetes objects go to the cluster this module creates (Autopilot) or to an
# existing one (var.existing_cluster); either way with the caller's own Google credentials.
provider "kubernetes" {
  host                   = "https://${local.cluster.endpoint}"
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = base64decode(local.cluster.ca_certificate)
}

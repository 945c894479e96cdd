# One service account per component. Every role is granted on the one resource it is needed
# for (the store, the bucket, a topic, a function), except the few Google only offers per
# project (log writing of the function builder, the GKE node defaults).

resource "google_service_account" "edge" {
  account_id   = "${local.prefix}-edge"
  display_name = "dicom-adapter edge (GKE, via Workload Identity)"
  description  = "Writes received instances to the buffer bucket, publishes to the buffered topic, invokes qido, retrieves from the DICOM store."

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = "${local.prefix}-${each.value.short_name}"
  display_name = "dicom-adapter function ${each.key}"
  description  = each.value.description

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "trigger" {
  account_id   = "${local.prefix}-trigger"
  display_name = "dicom-adapter Eventarc triggers"
  description  = "Identity of the Pub/Sub pushes to the event-driven functions; may invoke only those."

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "scheduler" {
  account_id   = "${local.prefix}-scheduler"
  display_name = "dicom-adapter sweep schedule"
  description  = "Identity of Cloud Scheduler's calls to the sweep function; may invoke only that."

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "builder" {
  account_id   = "${local.prefix}-builder"
  display_name = "dicom-adapter function builds"
  description  = "Builds the functions' containers: reads the source bucket, writes to the Artifact Registry repository, writes build logs."

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "nodes" {
  count = var.existing_cluster == null ? 1 : 0

  account_id   = "${local.prefix}-nodes"
  display_name = "dicom-adapter GKE nodes"
  description  = "Node identity of the Autopilot cluster: logs, metrics, image pulls from the repository. Pods use their own identities."

  depends_on = [google_project_service.enabled]
}

# Log writing can only be granted per project.
resource "google_project_iam_member" "builder_writes_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.builder.member
}

resource "google_storage_bucket_iam_member" "builder_reads_source" {
  bucket = google_storage_bucket.functions_source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.builder.member
}

resource "google_artifact_registry_repository_iam_member" "builder_pushes_images" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.builder.member
}

# The minimal node role GKE documents for custom node service accounts (logs, metrics).
resource "google_project_iam_member" "nodes_default_role" {
  count = var.existing_cluster == null ? 1 : 0

  project = var.project_id
  role    = "roles/container.defaultNodeServiceAccount"
  member  = google_service_account.nodes[0].member
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull_images" {
  count = var.existing_cluster == null ? 1 : 0

  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.nodes[0].member
}

# Workload Identity: the edge's Kubernetes service account acts as the edge's Google one.
resource "google_service_account_iam_member" "edge_workload_identity" {
  service_account_id = google_service_account.edge.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.kubernetes_namespace}/${local.edge_kubernetes_service_account}]"

  depends_on = [google_container_cluster.autopilot]
}

# The deliver function reads the export destinations' credentials, and only those.
resource "google_secret_manager_secret_iam_member" "deliver_reads_destination_secrets" {
  for_each = toset(var.deliver_secret_ids)

  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["deliver"].member
}

# The functions that make de-identified copies read the key's secret, and only that one (none
# without deidentify_key_secret).
resource "google_secret_manager_secret_iam_member" "reads_deidentify_key" {
  for_each = local.deidentify_key_readers

  secret_id = local.deidentify_key_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.key].member
}

locals {
  prefix              = var.name_prefix
  healthcare_location = coalesce(var.healthcare_location, var.region)
  gcs_buffer          = "gs://${google_storage_bucket.buffer.name}/${var.buffer_prefix}"
  dicomweb_address    = "https://healthcare.googleapis.com/v1/${google_healthcare_dicom_store.store.id}/dicomWeb"

  apis = toset([
    "artifactregistry.googleapis.com",
    "binaryauthorization.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "eventarc.googleapis.com",
    "healthcare.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  # Google-managed service agents this module grants narrow roles to.
  pubsub_service_agent     = "serviceAccount:service-${data.google_project.current.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  healthcare_service_agent = "serviceAccount:service-${data.google_project.current.number}@gcp-sa-healthcare.iam.gserviceaccount.com"
}

resource "google_project_service" "enabled" {
  for_each = var.enable_apis ? local.apis : toset([])

  service            = each.value
  disable_on_destroy = false
}

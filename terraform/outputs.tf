output "dimse_endpoint" {
  description = "Where PACS and modalities send: the internal load balancer's address and the DIMSE port (host:port)."
  value       = "${kubernetes_service_v1.edge.status[0].load_balancer[0].ingress[0].ip}:${var.dimse_port}"
}

output "dimse_aet" {
  description = "The called AE title to configure on the senders."
  value       = var.dimse_aet
}

output "dicom_store" {
  description = "The DICOM store's resource name (projects/P/locations/L/datasets/D/dicomStores/S)."
  value       = google_healthcare_dicom_store.store.id
}

output "dicomweb_address" {
  description = "The DICOM store's DICOMweb service root."
  value       = local.dicomweb_address
}

output "buffer_bucket" {
  description = "The buffer bucket."
  value       = google_storage_bucket.buffer.name
}

output "gcs_buffer" {
  description = "The buffer as the edge's --gcs_buffer (gs://BUCKET/PREFIX): queue/ and dead/ below it."
  value       = local.gcs_buffer
}

output "topics" {
  description = "Pub/Sub topics by role (buffered, notifications, exports and their dead-letter topics)."
  value       = { for k, t in google_pubsub_topic.topic : k => t.id }
}

output "dead_letter_hold_subscriptions" {
  description = "Pull subscriptions holding store-notification and export dead letters for inspection and redrive."
  value       = { for k, s in google_pubsub_subscription.dead_letter_hold : k => s.id }
}

output "function_uris" {
  description = "URIs of the functions (internal ingress only)."
  value       = { for k, f in google_cloudfunctions2_function.function : k => f.service_config[0].uri }
}

output "image_repository" {
  description = "Artifact Registry path for the edge image (Cloud Build pushes REPOSITORY/edge)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "cluster" {
  description = "The GKE cluster running the edge (for gcloud container clusters get-credentials NAME --location LOCATION)."
  value       = { name = local.cluster.name, location = local.cluster.location }
}

output "service_accounts" {
  description = "The service account of each component."
  value = merge(
    { edge = google_service_account.edge.email, trigger = google_service_account.trigger.email, scheduler = google_service_account.scheduler.email, builder = google_service_account.builder.email },
    { for k, sa in google_service_account.function : k => sa.email },
  )
}

output "dashboard" {
  description = "The pipeline's Cloud Monitoring dashboard: its resource id (projects/NUMBER/dashboards/ID) and its page in the Cloud console."
  value = {
    id  = google_monitoring_dashboard.pipeline.id
    url = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.pipeline.id), 3)}?project=${var.project_id}"
  }
}

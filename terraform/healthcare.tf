# The DICOM store every received instance ends up in; its notifications feed export_fanout.

resource "google_healthcare_dataset" "dataset" {
  name     = var.dataset_name
  location = local.healthcare_location

  depends_on = [google_project_service.enabled]
}

resource "google_healthcare_dicom_store" "store" {
  name    = var.dicom_store_name
  dataset = google_healthcare_dataset.dataset.id

  # One Pub/Sub message per new instance (data: its WADO path), read by export_fanout.
  notification_config {
    pubsub_topic = google_pubsub_topic.topic["notifications"].id
  }

  depends_on = [google_pubsub_topic_iam_member.healthcare_publishes_notifications]
}

# DICOM roles on this store only, never on the project.
resource "google_healthcare_dicom_store_iam_member" "editor" {
  for_each = toset(["stow_upload"])

  dicom_store_id = google_healthcare_dicom_store.store.id
  role           = "roles/healthcare.dicomEditor"
  member         = google_service_account.function[each.key].member
}

resource "google_healthcare_dicom_store_iam_member" "viewer" {
  for_each = toset(["qido", "export_fanout", "deliver"])

  dicom_store_id = google_healthcare_dicom_store.store.id
  role           = "roles/healthcare.dicomViewer"
  member         = google_service_account.function[each.key].member
}

# The edge retrieves instances by WADO-RS for C-MOVE and C-GET (queries go through qido).
resource "google_healthcare_dicom_store_iam_member" "edge_viewer" {
  dicom_store_id = google_healthcare_dicom_store.store.id
  role           = "roles/healthcare.dicomViewer"
  member         = google_service_account.edge.member
}

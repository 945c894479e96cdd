# The buffer: the edge streams each received instance to PREFIX/queue/<name>.dcm before it
# acknowledges the C-STORE; stow_upload deletes it once stored, or copies it to PREFIX/dead/.

resource "google_storage_bucket" "buffer" {
  # checkov:skip=CKV_GCP_78:A buffer: every object is deleted on purpose once its instance is stored; versioning would keep a second copy of every image. Soft delete (buffer_soft_delete_days) is the operator's choice.
  name     = "${var.project_id}-${local.prefix}-buffer"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  # Every object is deleted on purpose once its instance is stored, so no versioning (it would
  # keep a second copy of every image); soft delete is the operator's choice (0 or 7-90 days).
  soft_delete_policy {
    retention_duration_seconds = var.buffer_soft_delete_days * 86400
  }

  # Dead letters are kept long enough to redrive them, then deleted.
  lifecycle_rule {
    condition {
      age            = var.dead_letter_retention_days
      matches_prefix = ["${var.buffer_prefix}/dead/"]
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }

  depends_on = [google_kms_crypto_key_iam_member.storage_uses_key]
}

# Usage logs of the buffer bucket (who read or wrote which object when).
resource "google_storage_bucket" "access_logs" {
  # checkov:skip=CKV_GCP_62:This is the access-log bucket; logging its own access would log the log writes.
  name     = "${var.project_id}-${local.prefix}-access-logs"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 365
    }
    action {
      type = "Delete"
    }
  }
}

# The zipped functions/ folder, the source of every function.
resource "google_storage_bucket" "functions_source" {
  name     = "${var.project_id}-${local.prefix}-functions-src"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = true
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
}

# GCS usage logs are written by this Google group, as the documentation requires.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

# Object roles on the buffer bucket only.
resource "google_storage_bucket_iam_member" "buffer_object_user" {
  for_each = {
    edge        = google_service_account.edge.member
    stow_upload = google_service_account.function["stow_upload"].member
    dead_letter = google_service_account.function["dead_letter"].member
  }

  bucket = google_storage_bucket.buffer.name
  role   = "roles/storage.objectUser"
  member = each.value
}

resource "google_storage_bucket_iam_member" "buffer_object_viewer" {
  bucket = google_storage_bucket.buffer.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function["sweep"].member
}

# CMEK: the Cloud Storage and Pub/Sub service agents may use the key.
data "google_storage_project_service_account" "gcs" {}

resource "google_kms_crypto_key_iam_member" "storage_uses_key" {
  count = var.kms_key_name == null ? 0 : 1

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = data.google_storage_project_service_account.gcs.member
}

resource "google_kms_crypto_key_iam_member" "pubsub_uses_key" {
  count = var.kms_key_name == null ? 0 : 1

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = local.pubsub_service_agent
}

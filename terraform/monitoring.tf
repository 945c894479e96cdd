# Log-based metrics and alerts: dead letters, C-STORE failures, upload age (how long the oldest
# buffered instance has waited), and dead letters held for the operator.

locals {
  function_service_names = { for name, f in local.functions : name => google_cloudfunctions2_function.function[name].name }
  dead_letter_writers    = ["stow_upload", "dead_letter", "export_fanout", "deliver"]
  runbook                = "See docs/operations.md (Cloud runtime) of dicom-adapter: what each alert means, the log query to run, and how to redrive."
}

resource "google_logging_metric" "dead_letters" {
  name        = "${local.prefix}/dead_letters"
  description = "Instances (or export deliveries) moved to dead letters: the store or a destination rejected them for good, or their deliveries ran out."
  filter      = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name=(${join(" OR ", [for n in local.dead_letter_writers : "\"${local.function_service_names[n]}\""])})
    severity>=ERROR
    jsonPayload.message=~"dead.letter"
  EOT

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "function"
      value_type  = "STRING"
      description = "The function that dead-lettered."
    }
  }

  label_extractors = {
    function = "EXTRACT(resource.labels.service_name)"
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "cstore_failures" {
  name        = "${local.prefix}/cstore_failures"
  description = "C-STORE requests the edge answered with a failure status (the log line's status and reason say why)."
  filter      = <<-EOT
    resource.type="k8s_container"
    resource.labels.namespace_name="${var.kubernetes_namespace}"
    resource.labels.container_name="edge"
    jsonPayload.message="C-STORE refused"
  EOT

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "status"
      value_type  = "STRING"
      description = "DIMSE status, e.g. 0xA700."
    }
    labels {
      key         = "calling_aet"
      value_type  = "STRING"
      description = "The sender's AE title."
    }
  }

  label_extractors = {
    status      = "EXTRACT(jsonPayload.status)"
    calling_aet = "EXTRACT(labels.calling_aet)"
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "upload_duration" {
  name        = "${local.prefix}/upload_duration"
  description = "Time stow_upload took to store an instance, retries within the delivery included."
  filter      = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name="${local.function_service_names["stow_upload"]}"
    jsonPayload.message="stored"
  EOT

  value_extractor = "EXTRACT(jsonPayload.duration_ms)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "ms"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 32
      growth_factor      = 1.5
      scale              = 10
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "dicom-adapter: dead letters"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  severity              = "ERROR"

  conditions {
    display_name = "an instance or export was dead-lettered"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.dead_letters.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.function"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Instances were moved to dead letters (gs://${google_storage_bucket.buffer.name}/${var.buffer_prefix}/dead/, object metadata `reason`). ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "cstore_failures" {
  display_name          = "dicom-adapter: C-STORE failures"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  severity              = "WARNING"

  conditions {
    display_name = "C-STORE requests refused"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.cstore_failures.name}\" AND resource.type=\"k8s_container\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.cstore_failure_alert_count
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.status"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The edge refused C-STORE requests; senders saw a failure status with an error comment. 0xA700 usually means the buffer bucket or Pub/Sub was unreachable or denied. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "upload_age" {
  display_name          = "dicom-adapter: uploads falling behind"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  severity              = "WARNING"

  conditions {
    display_name = "oldest buffered instance waiting for its upload"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=monitoring.regex.full_match(\"eventarc-.*${local.function_service_names["stow_upload"]}.*\")"
      comparison      = "COMPARISON_GT"
      threshold_value = var.upload_age_alert_minutes * 60
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Buffered instances are waiting longer than ${var.upload_age_alert_minutes} minutes for stow_upload: the DICOM store is failing or throttling (look for `store unavailable, will retry`). Nothing is lost: the instances stay in the buffer and are retried. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "held_dead_letters" {
  display_name          = "dicom-adapter: export dead letters waiting"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  severity              = "ERROR"

  conditions {
    display_name = "messages in a dead-letter hold subscription"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=one_of(${join(", ", [for k in sort(tolist(local.held_dead_letters)) : "\"${google_pubsub_subscription.dead_letter_hold[k].name}\""])})"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Store notifications or export deliveries ran out of delivery attempts and wait in a dead-letter hold subscription (kept 7 days). ${local.runbook}"
  }
}

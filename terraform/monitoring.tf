# Log-based metrics and alerts: dead letters, C-STORE failures, upload age (how long the oldest
# buffered instance has waited), and dead letters held for the operator. The counters below
# (log_counters) and the distributions count log lines the code writes (message and fields as
# logged, docs/operations.md "Metrics and alerts"); the dashboard (dashboard.tf) charts them all.

locals {
  function_service_names = { for name, f in local.functions : name => google_cloudfunctions2_function.function[name].name }
  dead_letter_writers    = ["stow_upload", "dead_letter", "export_fanout", "deliver"]
  runbook                = "See docs/operations.md (Cloud runtime) of dicom-adapter: what each alert means, the log query to run, and how to redrive."

  # Where each component's log lines are: the edge's container, and the functions' Cloud Run services.
  edge_log_filter = <<-EOT
    resource.type="k8s_container"
    resource.labels.namespace_name="${var.kubernetes_namespace}"
    resource.labels.container_name="edge"
  EOT
  function_log_groups = {
    dead_letters = local.dead_letter_writers
    stow_upload  = ["stow_upload"]
    export       = ["export_fanout"]
    sweep        = ["sweep"]
    uploads      = ["stow_upload", "deliver"] # the same upload code stores instances and delivers exports
  }
  function_log_filter = { for group, names in local.function_log_groups : group => join("\n", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=(${join(" OR ", [for n in names : "\"${local.function_service_names[n]}\""])})",
    "",
  ]) }

  # Counters of log lines (DELTA INT64), each label taken from a field of the line.
  function_label = { extractor = "EXTRACT(resource.labels.service_name)", description = "The function's Cloud Run service." }
  log_counters = {
    buffered = {
      description = "Instances the edge made durable in the buffer and acknowledged (one per routing destination)."
      filter      = "${local.edge_log_filter}jsonPayload.message=\"buffered\""
      labels = {
        calling_aet = { extractor = "EXTRACT(labels.calling_aet)", description = "The sender's AE title." }
        called_aet  = { extractor = "EXTRACT(labels.called_aet)", description = "The AE title the sender called." }
        destination = { extractor = "EXTRACT(jsonPayload.destination)", description = "The routing destination; empty for the default store." }
      }
    }
    associations_rejected = {
      description = "Associations the edge rejected (unknown calling AE, limits)."
      filter      = "${local.edge_log_filter}jsonPayload.message=\"association rejected\""
      labels = {
        calling_aet = { extractor = "EXTRACT(labels.calling_aet)", description = "The sender's AE title." }
      }
    }
    stored = {
      description = "Instances stowed (stow_upload) or delivered (deliver): stored, already stored identically, or overwritten."
      filter      = "${local.function_log_filter.uploads}jsonPayload.message=(\"stored\" OR \"identical instance already stored\" OR \"replaced a different stored instance (stow_overwrite)\")"
      labels = {
        function    = local.function_label
        outcome     = { extractor = "EXTRACT(jsonPayload.message)", description = "The log line: stored, identical instance already stored, replaced ..." }
        store       = { extractor = "EXTRACT(jsonPayload.store)", description = "The store or peer written to (on 'stored' lines)." }
        destination = { extractor = "EXTRACT(jsonPayload.destination)", description = "The routing or export destination; empty for the default store." }
      }
    }
    retries = {
      description = "Transient upload or delivery failures: a STOW-RS attempt retried within the delivery, or the delivery given back to Pub/Sub for a later one."
      filter      = "${local.function_log_filter.uploads}jsonPayload.message=(\"STOW-RS attempt failed, retrying\" OR \"store unavailable, will retry\")"
      labels = {
        function    = local.function_label
        outcome     = { extractor = "EXTRACT(jsonPayload.message)", description = "Retried within the delivery, or redelivery." }
        destination = { extractor = "EXTRACT(jsonPayload.destination)", description = "The routing or export destination; empty for the default store." }
      }
    }
    transcode_skipped = {
      description = "Transformed copies stored (stow_upload) or delivered (deliver) in the transfer syntax they were received in, because they could not be transcoded (the WARNING line's reason says why)."
      filter      = "${local.function_log_filter.uploads}jsonPayload.message=\"transcode skipped: the copy keeps its transfer syntax\""
      labels = {
        function    = local.function_label
        destination = { extractor = "EXTRACT(jsonPayload.destination)", description = "The routing or export destination; empty for the default store." }
      }
    }
    sweep_reannounced = {
      description = "Buffered instances the sweep re-announced because they were not uploaded in time (their message lost or expired)."
      filter      = "${local.function_log_filter.sweep}jsonPayload.message=\"re-announced a buffered object that was not uploaded in time\""
      labels      = {}
    }
  }
}

resource "google_logging_metric" "counter" {
  for_each = local.log_counters

  name        = "${local.prefix}/${each.key}"
  description = each.value.description
  filter      = each.value.filter

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    dynamic "labels" {
      for_each = each.value.labels
      content {
        key         = labels.key
        value_type  = "STRING"
        description = labels.value.description
      }
    }
  }

  label_extractors = { for key, label in each.value.labels : key => label.extractor }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "dead_letters" {
  name        = "${local.prefix}/dead_letters"
  description = "Instances (or export deliveries) moved to dead letters: the store or a destination rejected them for good, or their deliveries ran out."
  filter      = <<-EOT
    ${local.function_log_filter.dead_letters}severity>=ERROR
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
    labels {
      key         = "destination"
      value_type  = "STRING"
      description = "The routing or export destination (on the lines that name one); empty for the default store."
    }
  }

  label_extractors = {
    function    = "EXTRACT(resource.labels.service_name)"
    destination = "EXTRACT(jsonPayload.destination)"
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "cstore_failures" {
  name        = "${local.prefix}/cstore_failures"
  description = "C-STORE requests the edge answered with a failure status (the log line's status and reason say why)."
  filter      = <<-EOT
    ${local.edge_log_filter}jsonPayload.message="C-STORE refused"
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

# Durations the code logs as duration_ms, as distributions.
locals {
  log_durations = {
    upload_duration = {
      description = "Time stow_upload took to store an instance, retries within the delivery included."
      filter      = "${local.function_log_filter.stow_upload}jsonPayload.message=\"stored\""
      scale_ms    = 10
    }
    buffer_duration = {
      description = "Time the edge took from a received data set to its C-STORE answer: the buffer object finished and the event published."
      filter      = "${local.edge_log_filter}jsonPayload.message=\"buffered\""
      scale_ms    = 1
    }
  }
}

resource "google_logging_metric" "duration" {
  for_each = local.log_durations

  name            = "${local.prefix}/${each.key}"
  description     = each.value.description
  filter          = each.value.filter
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
      scale              = each.value.scale_ms
    }
  }

  depends_on = [google_project_service.enabled]
}

moved {
  from = google_logging_metric.upload_duration
  to   = google_logging_metric.duration["upload_duration"]
}

resource "google_logging_metric" "fanout_destinations" {
  name        = "${local.prefix}/fanout_destinations"
  description = "Export messages export_fanout made of one store notification: the destinations whose rules matched (0 for none)."
  filter      = <<-EOT
    ${local.function_log_filter.export}jsonPayload.message="routed"
  EOT

  value_extractor = "EXTRACT(jsonPayload.destinations)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "1"
  }

  bucket_options {
    linear_buckets {
      num_finite_buckets = 16
      width              = 1
      offset             = 0
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
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.type=\"pubsub_subscription\" AND ${local.dashboard_subscription_filter.stow_upload}"
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

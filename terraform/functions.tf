# The Cloud Functions (gen2), all from the functions/ folder as it is, one entry point each.

locals {
  functions = {
    stow_upload = {
      short_name        = "stow"
      description       = "Uploads each buffered instance to the DICOM store by STOW-RS; dead-letters permanent rejections."
      trigger_topic     = "buffered"
      dead_letter_topic = "buffered_dead_letter"
    }
    dead_letter = {
      short_name        = "deadletter"
      description       = "Records buffered-instance events that exhausted their deliveries as dead letters."
      trigger_topic     = "buffered_dead_letter"
      dead_letter_topic = null
    }
    sweep = {
      short_name        = "sweep"
      description       = "Re-announces buffered instances left without a completed upload (called by Cloud Scheduler)."
      trigger_topic     = null
      dead_letter_topic = null
    }
    qido = {
      short_name        = "qido"
      description       = "Answers the edge's C-FIND, C-MOVE and C-GET queries against the DICOM store (internal only)."
      trigger_topic     = null
      dead_letter_topic = null
    }
    export_fanout = {
      short_name        = "fanout"
      description       = "Turns each DICOM store notification into one export message per matching destination."
      trigger_topic     = "notifications"
      dead_letter_topic = "notifications_dead_letter"
    }
    deliver = {
      short_name        = "deliver"
      description       = "Sends one instance to one export destination (STOW-RS or C-STORE)."
      trigger_topic     = "exports"
      dead_letter_topic = "exports_dead_letter"
    }
  }

  # Every function gets the same settings; each reads what it needs (names as in the code's
  # config: DICOM_ADAPTER_<flag>). The transforms' settings go only where copies are made
  # (local.transform_environment, transforms.tf).
  function_environment = {
    DICOM_ADAPTER_DICOMWEB_ADDRESS          = local.dicomweb_address
    DICOM_ADAPTER_GCS_BUFFER                = local.gcs_buffer
    DICOM_ADAPTER_PUBSUB_TOPIC              = google_pubsub_topic.topic["buffered"].id
    DICOM_ADAPTER_SWEEP_MIN_AGE_MINUTES     = tostring(var.sweep_min_age_minutes)
    DICOM_ADAPTER_EXPORTS_TOPIC             = google_pubsub_topic.topic["exports"].id
    DICOM_ADAPTER_DESTINATION_CONFIG_JSON   = var.destination_config_json
    DICOM_ADAPTER_STOW_OVERWRITE            = tostring(var.stow_overwrite)
    DICOM_ADAPTER_HTTP_ERROR_CODES_TO_RETRY = var.http_error_codes_to_retry
    DICOM_ADAPTER_QIDO_STORE_PROFILE        = var.qido_store_profile
    # Export: where permanent failures and malformed notifications go at once (held for the
    # operator), and the AEs export rules may name as dimse_destination.
    DICOM_ADAPTER_EXPORTS_DEAD_LETTER_TOPIC       = google_pubsub_topic.topic["exports_dead_letter"].id
    DICOM_ADAPTER_NOTIFICATIONS_DEAD_LETTER_TOPIC = google_pubsub_topic.topic["notifications_dead_letter"].id
    DICOM_ADAPTER_AET_DICTIONARY_INLINE           = jsonencode(var.aet_dictionary)
  }

  event_functions = { for name, f in local.functions : name => f if f.trigger_topic != null }
}

data "archive_file" "functions" {
  type        = "zip"
  source_dir  = "${path.module}/../functions"
  output_path = "${path.module}/.build/functions.zip"
  excludes    = ["**/__pycache__/**", "**/*.pyc"]
}

resource "google_storage_bucket_object" "functions_source" {
  # A new name per content, so a code change redeploys every function.
  name   = "functions-${data.archive_file.functions.output_sha256}.zip"
  bucket = google_storage_bucket.functions_source.name
  source = data.archive_file.functions.output_path
}

resource "google_cloudfunctions2_function" "function" {
  for_each = local.functions

  name        = "${local.prefix}-${replace(each.key, "_", "-")}"
  location    = var.region
  description = each.value.description

  build_config {
    runtime           = "python311"
    entry_point       = each.key
    docker_repository = google_artifact_registry_repository.images.id
    service_account   = google_service_account.builder.id

    source {
      storage_source {
        bucket = google_storage_bucket.functions_source.name
        object = google_storage_bucket_object.functions_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.function_memory
    timeout_seconds                  = var.function_timeout_seconds
    min_instance_count               = 0
    max_instance_count               = var.function_max_instances
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function[each.key].email
    environment_variables            = merge(local.function_environment, lookup(local.transform_environment, each.key, {}))
  }

  dynamic "event_trigger" {
    for_each = each.value.trigger_topic == null ? [] : [each.value.trigger_topic]
    content {
      trigger_region        = var.region
      event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
      pubsub_topic          = google_pubsub_topic.topic[event_trigger.value].id
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = google_service_account.trigger.email
    }
  }

  depends_on = [
    google_project_iam_member.builder_writes_logs,
    google_storage_bucket_iam_member.builder_reads_source,
    google_artifact_registry_repository_iam_member.builder_pushes_images,
  ]
}

# Who may invoke which function (on the function's Cloud Run service, nothing wider).
locals {
  invokers = merge(
    { for name, f in local.event_functions : name => google_service_account.trigger.member },
    {
      sweep = google_service_account.scheduler.member
      qido  = google_service_account.edge.member
    },
  )
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.invokers

  location = var.region
  name     = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = each.value
}

# The provider cannot set a dead-letter topic or backoff on the subscription an Eventarc
# trigger creates (hashicorp/terraform-provider-google#17697, #25069), so this sets them with
# gcloud, where terraform runs, whenever a trigger or the policy changes.
resource "terraform_data" "subscription_policy" {
  for_each = { for name, f in local.event_functions : name => f if f.dead_letter_topic != null }

  triggers_replace = [
    google_cloudfunctions2_function.function[each.key].event_trigger[0].trigger,
    google_pubsub_topic.topic[each.value.dead_letter_topic].id,
    var.max_delivery_attempts,
    var.retry_min_backoff_seconds,
    var.retry_max_backoff_seconds,
  ]

  provisioner "local-exec" {
    command     = "${path.module}/scripts/eventarc-dead-letter.sh"
    interpreter = ["bash"]
    environment = {
      TRIGGER               = google_cloudfunctions2_function.function[each.key].event_trigger[0].trigger
      DEAD_LETTER_TOPIC     = google_pubsub_topic.topic[each.value.dead_letter_topic].id
      MAX_DELIVERY_ATTEMPTS = var.max_delivery_attempts
      MIN_RETRY_DELAY       = "${var.retry_min_backoff_seconds}s"
      MAX_RETRY_DELAY       = "${var.retry_max_backoff_seconds}s"
      PUBSUB_SERVICE_AGENT  = local.pubsub_service_agent
    }
  }

  depends_on = [google_pubsub_topic_iam_member.pubsub_publishes_dead_letters]
}

resource "google_cloud_scheduler_job" "sweep" {
  name             = "${local.prefix}-sweep"
  region           = var.region
  description      = "Re-announces buffered instances without a completed upload."
  schedule         = var.sweep_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "600s"

  retry_config {
    retry_count          = 3
    min_backoff_duration = "30s"
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.function["sweep"].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.function["sweep"].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker]
}

# Topics. Each function's subscription is the one its Eventarc trigger creates; the triggers
# retry failures, and scripts/eventarc-dead-letter.sh (run by functions.tf) gives those
# subscriptions their backoff and dead-letter topic, which the provider cannot set.

locals {
  topics = {
    buffered                  = "${local.prefix}-buffered"                  # edge and sweep -> stow_upload
    buffered_dead_letter      = "${local.prefix}-buffered-dead-letter"      # -> dead_letter
    notifications             = "${local.prefix}-notifications"             # DICOM store -> export_fanout
    notifications_dead_letter = "${local.prefix}-notifications-dead-letter" # held for the operator
    exports                   = "${local.prefix}-exports"                   # export_fanout -> deliver
    exports_dead_letter       = "${local.prefix}-exports-dead-letter"       # held for the operator
  }

  # Dead-letter topics no function consumes: a pull subscription keeps their messages (7 days)
  # for inspection and redrive, and an alert fires while it is not empty.
  held_dead_letters = toset(["notifications_dead_letter", "exports_dead_letter"])
}

resource "google_pubsub_topic" "topic" {
  for_each = local.topics

  name                       = each.value
  kms_key_name               = var.kms_key_name
  message_retention_duration = "604800s"

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.pubsub_uses_key]
}

resource "google_pubsub_subscription" "dead_letter_hold" {
  for_each = local.held_dead_letters

  name                       = "${google_pubsub_topic.topic[each.key].name}-hold"
  topic                      = google_pubsub_topic.topic[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# Publishers, each on its own topic.
resource "google_pubsub_topic_iam_member" "edge_publishes_buffered" {
  topic  = google_pubsub_topic.topic["buffered"].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.edge.member
}

# The edge's readiness check looks the topic up (pubsub.topics.get), which publisher lacks.
resource "google_pubsub_topic_iam_member" "edge_views_buffered" {
  topic  = google_pubsub_topic.topic["buffered"].id
  role   = "roles/pubsub.viewer"
  member = google_service_account.edge.member
}

resource "google_pubsub_topic_iam_member" "sweep_publishes_buffered" {
  topic  = google_pubsub_topic.topic["buffered"].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.function["sweep"].member
}

resource "google_pubsub_topic_iam_member" "fanout_publishes_exports" {
  topic  = google_pubsub_topic.topic["exports"].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.function["export_fanout"].member
}

# Export dead letters the functions publish themselves (permanent rejections, malformed messages).
resource "google_pubsub_topic_iam_member" "deliver_publishes_export_dead_letters" {
  topic  = google_pubsub_topic.topic["exports_dead_letter"].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.function["deliver"].member
}

resource "google_pubsub_topic_iam_member" "fanout_publishes_notification_dead_letters" {
  topic  = google_pubsub_topic.topic["notifications_dead_letter"].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.function["export_fanout"].member
}

resource "google_pubsub_topic_iam_member" "healthcare_publishes_notifications" {
  topic  = google_pubsub_topic.topic["notifications"].id
  role   = "roles/pubsub.publisher"
  member = local.healthcare_service_agent

  # The Healthcare service agent exists once the API has a dataset.
  depends_on = [google_healthcare_dataset.dataset]
}

# Pub/Sub forwards undeliverable messages to the dead-letter topics as its service agent.
resource "google_pubsub_topic_iam_member" "pubsub_publishes_dead_letters" {
  for_each = toset(["buffered_dead_letter", "notifications_dead_letter", "exports_dead_letter"])

  topic  = google_pubsub_topic.topic[each.key].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent

  depends_on = [google_project_service.enabled]
}

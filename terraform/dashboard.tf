# The Cloud Monitoring dashboard of the pipeline, stage by stage: edge -> buffer -> upload ->
# store; export fan-out -> deliveries; dead letters and backlog age. dashboard_layout.tf draws
# it from the two locals below, which hold every name it charts: the log-based metrics
# (monitoring.tf), the functions' Cloud Run services, the subscriptions and the alert
# policies. The layout reads nothing else, so the suite renders it offline and checks each
# metric it names (tests/test_deploy_terraform.py).

locals {
  dashboard_inputs = {
    title = "${local.prefix}: DIMSE to DICOMweb pipeline"
    logging_metrics = {
      buffered              = google_logging_metric.counter["buffered"].name
      associations_rejected = google_logging_metric.counter["associations_rejected"].name
      stored                = google_logging_metric.counter["stored"].name
      retries               = google_logging_metric.counter["retries"].name
      transcode_skipped     = google_logging_metric.counter["transcode_skipped"].name
      sweep_reannounced     = google_logging_metric.counter["sweep_reannounced"].name
      cstore_failures       = google_logging_metric.cstore_failures.name
      dead_letters          = google_logging_metric.dead_letters.name
      upload_duration       = google_logging_metric.duration["upload_duration"].name
      buffer_duration       = google_logging_metric.duration["buffer_duration"].name
      fanout_destinations   = google_logging_metric.fanout_destinations.name
    }
    services           = local.function_service_names
    hold_subscriptions = { for key, s in google_pubsub_subscription.dead_letter_hold : key => s.name }
    edge               = { namespace = var.kubernetes_namespace, container = "edge" }
    upload_age_alert_s = var.upload_age_alert_minutes * 60
  }

  # Apart: the upload_age alert uses the layout's subscription filter, so the policies cannot
  # be among the inputs that filter is made of.
  dashboard_alert_policies = {
    dead_letters      = google_monitoring_alert_policy.dead_letters.name
    cstore_failures   = google_monitoring_alert_policy.cstore_failures.name
    upload_age        = google_monitoring_alert_policy.upload_age.name
    held_dead_letters = google_monitoring_alert_policy.held_dead_letters.name
  }
}

resource "google_monitoring_dashboard" "pipeline" {
  dashboard_json = local.dashboard_json

  depends_on = [google_project_service.enabled]
}

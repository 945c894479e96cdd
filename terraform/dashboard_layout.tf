# The dashboard's widgets (dashboard.tf creates it). This file reads nothing but
# local.dashboard_inputs and local.dashboard_alert_policies, so the suite renders it alone, with
# the names those locals would hold, and checks every metric and resource type it names.
#
# A chart is a title, a y-axis label and its series: a metric type, the monitored resource its
# time series are written on, an optional extra filter, and the aggregation (per minute).
# Log-based counters are summed per minute (ALIGN_SUM over 60 s); gauges (queue depth, age)
# take their maximum; distributions are shown as percentiles across series. A series is
# labelled by the label it is grouped by unless it has a legend of its own.

locals {
  dashboard_metric = { for key, name in local.dashboard_inputs.logging_metrics : key => "logging.googleapis.com/user/${name}" }
  dashboard_svc    = local.dashboard_inputs.services
  dashboard_edge   = "resource.label.namespace_name=\"${local.dashboard_inputs.edge.namespace}\" AND resource.label.container_name=\"${local.dashboard_inputs.edge.container}\""

  # The subscription each Eventarc trigger creates is eventarc-REGION-TRIGGER-sub-N, the trigger
  # named after its function; the dead-letter hold subscriptions have names of their own.
  dashboard_subscription_filter = merge(
    { for name, service in local.dashboard_svc : name => "resource.label.subscription_id=monitoring.regex.full_match(\"eventarc-.*${service}.*\")" },
    { for key, name in local.dashboard_inputs.hold_subscriptions : key => "resource.label.subscription_id=\"${name}\"" },
  )
  dashboard_subscription = {
    for key, filter in local.dashboard_subscription_filter : key => { resource = "pubsub_subscription", filter = filter, reduce = "REDUCE_MAX", legend = key }
  }
  dashboard_backlog = "pubsub.googleapis.com/subscription/num_undelivered_messages"
  dashboard_age     = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"

  # Series building blocks: a log-based counter per minute, a latency percentile.
  dashboard_count    = { align = "ALIGN_SUM", reduce = "REDUCE_SUM" }
  dashboard_function = { for name, service in local.dashboard_svc : name => "metric.label.function=\"${service}\"" }
  dashboard_percentiles = [
    for p in ["50", "95", "99"] : { align = "ALIGN_DELTA", reduce = "REDUCE_PERCENTILE_${p}", legend = "p${p}" }
  ]

  dashboard_sections = [
    {
      title    = "1. Edge: C-STOREs received"
      subtitle = "The edge (GKE) acknowledges a C-STORE once the instance is in the buffer bucket and its event is published; refusals carry a DIMSE status and an error comment."
      charts = [
        {
          title = "C-STOREs acknowledged (buffered), by calling AE"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric = local.dashboard_metric.buffered, resource = "k8s_container", group_by = ["metric.label.calling_aet"]
          })]
        },
        {
          title = "C-STOREs refused, by DIMSE status"
          y     = "requests / min"
          series = [merge(local.dashboard_count, {
            metric = local.dashboard_metric.cstore_failures, resource = "k8s_container", group_by = ["metric.label.status"]
          })]
        },
        {
          title = "Associations rejected, by calling AE"
          y     = "associations / min"
          series = [merge(local.dashboard_count, {
            metric = local.dashboard_metric.associations_rejected, resource = "k8s_container", group_by = ["metric.label.calling_aet"]
          })]
        },
        {
          title  = "Time to acknowledge a C-STORE (buffer write and event)"
          y      = "ms"
          series = [for p in local.dashboard_percentiles : merge(p, { metric = local.dashboard_metric.buffer_duration, resource = "k8s_container" })]
        },
        {
          title = "Edge pods: memory in use"
          y     = "bytes"
          series = [{
            metric = "kubernetes.io/container/memory/used_bytes", resource = "k8s_container", align = "ALIGN_MAX", reduce = "REDUCE_MAX",
            filter = "${local.dashboard_edge} AND metric.label.memory_type=\"non-evictable\"", group_by = ["resource.label.pod_name"]
          }]
        },
        {
          title = "Edge pods: container restarts"
          y     = "restarts / min"
          series = [{
            metric = "kubernetes.io/container/restart_count", resource = "k8s_container", align = "ALIGN_DELTA", reduce = "REDUCE_SUM",
            filter = local.dashboard_edge, group_by = ["resource.label.pod_name"]
          }]
        },
      ]
    },
    {
      title    = "2. Buffer: waiting for the upload"
      subtitle = "Each buffered instance is a message on the buffered topic until stow_upload has stored it; the sweep re-announces objects whose message was lost."
      charts = [
        {
          title  = "Buffered instances waiting for stow_upload"
          y      = "messages"
          series = [merge(local.dashboard_subscription.stow_upload, { metric = local.dashboard_backlog, align = "ALIGN_MAX" })]
        },
        {
          title      = "Oldest buffered instance waiting for its upload"
          y          = "seconds"
          series     = [merge(local.dashboard_subscription.stow_upload, { metric = local.dashboard_age, align = "ALIGN_MAX" })]
          thresholds = [{ value = local.dashboard_inputs.upload_age_alert_s, label = "alert: uploads falling behind" }]
        },
        {
          title = "Re-announced by the sweep (not uploaded in time)"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric = local.dashboard_metric.sweep_reannounced, resource = "cloud_run_revision"
          })]
        },
      ]
    },
    {
      title    = "3. Upload: stow_upload"
      subtitle = "STOW-RS of each buffered instance; transient failures are retried within the delivery, then redelivered by Pub/Sub; permanent rejections are dead-lettered."
      charts = [
        {
          title = "Instances stored, by outcome"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric   = local.dashboard_metric.stored, resource = "cloud_run_revision", filter = local.dashboard_function.stow_upload,
            group_by = ["metric.label.outcome"]
          })]
        },
        {
          title = "Retries: within a delivery, and redeliveries"
          y     = "retries / min"
          series = [merge(local.dashboard_count, {
            metric   = local.dashboard_metric.retries, resource = "cloud_run_revision", filter = local.dashboard_function.stow_upload,
            group_by = ["metric.label.outcome"]
          })]
        },
        {
          title = "Upload failures: dead-lettered"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric   = local.dashboard_metric.dead_letters, resource = "cloud_run_revision",
            filter   = "metric.label.function=one_of(\"${local.dashboard_svc.stow_upload}\", \"${local.dashboard_svc.dead_letter}\")",
            group_by = ["metric.label.function"]
          })]
        },
        {
          title = "Transcodes skipped (stored in the received syntax), by function"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric = local.dashboard_metric.transcode_skipped, resource = "cloud_run_revision", group_by = ["metric.label.function"]
          })]
        },
        {
          title  = "Upload latency (STOW-RS, retries included)"
          y      = "ms"
          series = [for p in local.dashboard_percentiles : merge(p, { metric = local.dashboard_metric.upload_duration, resource = "cloud_run_revision" })]
        },
        {
          title = "stow_upload requests, by response class"
          y     = "requests / min"
          series = [{
            metric = "run.googleapis.com/request_count", resource = "cloud_run_revision", align = "ALIGN_SUM", reduce = "REDUCE_SUM",
            filter = "resource.label.service_name=\"${local.dashboard_svc.stow_upload}\"", group_by = ["metric.label.response_code_class"]
          }]
        },
        {
          title = "Function instances, by function"
          y     = "instances"
          series = [{
            metric   = "run.googleapis.com/container/instance_count", resource = "cloud_run_revision", align = "ALIGN_MAX", reduce = "REDUCE_SUM",
            filter   = "resource.label.service_name=one_of(${join(", ", [for name in ["stow_upload", "export_fanout", "deliver"] : "\"${local.dashboard_svc[name]}\""])})",
            group_by = ["resource.label.service_name"]
          }]
        },
      ]
    },
    {
      title    = "4. Store: the DICOM store"
      subtitle = "What reached the store, per store, and the Healthcare API's own view of every request (the edge's queries and the exports' reads included)."
      charts = [
        {
          title = "Instances written, by store"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric   = local.dashboard_metric.stored, resource = "cloud_run_revision", filter = "${local.dashboard_function.stow_upload} AND metric.label.outcome=\"stored\"",
            group_by = ["metric.label.store"]
          })]
        },
        {
          title = "Healthcare API requests, by response class"
          y     = "requests / min"
          series = [{
            metric = "serviceruntime.googleapis.com/api/request_count", resource = "consumed_api", align = "ALIGN_SUM", reduce = "REDUCE_SUM",
            filter = "resource.label.service=\"healthcare.googleapis.com\"", group_by = ["metric.label.response_code_class"]
          }]
        },
        {
          title = "Healthcare API latency (p95), by method"
          y     = "seconds"
          series = [{
            metric = "serviceruntime.googleapis.com/api/request_latencies", resource = "consumed_api", align = "ALIGN_DELTA", reduce = "REDUCE_PERCENTILE_95",
            filter = "resource.label.service=\"healthcare.googleapis.com\"", group_by = ["resource.label.method"]
          }]
        },
      ]
    },
    {
      title    = "5. Export: fan-out and deliveries"
      subtitle = "export_fanout turns each store notification into one message per matching destination; deliver sends each (STOW-RS or C-STORE)."
      charts = [
        {
          title  = "Export messages per store notification"
          y      = "destinations"
          series = [for p in local.dashboard_percentiles : merge(p, { metric = local.dashboard_metric.fanout_destinations, resource = "cloud_run_revision" })]
        },
        {
          title = "Export backlog: messages waiting"
          y     = "messages"
          series = [
            for name in ["export_fanout", "deliver"] : merge(local.dashboard_subscription[name], { metric = local.dashboard_backlog, align = "ALIGN_MAX" })
          ]
        },
        {
          title = "Export backlog: oldest message"
          y     = "seconds"
          series = [
            for name in ["export_fanout", "deliver"] : merge(local.dashboard_subscription[name], { metric = local.dashboard_age, align = "ALIGN_MAX" })
          ]
        },
        {
          title = "Deliveries, by destination"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric   = local.dashboard_metric.stored, resource = "cloud_run_revision", filter = local.dashboard_function.deliver,
            group_by = ["metric.label.destination"]
          })]
        },
        {
          title = "Delivery retries, by destination"
          y     = "retries / min"
          series = [merge(local.dashboard_count, {
            metric   = local.dashboard_metric.retries, resource = "cloud_run_revision", filter = local.dashboard_function.deliver,
            group_by = ["metric.label.destination"]
          })]
        },
        {
          title = "Deliveries dead-lettered, by destination"
          y     = "instances / min"
          series = [merge(local.dashboard_count, {
            metric   = local.dashboard_metric.dead_letters, resource = "cloud_run_revision", filter = local.dashboard_function.deliver,
            group_by = ["metric.label.destination"]
          })]
        },
      ]
    },
    {
      title    = "6. Dead letters and backlog age"
      subtitle = "Rejected for good or out of delivery attempts: buffered instances go to dead/ in the bucket (redrive), notifications and exports wait 7 days in their hold subscriptions."
      charts = [
        {
          title = "Dead letters, by function"
          y     = "per min"
          series = [merge(local.dashboard_count, {
            metric = local.dashboard_metric.dead_letters, resource = "cloud_run_revision", group_by = ["metric.label.function"]
          })]
        },
        {
          title = "Dead-letter backlog: waiting for dead_letter or held"
          y     = "messages"
          series = [
            for key in concat(["dead_letter"], sort(keys(local.dashboard_inputs.hold_subscriptions))) : merge(local.dashboard_subscription[key], { metric = local.dashboard_backlog, align = "ALIGN_MAX" })
          ]
        },
        {
          title = "Backlog age of every subscription"
          y     = "seconds"
          series = [
            for key in concat(["stow_upload", "dead_letter", "export_fanout", "deliver"], sort(keys(local.dashboard_inputs.hold_subscriptions))) : merge(local.dashboard_subscription[key], { metric = local.dashboard_age, align = "ALIGN_MAX" })
          ]
          thresholds = [{ value = local.dashboard_inputs.upload_age_alert_s, label = "upload age alert" }]
        },
      ]
    },
  ]

  # Layout: 48 columns; a header row per section, then its charts three to a row.
  dashboard_header_height = 4
  dashboard_chart_height  = 16
  dashboard_alert_height  = 12
  dashboard_section_heights = [
    for section in local.dashboard_sections : local.dashboard_header_height + ceil(length(section.charts) / 3) * local.dashboard_chart_height
  ]
  dashboard_first_section = local.dashboard_header_height + local.dashboard_alert_height
  dashboard_section_tops = [
    for i, height in local.dashboard_section_heights : local.dashboard_first_section + sum(concat([0], slice(local.dashboard_section_heights, 0, i)))
  ]

  dashboard_alert_tiles = concat(
    [{
      xPos   = 0, yPos = 0, width = 48, height = local.dashboard_header_height
      widget = { title = "Alerts", sectionHeader = { subtitle = "The alert policies of this deployment (docs/operations.md, Metrics and alerts).", dividerBelow = true } }
    }],
    [for i, key in sort(keys(local.dashboard_alert_policies)) : {
      xPos   = i * 12, yPos = local.dashboard_header_height, width = 12, height = local.dashboard_alert_height
      widget = { title = "Alert: ${replace(key, "_", " ")}", alertChart = { name = local.dashboard_alert_policies[key] } }
    }],
  )

  dashboard_header_tiles = [for i, section in local.dashboard_sections : {
    xPos   = 0, yPos = local.dashboard_section_tops[i], width = 48, height = local.dashboard_header_height
    widget = { title = section.title, sectionHeader = { subtitle = section.subtitle, dividerBelow = true } }
  }]

  dashboard_chart_tiles = flatten([for i, section in local.dashboard_sections : [for j, chart in section.charts : {
    xPos   = (j % 3) * 16
    yPos   = local.dashboard_section_tops[i] + local.dashboard_header_height + floor(j / 3) * local.dashboard_chart_height
    width  = 16
    height = local.dashboard_chart_height
    widget = {
      title = chart.title
      xyChart = {
        chartOptions = { mode = "COLOR" }
        yAxis        = { label = chart.y, scale = "LINEAR" }
        thresholds = [for t in try(chart.thresholds, []) : {
          value = t.value, label = t.label, color = "RED", direction = "ABOVE", targetAxis = "Y1"
        }]
        dataSets = [for s in chart.series : merge(
          {
            plotType           = "LINE"
            targetAxis         = "Y1"
            minAlignmentPeriod = "60s"
            timeSeriesQuery = {
              timeSeriesFilter = {
                filter = join(" AND ", compact(["metric.type=\"${s.metric}\"", "resource.type=\"${s.resource}\"", try(s.filter, "")]))
                aggregation = {
                  alignmentPeriod    = "60s"
                  perSeriesAligner   = s.align
                  crossSeriesReducer = s.reduce
                  groupByFields      = try(s.group_by, [])
                }
              }
            }
          },
          # A legend of its own, else the label grouped by (metric.label.X shows as $${metric.labels.X}).
          try({ legendTemplate = s.legend }, { legendTemplate = "$${${replace(s.group_by[0], ".label.", ".labels.")}}" }, {}),
        )]
      }
    }
  }]])

  dashboard_json = jsonencode({
    displayName  = local.dashboard_inputs.title
    mosaicLayout = { columns = 48, tiles = concat(local.dashboard_alert_tiles, local.dashboard_header_tiles, local.dashboard_chart_tiles) }
  })
}

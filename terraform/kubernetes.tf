# The edge on GKE, as the Google adapter's seed guide deploys it (dicom_adapter.yaml and
# dicom_adapter_load_balancer.yaml): a Deployment of the adapter image and an internal
# LoadBalancer Service on the DIMSE port, plus what production needs: Workload Identity, the
# AET dictionary from a ConfigMap, health probes, resources, a drain on shutdown and a
# disruption budget.

locals {
  edge_name                       = "dicom-adapter-edge"
  edge_kubernetes_service_account = "dicom-adapter-edge"
  edge_health_port                = 8080
  edge_tls_dir                    = "/etc/dicom-adapter/tls"
  # Where Managed Service for Prometheus runs its collectors: gke-gmp-system when GKE manages it
  # (Autopilot), gmp-system on clusters where it was installed or enabled the older way.
  managed_prometheus_namespaces = ["gke-gmp-system", "gmp-system"]
  edge_labels = {
    "app.kubernetes.io/name"    = local.edge_name
    "app.kubernetes.io/part-of" = "dicom-adapter"
  }

  # The container's command line: `dicom-adapter edge ...` (the image's entrypoint is
  # dicom-adapter). Every flag could also come from DICOM_ADAPTER_<FLAG>.
  edge_args = concat(
    [
      "edge",
      "--dimse_aet", var.dimse_aet,
      "--dimse_port", tostring(var.dimse_port),
      "--gcs_buffer", local.gcs_buffer,
      "--pubsub_topic", google_pubsub_topic.topic["buffered"].id,
      "--health_port", tostring(local.edge_health_port),
      "--log_format", "json",
      "--qido_url", google_cloudfunctions2_function.function["qido"].service_config[0].uri,
      "--dicomweb_address", local.dicomweb_address,
    ],
    var.dimse_cmove_aet == "" ? [] : ["--dimse_cmove_aet", var.dimse_cmove_aet],
    # DIMSE over TLS on dimse_port, with the certificate and key of the Secret (a kubernetes.io/tls
    # Secret names them tls.crt and tls.key; cert-manager adds the issuing CA as ca.crt).
    var.dimse_tls_secret == "" ? [] : [
      "--dimse_tls_cert", "${local.edge_tls_dir}/tls.crt",
      "--dimse_tls_key", "${local.edge_tls_dir}/tls.key",
    ],
    var.dimse_tls_secret == "" || !var.dimse_tls_verify_clients ? [] : ["--dimse_tls_ca", "${local.edge_tls_dir}/ca.crt"],
  )
}

resource "kubernetes_namespace_v1" "edge" {
  metadata {
    name   = var.kubernetes_namespace
    labels = local.edge_labels
  }
}

resource "kubernetes_service_account_v1" "edge" {
  metadata {
    name      = local.edge_kubernetes_service_account
    namespace = kubernetes_namespace_v1.edge.metadata[0].name
    labels    = local.edge_labels
    annotations = {
      "iam.gke.io/gcp-service-account" = google_service_account.edge.email
    }
  }
  automount_service_account_token = false
}

# The AET dictionary, in the Google adapter's format and key name.
resource "kubernetes_config_map_v1" "aet_dictionary" {
  metadata {
    name      = "aet-dictionary"
    namespace = kubernetes_namespace_v1.edge.metadata[0].name
    labels    = local.edge_labels
  }
  data = {
    "AETs.json" = jsonencode(var.aet_dictionary)
  }
}

resource "kubernetes_deployment_v1" "edge" {
  # checkov:skip=CKV_K8S_14:The image is var.edge_image, which Cloud Build sets by digest; its validation refuses :latest and untagged images.
  # checkov:skip=CKV_K8S_43:The image is var.edge_image, which Cloud Build sets by digest (REPO/edge@sha256:...); checkov only sees the variable.
  count = var.edge_image == "" ? 0 : 1

  lifecycle {
    precondition {
      # Asked for client certificates with nothing to check them against: the edge would
      # serve plain DIMSE, the opposite of what was asked.
      condition     = !var.dimse_tls_verify_clients || var.dimse_tls_secret != ""
      error_message = "dimse_tls_verify_clients needs dimse_tls_secret (the Secret's ca.crt verifies clients); without one the edge would serve plain DIMSE."
    }
  }

  metadata {
    name      = local.edge_name
    namespace = kubernetes_namespace_v1.edge.metadata[0].name
    labels    = local.edge_labels
  }

  spec {
    replicas = var.edge_replicas

    selector {
      match_labels = local.edge_labels
    }

    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_surge       = "1"
        max_unavailable = "0"
      }
    }

    template {
      metadata {
        labels = local.edge_labels
        annotations = {
          # A changed AET dictionary rolls the pods.
          "dicom-adapter/aet-dictionary-sha256" = sha256(jsonencode(var.aet_dictionary))
        }
      }

      spec {
        service_account_name             = kubernetes_service_account_v1.edge.metadata[0].name
        automount_service_account_token  = false
        termination_grace_period_seconds = var.edge_drain_timeout_seconds + 30

        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          fs_group        = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "topology.kubernetes.io/zone"
          when_unsatisfiable = "ScheduleAnyway"
          label_selector {
            match_labels = local.edge_labels
          }
        }

        container {
          name              = "edge"
          image             = var.edge_image
          image_pull_policy = "Always"
          args              = local.edge_args

          port {
            name           = "dimse"
            container_port = var.dimse_port
            protocol       = "TCP"
          }

          port {
            name           = "health"
            container_port = local.edge_health_port
            protocol       = "TCP"
          }

          env {
            name = "DICOM_ADAPTER_AET_DICTIONARY_INLINE"
            value_from {
              config_map_key_ref {
                name = kubernetes_config_map_v1.aet_dictionary.metadata[0].name
                key  = "AETs.json"
              }
            }
          }

          env {
            name  = "DICOM_ADAPTER_DRAIN_TIMEOUT"
            value = tostring(var.edge_drain_timeout_seconds)
          }

          env {
            name  = "TMPDIR"
            value = "/tmp"
          }

          resources {
            requests = {
              cpu                 = var.edge_cpu
              memory              = var.edge_memory
              "ephemeral-storage" = var.edge_scratch_size
            }
            limits = {
              cpu                 = var.edge_cpu
              memory              = var.edge_memory
              "ephemeral-storage" = var.edge_scratch_size
            }
          }

          # Live while the process serves; ready while GCS and Pub/Sub answer (an unready pod
          # gets no new associations from the load balancer).
          startup_probe {
            http_get {
              path = "/healthz"
              port = "health"
            }
            period_seconds    = 2
            failure_threshold = 30
          }

          liveness_probe {
            http_get {
              path = "/healthz"
              port = "health"
            }
            period_seconds    = 10
            timeout_seconds   = 5
            failure_threshold = 3
          }

          readiness_probe {
            http_get {
              path = "/readyz"
              port = "health"
            }
            period_seconds    = 5
            timeout_seconds   = 5
            failure_threshold = 2
          }

          security_context {
            allow_privilege_escalation = false
            privileged                 = false
            read_only_root_filesystem  = true
            run_as_non_root            = true
            capabilities {
              drop = ["ALL"]
            }
          }

          volume_mount {
            name       = "scratch"
            mount_path = "/tmp"
          }

          dynamic "volume_mount" {
            for_each = var.dimse_tls_secret == "" ? [] : [var.dimse_tls_secret]
            content {
              name       = "dimse-tls"
              mount_path = local.edge_tls_dir
              read_only  = true
            }
          }
        }

        volume {
          name = "scratch"
          empty_dir {
            size_limit = var.edge_scratch_size
          }
        }

        # Readable by the pod's group only (fs_group); the adapter reads it at start, so a
        # rotated certificate takes effect with `kubectl rollout restart`.
        dynamic "volume" {
          for_each = var.dimse_tls_secret == "" ? [] : [var.dimse_tls_secret]
          content {
            name = "dimse-tls"
            secret {
              secret_name  = volume.value
              default_mode = "0440"
            }
          }
        }
      }
    }
  }

  depends_on = [
    google_service_account_iam_member.edge_workload_identity,
    google_storage_bucket_iam_member.buffer_object_user,
    google_pubsub_topic_iam_member.edge_publishes_buffered,
    google_pubsub_topic_iam_member.edge_views_buffered,
    google_cloud_run_v2_service_iam_member.invoker,
  ]
}

# The DIMSE endpoint PACS and modalities send to: an internal passthrough load balancer.
resource "kubernetes_service_v1" "edge" {
  metadata {
    name      = local.edge_name
    namespace = kubernetes_namespace_v1.edge.metadata[0].name
    labels    = local.edge_labels
    annotations = {
      "networking.gke.io/load-balancer-type" = "Internal"
    }
  }

  spec {
    type                        = "LoadBalancer"
    selector                    = local.edge_labels
    load_balancer_source_ranges = var.dimse_source_ranges
    external_traffic_policy     = "Cluster"

    port {
      name        = "dimse"
      port        = var.dimse_port
      target_port = "dimse"
      protocol    = "TCP"
    }
  }

  wait_for_load_balancer = true
}

resource "kubernetes_pod_disruption_budget_v1" "edge" {
  metadata {
    name      = local.edge_name
    namespace = kubernetes_namespace_v1.edge.metadata[0].name
    labels    = local.edge_labels
  }
  spec {
    max_unavailable = "1"
    selector {
      match_labels = local.edge_labels
    }
  }
}

# The DIMSE port is open to other pods and to the load balancer; the health port only to
# Managed Service for Prometheus' collectors (their namespaces), which scrape /metrics. The
# kubelet's probes are not subject to network policies.
resource "kubernetes_network_policy_v1" "edge" {
  metadata {
    name      = local.edge_name
    namespace = kubernetes_namespace_v1.edge.metadata[0].name
    labels    = local.edge_labels
  }
  spec {
    pod_selector {
      match_labels = local.edge_labels
    }
    policy_types = ["Ingress"]
    ingress {
      ports {
        port     = "dimse"
        protocol = "TCP"
      }
    }
    ingress {
      ports {
        port     = "health"
        protocol = "TCP"
      }
      from {
        namespace_selector {
          match_expressions {
            key      = "kubernetes.io/metadata.name"
            operator = "In"
            values   = local.managed_prometheus_namespaces
          }
        }
      }
    }
  }
}

# Managed Service for Prometheus (managed collection) scrapes each edge pod's /metrics on the
# health port; Cloud Monitoring stores the counters as prometheus.googleapis.com/NAME/counter.
# A PodMonitoring is a custom resource: kubernetes_manifest creates it, and reads the cluster's
# API to plan it, so it cannot be planned before the cluster exists (the provider's advice is a
# second apply). var.scrape_edge_metrics, off by default, is that second step.
resource "kubernetes_manifest" "edge_pod_monitoring" {
  count = var.scrape_edge_metrics ? 1 : 0

  manifest = {
    apiVersion = "monitoring.googleapis.com/v1"
    kind       = "PodMonitoring"
    metadata = {
      name      = local.edge_name
      namespace = kubernetes_namespace_v1.edge.metadata[0].name
      labels    = local.edge_labels
    }
    spec = {
      selector = {
        matchLabels = local.edge_labels
      }
      endpoints = [{
        port     = "health"
        path     = "/metrics"
        interval = "30s"
      }]
    }
  }
}

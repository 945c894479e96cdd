# ---------------------------------------------------------------------------------------------
# Where
# ---------------------------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project that hosts everything (an empty project is fine)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project ID: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the functions, topics' consumers, bucket, Artifact Registry, scheduler and (when created here) the GKE Autopilot cluster, e.g. us-central1."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as us-central1 or europe-west4."
  }
}

variable "healthcare_location" {
  description = "Location of the Healthcare API dataset (a region where the Healthcare API is offered); null means var.region."
  type        = string
  default     = null

  validation {
    condition     = var.healthcare_location == null || can(regex("^[a-z]+(-[a-z]+[0-9]+)?$", var.healthcare_location))
    error_message = "healthcare_location must be a region name such as us-central1 (or a multi-region such as us)."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (topics, functions, service accounts, buckets, cluster). Short, so service account IDs stay within 30 characters."
  type        = string
  default     = "dicom-adapter"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-16 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels (provider default_labels)."
  type        = map(string)
  default     = { app = "dicom-adapter" }

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "Label keys must start with a lowercase letter; keys and values may hold lowercase letters, digits, _ and - (at most 63 characters)."
  }
}

variable "enable_apis" {
  description = "Enable the Google APIs this module needs (Healthcare, Pub/Sub, Cloud Functions, Cloud Run, Eventarc, Cloud Build, Artifact Registry, GKE, Cloud Scheduler, Logging, Monitoring). Set false where a platform team enables APIs."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# The DICOM store
# ---------------------------------------------------------------------------------------------

variable "dataset_name" {
  description = "Healthcare API dataset to create."
  type        = string
  default     = "dicom-adapter"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{1,256}$", var.dataset_name))
    error_message = "dataset_name may hold letters, digits, _, . and - (1-256 characters)."
  }
}

variable "dicom_store_name" {
  description = "DICOM store to create in the dataset: where every received instance ends up."
  type        = string
  default     = "dicom-store"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{1,256}$", var.dicom_store_name))
    error_message = "dicom_store_name may hold letters, digits, _, . and - (1-256 characters)."
  }
}

# ---------------------------------------------------------------------------------------------
# The buffer (GCS) and the queues (Pub/Sub)
# ---------------------------------------------------------------------------------------------

variable "buffer_prefix" {
  description = "Object prefix in the buffer bucket: buffered instances go to PREFIX/queue/, dead letters to PREFIX/dead/."
  type        = string
  default     = "buffer"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$", var.buffer_prefix))
    error_message = "buffer_prefix must be a relative object path without leading or trailing slash, e.g. buffer or site-a/buffer."
  }
}

variable "dead_letter_retention_days" {
  description = "Days a dead-lettered instance (PREFIX/dead/) is kept before the bucket's lifecycle rule deletes it. Redrive within that time."
  type        = number
  default     = 30

  validation {
    condition     = var.dead_letter_retention_days >= 7 && var.dead_letter_retention_days <= 3650 && floor(var.dead_letter_retention_days) == var.dead_letter_retention_days
    error_message = "dead_letter_retention_days must be a whole number of days between 7 and 3650."
  }
}

variable "buffer_soft_delete_days" {
  description = "Days a deleted buffer object stays restorable (GCS soft delete: 0, or 7-90). Every buffered object is deleted once stored, so this is paid for on all traffic."
  type        = number
  default     = 0

  validation {
    condition     = var.buffer_soft_delete_days == 0 || (var.buffer_soft_delete_days >= 7 && var.buffer_soft_delete_days <= 90)
    error_message = "buffer_soft_delete_days must be 0 or between 7 and 90."
  }
}

variable "kms_key_name" {
  description = "Optional Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) to encrypt the buffer bucket and the Pub/Sub topics with (CMEK). null: Google-managed encryption. The key must be in the bucket's region."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name must look like projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one Pub/Sub message to a function before it goes to the dead-letter topic (Pub/Sub allows 5-100)."
  type        = number
  default     = 15

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

variable "retry_min_backoff_seconds" {
  description = "Shortest wait before Pub/Sub redelivers a message a function failed on, in seconds."
  type        = number
  default     = 10

  validation {
    condition     = var.retry_min_backoff_seconds >= 0 && var.retry_min_backoff_seconds <= 600
    error_message = "retry_min_backoff_seconds must be between 0 and 600."
  }
}

variable "retry_max_backoff_seconds" {
  description = "Longest wait before Pub/Sub redelivers a message a function failed on, in seconds."
  type        = number
  default     = 600

  validation {
    condition     = var.retry_max_backoff_seconds >= 0 && var.retry_max_backoff_seconds <= 600
    error_message = "retry_max_backoff_seconds must be between 0 and 600."
  }
}

# ---------------------------------------------------------------------------------------------
# The functions
# ---------------------------------------------------------------------------------------------

variable "stow_overwrite" {
  description = "When the store holds a different instance under the same SOP Instance UID: replace it (true) or dead-letter ours as a conflict (false)."
  type        = bool
  default     = false
}

variable "http_error_codes_to_retry" {
  description = "HTTP statuses from the store treated as transient (retried, never dead-lettered), e.g. '408,429,5xx'."
  type        = string
  default     = "408,429,500,502,503,504"

  validation {
    condition     = can(regex("^([0-9]{3}|[0-9]xx)(,([0-9]{3}|[0-9]xx))*$", var.http_error_codes_to_retry))
    error_message = "http_error_codes_to_retry must be a comma-separated list of HTTP statuses or classes such as 408,429,5xx."
  }
}

variable "qido_store_profile" {
  description = "What the DICOM store's QIDO-RS is trusted to match for C-FIND (docs/conformance.md, section 7): conservative (UIDs, dates, CS values), orthanc-1.10, orthanc-1.12, or healthcare-api (the Healthcare API's searchable attributes). The adapter matches every other key itself."
  type        = string
  default     = "healthcare-api"

  validation {
    condition     = contains(["conservative", "orthanc-1.10", "orthanc-1.12", "healthcare-api"], var.qido_store_profile)
    error_message = "qido_store_profile must be one of conservative, orthanc-1.10, orthanc-1.12, healthcare-api."
  }
}

variable "sweep_schedule" {
  description = "Cloud Scheduler cron schedule of the sweep, which re-announces buffered instances that have waited longer than sweep_min_age_minutes."
  type        = string
  default     = "*/10 * * * *"

  validation {
    condition     = length(split(" ", trimspace(var.sweep_schedule))) == 5
    error_message = "sweep_schedule must be a five-field cron expression, e.g. */10 * * * *."
  }
}

variable "sweep_min_age_minutes" {
  description = "A buffered instance older than this many minutes without a completed upload is re-announced by the sweep."
  type        = number
  default     = 30

  validation {
    condition     = var.sweep_min_age_minutes >= 5 && var.sweep_min_age_minutes <= 10080
    error_message = "sweep_min_age_minutes must be between 5 and 10080 (a week); shorter than a normal upload would only duplicate events."
  }
}

variable "destination_config_json" {
  description = "Export routing rules (JSON, the Google adapter's destination filter syntax extended with several destinations per rule); [] exports nothing."
  type        = string
  default     = "[]"

  validation {
    condition     = can(jsondecode(var.destination_config_json))
    error_message = "destination_config_json must be valid JSON."
  }
}

variable "deliver_secret_ids" {
  description = "Secret Manager secrets (projects/P/secrets/S) the deliver function may read: the credentials of DICOMweb export destinations named in destination_config_json."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.deliver_secret_ids : can(regex("^projects/[^/]+/secrets/[^/]+$", s))])
    error_message = "Each deliver_secret_ids entry must look like projects/P/secrets/S."
  }
}

variable "function_max_instances" {
  description = "Most instances of each function. Bounds the load on the DICOM store (stow_upload) and on export destinations (deliver)."
  type        = number
  default     = 50

  validation {
    condition     = var.function_max_instances >= 1 && var.function_max_instances <= 1000
    error_message = "function_max_instances must be between 1 and 1000."
  }
}

variable "function_memory" {
  description = "Memory of each function instance (Cloud Functions gen2 syntax, e.g. 512Mi, 1Gi). Uploads stream, so memory does not grow with instance size."
  type        = string
  default     = "1Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.function_memory))
    error_message = "function_memory must be a size such as 512Mi or 1Gi."
  }
}

variable "function_timeout_seconds" {
  description = "Longest run of one event-driven function invocation (an upload of the largest instance must fit), in seconds."
  type        = number
  default     = 540

  validation {
    condition     = var.function_timeout_seconds >= 60 && var.function_timeout_seconds <= 540
    error_message = "function_timeout_seconds must be between 60 and 540 (the limit of event-driven functions)."
  }
}

# ---------------------------------------------------------------------------------------------
# Transformed copies in the upload step (docs/configuration.md, "Transformed copies")
# ---------------------------------------------------------------------------------------------

variable "redact_remove_list" {
  description = "Google's --redact_remove_list: the default store gets a de-identified copy with these attributes emptied (DICOM keywords or GGGGEEEE tags) and new UIDs. At most one of the three redact variables; needs deidentify_key_secret. Empty: no such copy."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for entry in var.redact_remove_list : can(regex("^([A-Za-z][A-Za-z0-9]*|[0-9A-Fa-f]{8})$", entry))])
    error_message = "Each redact_remove_list entry must be a DICOM keyword (PatientName) or a tag as GGGGEEEE (00100010)."
  }
}

variable "redact_keep_list" {
  description = "Google's --redact_keep_list: the default store gets a de-identified copy with every attribute but these (and what a valid instance needs) emptied, and new UIDs. At most one of the three redact variables; needs deidentify_key_secret. Empty: no such copy."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for entry in var.redact_keep_list : can(regex("^([A-Za-z][A-Za-z0-9]*|[0-9A-Fa-f]{8})$", entry))])
    error_message = "Each redact_keep_list entry must be a DICOM keyword (Modality) or a tag as GGGGEEEE (00080060)."
  }
}

variable "redact_filter_profile" {
  description = "Google's --redact_filter_profile: the default store gets a copy de-identified by this profile, CHC_BASIC (the Healthcare API's basic profile) or basic (DICOM PS3.15 Annex E). At most one of the three redact variables; needs deidentify_key_secret. Empty: no such copy."
  type        = string
  default     = ""

  validation {
    condition     = contains(["", "basic", "CHC_BASIC"], var.redact_filter_profile)
    error_message = "redact_filter_profile must be empty, basic or CHC_BASIC."
  }

  validation {
    condition     = length([for given in [length(var.redact_remove_list) > 0, length(var.redact_keep_list) > 0, var.redact_filter_profile != ""] : given if given]) <= 1
    error_message = "At most one of redact_remove_list, redact_keep_list and redact_filter_profile may be set (as with the flags of Google's adapter)."
  }
}

variable "store_compress_to_transfer_syntax" {
  description = "Google's --store_compress_to_transfer_syntax: the default store's copy is transcoded to this lossless transfer syntax (JPEG 2000 1.2.840.10008.1.2.4.90, JPEG-LS 1.2.840.10008.1.2.4.80, RLE 1.2.840.10008.1.2.5, Explicit VR Little Endian 1.2.840.10008.1.2.1); pixels are decoded in memory, so mind function_memory. Empty: stored as received."
  type        = string
  default     = ""

  validation {
    condition     = contains(["", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1"], var.store_compress_to_transfer_syntax)
    error_message = "store_compress_to_transfer_syntax must be empty or a lossless transfer syntax UID the upload encodes: 1.2.840.10008.1.2.4.90, 1.2.840.10008.1.2.4.80, 1.2.840.10008.1.2.5 or 1.2.840.10008.1.2.1."
  }
}

variable "deidentify_key_secret" {
  description = "Secret Manager secret (projects/P/secrets/S, or .../versions/V to pin one) holding the key de-identified UIDs and pseudonyms derive from; required by any de-identification (the redact variables, deidentify in destination_config_json). stow_upload and deliver get it as DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET and may read that secret only. Keep the key: a new one gives new UIDs. Empty: no key."
  type        = string
  default     = ""

  validation {
    condition     = var.deidentify_key_secret == "" || can(regex("^projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?$", var.deidentify_key_secret))
    error_message = "deidentify_key_secret must be empty or a Secret Manager secret: projects/P/secrets/S or projects/P/secrets/S/versions/V."
  }

  validation {
    condition     = var.deidentify_key_secret != "" || !local.deidentifies
    error_message = "De-identification (redact_remove_list, redact_keep_list, redact_filter_profile, or deidentify in destination_config_json) needs deidentify_key_secret: the upload refuses to de-identify without a key."
  }
}

# ---------------------------------------------------------------------------------------------
# The edge on GKE
# ---------------------------------------------------------------------------------------------

variable "existing_cluster" {
  description = "Run the edge on this existing GKE cluster (it must have Workload Identity enabled) instead of creating an Autopilot cluster. null: create one."
  type = object({
    name     = string
    location = string
  })
  default = null
}

variable "network_cidr" {
  description = "Primary range of the subnet created for the Autopilot cluster (only when existing_cluster is null). The internal load balancer's address comes from it."
  type        = string
  default     = "10.10.0.0/20"

  validation {
    condition     = can(cidrhost(var.network_cidr, 0))
    error_message = "network_cidr must be a CIDR range such as 10.10.0.0/20."
  }
}

variable "pods_cidr" {
  description = "Secondary range for pods of the created cluster."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.pods_cidr, 0))
    error_message = "pods_cidr must be a CIDR range."
  }
}

variable "services_cidr" {
  description = "Secondary range for Kubernetes services of the created cluster."
  type        = string
  default     = "10.30.0.0/20"

  validation {
    condition     = can(cidrhost(var.services_cidr, 0))
    error_message = "services_cidr must be a CIDR range."
  }
}

variable "master_ipv4_cidr_block" {
  description = "/28 range for the created cluster's control plane (private nodes)."
  type        = string
  default     = "172.16.0.32/28"

  validation {
    condition     = can(cidrhost(var.master_ipv4_cidr_block, 0)) && endswith(var.master_ipv4_cidr_block, "/28")
    error_message = "master_ipv4_cidr_block must be a /28 range."
  }
}

variable "master_authorized_networks" {
  description = "Networks allowed to reach the created cluster's control plane (where terraform and kubectl run: Cloud Build's and the operators' egress ranges). Empty: no network is allowed, except Google-internal addresses when gcp_public_cidrs_access_enabled."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []

  validation {
    condition     = alltrue([for n in var.master_authorized_networks : can(cidrhost(n.cidr_block, 0))])
    error_message = "Each master_authorized_networks cidr_block must be a CIDR range."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the GKE cluster and the buffer bucket while it is set (terraform destroy needs it false first)."
  type        = bool
  default     = true
}

variable "kubernetes_namespace" {
  description = "Kubernetes namespace of the edge."
  type        = string
  default     = "dicom-adapter"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.kubernetes_namespace))
    error_message = "kubernetes_namespace must be a DNS label."
  }
}

variable "edge_image" {
  description = "The edge container image, best by digest (REGION-docker.pkg.dev/PROJECT/REPO/edge@sha256:...); Cloud Build sets it on every rollout. Empty: everything is created except the edge Deployment (the first apply, before an image exists)."
  type        = string
  default     = ""

  validation {
    condition     = var.edge_image == "" || can(regex("^[a-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._/-]+(@sha256:[a-f0-9]{64}|:[A-Za-z0-9._-]+)$", var.edge_image))
    error_message = "edge_image must be a full image reference with a tag or a digest, e.g. us-central1-docker.pkg.dev/P/dicom-adapter/edge@sha256:..."
  }

  validation {
    condition     = !endswith(var.edge_image, ":latest")
    error_message = "edge_image must name a version (a digest or a release tag), not :latest, so a rollout is a change Terraform and Kubernetes can see."
  }
}

variable "dimse_aet" {
  description = "AE title of the edge (the called AE title PACS and modalities send to)."
  type        = string
  default     = "DICOMADAPTER"

  validation {
    condition     = can(regex("^[ -[\\]-~]{1,16}$", var.dimse_aet)) && trimspace(var.dimse_aet) != ""
    error_message = "dimse_aet must be 1-16 printable ASCII characters, not only spaces, without a backslash."
  }
}

variable "dimse_port" {
  description = "DIMSE port of the edge's container and of its internal load balancer."
  type        = number
  default     = 2575

  validation {
    condition     = var.dimse_port >= 1 && var.dimse_port <= 65535 && var.dimse_port != 8080
    error_message = "dimse_port must be a TCP port (1-65535) other than the health port 8080."
  }
}

variable "dimse_cmove_aet" {
  description = "AE title the edge uses as the calling AE of the C-STORE sub-operations of a C-MOVE; empty: the edge's own dimse_aet."
  type        = string
  default     = ""

  validation {
    condition     = var.dimse_cmove_aet == "" || (can(regex("^[ -[\\]-~]{1,16}$", var.dimse_cmove_aet)) && trimspace(var.dimse_cmove_aet) != "")
    error_message = "dimse_cmove_aet must be empty or 1-16 printable ASCII characters without a backslash."
  }
}

variable "aet_dictionary" {
  description = "Known DICOM peers (the Google adapter's AET dictionary): C-MOVE destinations and, where the edge checks calling AEs, who may associate; tls = true: the edge calls that peer over DIMSE TLS (needs dimse_tls_secret). Stored in a ConfigMap and given to the edge as DICOM_ADAPTER_AET_DICTIONARY_INLINE."
  type = list(object({
    name = string
    host = string
    port = number
    tls  = optional(bool, false)
  }))
  default = []

  validation {
    condition = alltrue([
      for peer in var.aet_dictionary :
      can(regex("^[ -[\\]-~]{1,16}$", peer.name)) && trimspace(peer.name) != "" && peer.port >= 1 && peer.port <= 65535 && trimspace(peer.host) != ""
    ])
    error_message = "Each aet_dictionary entry needs a name of 1-16 printable ASCII characters without a backslash, a host and a port 1-65535."
  }

  validation {
    condition     = length(distinct([for peer in var.aet_dictionary : trimspace(peer.name)])) == length(var.aet_dictionary)
    error_message = "Each AE title may appear only once in aet_dictionary."
  }
}

variable "dimse_source_ranges" {
  description = "Client ranges allowed through the internal load balancer to the DIMSE port (loadBalancerSourceRanges), e.g. the PACS and modality subnets. Empty: any address that can route to the load balancer."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for r in var.dimse_source_ranges : can(cidrhost(r, 0))])
    error_message = "Each dimse_source_ranges entry must be a CIDR range."
  }
}

variable "edge_replicas" {
  description = "Edge pods behind the load balancer. Two or more keep C-STORE answering while a pod restarts or a node is drained."
  type        = number
  default     = 2

  validation {
    condition     = var.edge_replicas >= 1 && var.edge_replicas <= 50
    error_message = "edge_replicas must be between 1 and 50."
  }
}

variable "edge_cpu" {
  description = "CPU request (and limit) of an edge pod."
  type        = string
  default     = "1"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?$|^[0-9]+m$", var.edge_cpu))
    error_message = "edge_cpu must be a Kubernetes CPU quantity such as 1, 0.5 or 500m."
  }
}

variable "edge_memory" {
  description = "Memory request (and limit) of an edge pod. Reception streams to GCS, so this bounds PDUs in flight, not instance sizes."
  type        = string
  default     = "1Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.edge_memory))
    error_message = "edge_memory must be a size such as 512Mi or 1Gi."
  }
}

variable "edge_scratch_size" {
  description = "Size of the edge pod's scratch volume (/tmp; the root file system is read-only)."
  type        = string
  default     = "2Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.edge_scratch_size))
    error_message = "edge_scratch_size must be a size such as 2Gi."
  }
}

variable "edge_drain_timeout_seconds" {
  description = "On shutdown, how long open associations may take to finish (the edge's --drain_timeout). The pod's termination grace period is this plus 30 s."
  type        = number
  default     = 60

  validation {
    condition     = var.edge_drain_timeout_seconds >= 0 && var.edge_drain_timeout_seconds <= 3600
    error_message = "edge_drain_timeout_seconds must be between 0 and 3600."
  }
}

variable "scrape_edge_metrics" {
  description = "Create the PodMonitoring through which Google Cloud Managed Service for Prometheus scrapes the edge pods' /metrics (the health port, every 30 s) into Cloud Monitoring. A PodMonitoring is a custom resource, which Terraform creates with kubernetes_manifest, and that reads the cluster's API at plan time: leave false on the apply that creates the cluster (or the plan fails), set true once the cluster exists. The cluster needs managed collection (on by default on Autopilot)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------------

variable "alert_notification_channels" {
  description = "Cloud Monitoring notification channels (projects/P/notificationChannels/ID) the alert policies notify."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", c))])
    error_message = "Each alert_notification_channels entry must look like projects/P/notificationChannels/ID."
  }
}

variable "upload_age_alert_minutes" {
  description = "Alert when the oldest buffered instance has waited this long for its upload (the stow_upload subscription's oldest unacknowledged message)."
  type        = number
  default     = 30

  validation {
    condition     = var.upload_age_alert_minutes >= 1 && var.upload_age_alert_minutes <= 10080
    error_message = "upload_age_alert_minutes must be between 1 and 10080."
  }
}

variable "cstore_failure_alert_count" {
  description = "Alert when more C-STORE requests than this are refused within 10 minutes."
  type        = number
  default     = 0

  validation {
    condition     = var.cstore_failure_alert_count >= 0
    error_message = "cstore_failure_alert_count must not be negative."
  }
}

variable "dimse_tls_secret" {
  description = "Name of a kubernetes.io/tls Secret in kubernetes_namespace (tls.crt, tls.key; ca.crt for dimse_tls_verify_clients), created beforehand with kubectl or cert-manager. Set: the edge serves DIMSE over TLS 1.2+ on dimse_port with that certificate, and presents it when it calls peers marked tls in aet_dictionary (C-MOVE, commitment reports; the functions' DIMSE deliveries have no certificate and dead-letter for such peers). Empty: plain DIMSE."
  type        = string
  default     = ""

  validation {
    condition     = var.dimse_tls_secret == "" || can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.dimse_tls_secret))
    error_message = "dimse_tls_secret must be empty or a Kubernetes object name (lower-case letters, digits, '-' and '.')."
  }
}

variable "dimse_tls_verify_clients" {
  description = "With dimse_tls_secret (a plan fails if this is set without it): only clients with a certificate signed by the Secret's ca.crt may connect, and peers the edge calls over TLS must chain to it too. Off: any client may connect over TLS (the calling-AE checks still apply), and called peers must chain to the system's trust store."
  type        = bool
  default     = false
}

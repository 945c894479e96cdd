"""The `dicom-adapter` command.

Flag names follow Google's Java adapter where it has one, so a deployment can switch images;
every flag can also be set by an environment variable, DICOM_ADAPTER_<FLAG> (the Google
adapter's own ENV_AETS_JSON works too).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any, Callable

import click
from dicom_adapter.aets import AetDictionaryError, load_aet_dictionary
from dicom_adapter.buffers.spool import Spool
from dicom_adapter.config import UploadSettings, env_name, parse_status_codes
from dicom_adapter.logs import configure_logging, fields

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


@main.command()
@flag("dimse_aet", required=True, help="AE title this adapter answers to (the called AE).")
@flag("dimse_port", type=click.IntRange(0, 65535), default=2575, show_default=True, help="DIMSE port (0: any free port).")
@flag("dimse_host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@flag("dicomweb_address", required=True, help="DICOMweb service root of the store, e.g. http://localhost:8042/dicom-web.")
@spool_flag
@flag("aet_dictionary", type=click.Path(dir_okay=False, exists=True), help="JSON file of known AEs: [{name, host, port}].")
@flag("aet_dictionary_inline", envvar="ENV_AETS_JSON", help="The AET dictionary as a JSON string.")
@flag("require_known_calling_aet", is_flag=True, help="Only accept associations from calling AEs in the AET dictionary.")
@flag("stow_overwrite", is_flag=True, help="Replace a different stored instance with the same SOP Instance UID.")
@flag("http_error_codes_to_retry", default="408,429,500,502,503,504", show_default=True, help="HTTP statuses retried as transient (e.g. '429,5xx').")
@flag("min_upload_delay", type=click.IntRange(1), default=100, show_default=True, help="First retry delay within one delivery, in ms.")
@flag("max_waiting_time_between_uploads", type=click.IntRange(1), default=5000, show_default=True, help="Longest retry delay within one delivery, in ms.")
@flag("redelivery_max_delay", type=click.FloatRange(0.1), default=30.0, show_default=True, help="Longest wait before a failed delivery is tried again, in s.")
@flag("upload_workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Concurrent uploads.")
@flag("dimse_processes", type=click.IntRange(1, 64), default=1, show_default=True, help="Listener processes sharing the DIMSE port (more associations at once on more cores).")
@flag("max_associations", type=click.IntRange(1, 1000), default=32, show_default=True, help="Most concurrent associations.")
@flag("max_pdu_length", type=click.IntRange(4096, 16 << 20), default=262144, show_default=True, help="Largest PDU peers may send us, in bytes (memory per association).")
@flag("drain_timeout", type=click.FloatRange(0), default=30.0, show_default=True, help="On SIGTERM, how long open associations may finish, in s.")
@flag("watch_dir", type=click.Path(file_okay=False), help="Drop folder: DICOM files and ZIPs put here are imported, then moved to done/ (bad ones to rejected/).")
@flag("watch_settle_time", type=click.FloatRange(0), default=2.0, show_default=True, help="A dropped file is taken once unchanged this long, in s.")
@flag("watch_incomplete_timeout", type=click.FloatRange(0), default=300.0, show_default=True, help="A dropped file that looks cut short is rejected only once unchanged this long, in s.")
@flag("watch_delete_done", is_flag=True, help="Delete imported files from the drop folder instead of moving them to done/.")
@flag("log_format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="json: Cloud Logging structured lines on stdout.")
@flag("verbose", is_flag=True, help="Debug logging (never data set contents).")
def local(**options: Any) -> None:
    """Run the edge and the upload pipeline on this machine, with a spool directory as buffer."""
    from .dispatcher import DispatchSettings
    from .local import LocalRuntime
    from .server import ListenerSettings
    from .upload_process import UploadProcessSettings

    configure_logging(json_format=options["log_format"] == "json", verbose=options["verbose"])
    try:
        peers = load_aet_dictionary(options["aet_dictionary"], options["aet_dictionary_inline"])
    except (AetDictionaryError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    if options["require_known_calling_aet"] and not peers:
        raise click.UsageError("--require_known_calling_aet needs an AET dictionary")
    upload_settings = UploadSettings(
        dicomweb_address=options["dicomweb_address"],
        stow_overwrite=options["stow_overwrite"],
        retry_status_codes=parse_status_codes(options["http_error_codes_to_retry"]),
        min_upload_delay_ms=options["min_upload_delay"],
        max_waiting_time_between_uploads_ms=options["max_waiting_time_between_uploads"],
    )
    listener_settings = ListenerSettings(
        aet=options["dimse_aet"],
        port=options["dimse_port"],
        host=options["dimse_host"],
        allowed_calling_aets=frozenset(peers) if options["require_known_calling_aet"] else frozenset(),
        max_associations=options["max_associations"],
        max_pdu_length=options["max_pdu_length"],
    )
    upload_process_settings = UploadProcessSettings(
        spool_dir=options["spool_dir"],
        upload=upload_settings,
        dispatch=DispatchSettings(workers=options["upload_workers"], retry_max_s=options["redelivery_max_delay"]),
        json_logs=options["log_format"] == "json",
        verbose=options["verbose"],
    )
    watch = None
    if options["watch_dir"]:
        from .intake.watch import WatchSettings

        watch = WatchSettings(
            folder=options["watch_dir"],
            settle_s=options["watch_settle_time"],
            incomplete_timeout_s=options["watch_incomplete_timeout"],
            delete_done=options["watch_delete_done"],
        )
    try:
        runtime = LocalRuntime(
            listener_settings,
            upload_process_settings,
            processes=options["dimse_processes"],
            drain_timeout_s=options["drain_timeout"],
            watch=watch,
        )
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {options['dimse_host']}:{options['dimse_port']}: {exc.strerror or exc}") from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        runtime.start()
        log.info("ready", extra=fields(aet=options["dimse_aet"], port=runtime.listener.port, store=options["dicomweb_address"]))
        click.echo(f"dicom-adapter ready: {options['dimse_aet']} on {options['dimse_host']}:{runtime.listener.port}")
        sys.stdout.flush()
        while not stop.wait(1.0):
            runtime.supervise()
        log.info("stopping: draining associations and uploads in progress")
    finally:
        runtime.drain()


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@spool_flag
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
    from .intake.command import run_import_command

    configure_logging(json_format=options["log_format"] == "json", verbose=options["verbose"])
    sys.exit(run_import_command(list(paths), **{k: options[k] for k in ("spool_dir", "workers", "report", "force")}))


@main.command()
@spool_flag
@flag("sop_instance_uid", multiple=True, help="Only this instance (repeatable); default: all dead letters.")
def redrive(spool_dir: str, sop_instance_uid: tuple[str, ...]) -> None:
    """Put dead-lettered instances back into the upload queue."""
    configure_logging()
    moved = Spool(spool_dir).redrive(set(sop_instance_uid) or None)
    for path in moved:
        log.info("redriven", extra=fields(entry=path.name))
    click.echo(f"redrove {len(moved)} instance(s)")
    if sop_instance_uid and not moved:
        sys.exit(1)


@main.command()
@spool_flag
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of text.")
def status(spool_dir: str, json_output: bool) -> None:
    """Queue depth, dead letters and the oldest queued entry's age."""
    spool = Spool(spool_dir)
    state = spool.status()
    letters = [
        {"entry": path.name, "reason": record.get("reason"), "dead_lettered_at": record.get("dead_lettered_at")}
        for path, record in spool.dead_letters()
    ]
    if json_output:
        click.echo(json.dumps({**state.__dict__, "dead_letter_entries": letters}, indent=2))
        return
    age = "-" if state.oldest_queued_age_s is None else f"{state.oldest_queued_age_s:.1f} s"
    click.echo(f"queued:        {state.queued} ({state.queued_bytes} bytes)")
    click.echo(f"oldest queued: {age}")
    click.echo(f"dead letters:  {state.dead_letters}")
    for letter in letters:
        click.echo(f"  {letter['entry']}: {letter['reason']}")

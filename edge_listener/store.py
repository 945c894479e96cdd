"""C-STORE SCP: make the received instance durable in the buffer, then (and only then) ack.

pynetdicom streams the received data set into a file in the spool's incoming/ folder (it is
set up with STORE_RECV_CHUNKED_DATASET, see server.py). This handler checks that data set by
its element headers, writes the buffered Part-10 file (our file meta, then the received bytes
copied unchanged), fsyncs it, renames it into the queue, fsyncs the queue folder, announces it
to the uploader, and answers Success. Anything that fails on the way answers a failure status
with an Error Comment and leaves nothing behind in the queue.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import BufferedInstance
from dicom_adapter.logs import fields
from dicom_adapter.part10 import MalformedDataset, encode_file_meta, read_file_meta, summarize_dataset
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from .dimse import CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES, SUCCESS, status
from .reception import reception_error

log = logging.getLogger(__name__)


class Refused(Exception):
    """The instance cannot be accepted; carries the DIMSE status and its explanation."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


@dataclass
class StoreService:
    """What the C-STORE handler needs: the spool to write into and whom to tell."""

    spool: Spool
    announce: Callable[[BufferedInstance], None]


def handle_store(event: Event, service: StoreService) -> Dataset:
    """EVT_C_STORE handler."""
    started = time.monotonic()
    request = event.request
    calling_aet = event.assoc.requestor.ae_title
    context = {
        "sop_instance_uid": str(request.AffectedSOPInstanceUID or ""),
        "sop_class_uid": str(request.AffectedSOPClassUID or ""),
        "calling_aet": calling_aet,
        "transfer_syntax_uid": str(event.context.transfer_syntax),
    }
    try:
        failed_write = reception_error(request)
        if failed_write is not None:
            raise Refused(OUT_OF_RESOURCES, _spool_failure(failed_write))
        instance = buffer_instance(
            Path(event.dataset_path),
            service.spool,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            command_sop_class_uid=context["sop_class_uid"],
            command_sop_instance_uid=context["sop_instance_uid"],
            calling_aet=calling_aet,
            called_aet=event.assoc.acceptor.ae_title,
        )
    except Refused as refusal:
        log.error("C-STORE refused", extra=fields(**context, status=f"0x{refusal.code:04X}", reason=refusal.comment))
        return status(refusal.code, refusal.comment)
    except Exception as exc:  # never let a handler error become pynetdicom's bare 0xC211
        log.exception("C-STORE failed unexpectedly", extra=fields(**context))
        return status(OUT_OF_RESOURCES, f"adapter error: {type(exc).__name__}")
    service.announce(instance)
    log.info("buffered", extra=fields(**instance.log_fields(), duration_ms=int((time.monotonic() - started) * 1000)))
    return status(SUCCESS)


def buffer_instance(
    received: Path,
    spool: Spool,
    *,
    transfer_syntax_uid: str,
    command_sop_class_uid: str,
    command_sop_instance_uid: str,
    calling_aet: str,
    called_aet: str,
) -> BufferedInstance:
    """Write the received data set durably into the spool queue; return its event."""
    with open(received, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        try:
            offset = read_file_meta(source).dataset_offset
            summary = summarize_dataset(source, offset, size, transfer_syntax_uid)
        except MalformedDataset as exc:
            raise Refused(CANNOT_UNDERSTAND, f"malformed data set: {exc}") from None
        _check_uids(summary.sop_class_uid, summary.sop_instance_uid, command_sop_class_uid, command_sop_instance_uid)
        header = encode_file_meta(
            sop_class_uid=summary.sop_class_uid,
            sop_instance_uid=summary.sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_aet=calling_aet,
            called_aet=called_aet,
        )
        name = spool.new_entry_name(summary.sop_instance_uid)
        partial = spool.incoming / (name + ".part")
        try:
            _write_entry(partial, header, source, offset, size - offset)
            final = spool.commit(partial, name)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise Refused(OUT_OF_RESOURCES, _spool_failure(exc)) from None
    return BufferedInstance(
        buffer_uri=spool.uri(final),
        sop_class_uid=summary.sop_class_uid,
        sop_instance_uid=summary.sop_instance_uid,
        study_instance_uid=summary.study_instance_uid,
        series_instance_uid=summary.series_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        calling_aet=calling_aet,
        called_aet=called_aet,
        size=len(header) + size - offset,
    )


def _spool_failure(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "spool disk full"
    return f"spool write failed: {exc.strerror or exc}"


def _check_uids(dataset_class: str, dataset_instance: str, command_class: str, command_instance: str) -> None:
    if not dataset_instance:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "data set has no SOP Instance UID (0008,0018)")
    if not dataset_class:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "data set has no SOP Class UID (0008,0016)")
    if dataset_instance != command_instance:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs from the command's")
    if dataset_class != command_class:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the command's")


def _write_entry(partial: Path, header: bytes, source, offset: int, length: int) -> None:
    """Our file meta, then the data set bytes copied in the kernel, then fsync."""
    with open(partial, "xb") as out:
        out.write(header)
        out.flush()
        copied = 0
        position = offset
        while copied < length:
            try:
                n = os.copy_file_range(source.fileno(), out.fileno(), length - copied, position)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                n = _copy_in_userspace(source, out, position, length - copied)
            if n == 0:
                raise OSError(errno.EIO, "received file shrank while being copied")
            copied += n
            position += n
        os.fsync(out.fileno())


def _copy_in_userspace(source, out, position: int, length: int) -> int:
    source.seek(position)
    copied = 0
    while copied < length:
        chunk = source.read(min(1 << 20, length - copied))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    out.flush()
    return copied

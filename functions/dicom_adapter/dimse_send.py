"""C-STORE of a buffered Part-10 file to a DIMSE peer, byte for byte, in its own transfer syntax.

With STORE_SEND_CHUNKED_DATASET pynetdicom sends the file's encoded data set as it lies on
disk (no decode, no re-encode, not whole in memory), so the peer receives what our sender sent.
The file's transfer syntax is the only one proposed: a peer that will not take it gets nothing
rather than different bytes, and the reason says so. A caller that can get the instance in
another transfer syntax (the export side: the store transcodes on WADO-RS) passes `convert`;
then Explicit and Implicit VR Little Endian are proposed as well, in contexts of their own, and
used only where the peer accepts none in the file's own syntax.

The answer is judged like a STOW-RS one (StowOutcome): Success and the warning statuses mean
stored; 0xA7xx (out of resources), a transient rejection, a refused or dropped connection and
timeouts are transient; everything else is a permanent rejection for this peer.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

from pynetdicom import AE, _config

from .aets import Peer
from .dicomweb import StowOutcome, StowVerdict
from .dimse_tls import TlsConfigError, TlsFiles, associate
from .logs import fields
from .part10 import read_file_meta

_config.STORE_SEND_CHUNKED_DATASET = True

log = logging.getLogger(__name__)

_REJECT_REASONS = {0x01: "permanent", 0x02: "transient"}
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
FALLBACK_TRANSFER_SYNTAXES = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
# Answers of a store asked to transcode that mean "not this instance, not ever".
_CONVERSION_REFUSED = {400, 404, 406, 415}

Converter = Callable[[str], AbstractContextManager[Path]]


def send_part10(
    path: Path,
    peer: Peer,
    *,
    calling_aet: str,
    timeout_s: float = 60.0,
    convert: Converter | None = None,
    tls: TlsFiles | None = None,
) -> StowOutcome:
    """C-STORE one Part-10 file to `peer` on an association of its own; `convert(syntax)`
    gives the instance in a fallback syntax if the peer takes none in the file's own. TLS if
    the peer is marked so, with our certificate `tls`."""
    with open(path, "rb") as fp:
        meta = read_file_meta(fp)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(meta.sop_class_uid, [meta.transfer_syntax_uid])
    fallbacks = [ts for ts in FALLBACK_TRANSFER_SYNTAXES if ts != meta.transfer_syntax_uid] if convert else []
    for syntax in fallbacks:
        ae.add_requested_context(meta.sop_class_uid, [syntax])
    where = f"{peer.name}@{peer.host}:{peer.port}"
    try:
        assoc = associate(ae, peer, tls)
    except TlsConfigError as exc:  # configuration, not the peer: fix it, then redrive
        return StowOutcome(StowVerdict.REJECTED, None, f"{where}: {exc}")
    if assoc.is_rejected:
        result = getattr(assoc.acceptor.primitive, "result", 0x02)
        verdict = StowVerdict.REJECTED if result == 0x01 else StowVerdict.TRANSIENT
        return StowOutcome(verdict, None, f"{where} rejected the association ({_REJECT_REASONS.get(result, 'transient')})")
    if not assoc.is_established:
        if assoc.is_aborted and assoc.acceptor.primitive is not None:
            # Connected and answered, but accepted none of our presentation contexts.
            return StowOutcome(
                StowVerdict.REJECTED, None,
                f"{where} does not accept SOP class {meta.sop_class_uid} in transfer syntax {meta.transfer_syntax_uid}",
            )
        return StowOutcome(StowVerdict.TRANSIENT, None, f"{where} unreachable (no association)")
    try:
        accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == meta.sop_class_uid}
        usable = [ts for ts in fallbacks if ts in accepted]
        if meta.transfer_syntax_uid in accepted or not usable or convert is None:
            response = assoc.send_c_store(path)
        else:
            log.info("peer takes no context in the stored transfer syntax; sending a conversion",
                     extra=fields(peer=where, sop_instance_uid=meta.sop_instance_uid, transfer_syntax_uid=usable[0]))
            try:
                with convert(usable[0]) as converted:
                    response = assoc.send_c_store(converted)
            except Exception as exc:  # the conversion's fetch failed
                status = getattr(exc, "http_status", None)
                verdict = StowVerdict.REJECTED if status in _CONVERSION_REFUSED else StowVerdict.TRANSIENT
                reason = getattr(exc, "reason", None) or type(exc).__name__
                return StowOutcome(verdict, status, f"{where} takes only {usable[0]}, and the conversion failed: {reason}")
    except Exception as exc:  # pynetdicom raises on contexts, sockets, files
        return StowOutcome(StowVerdict.TRANSIENT, None, f"C-STORE to {where} failed: {type(exc).__name__}")
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in response:
        return StowOutcome(StowVerdict.TRANSIENT, None, f"no C-STORE response from {where} (timeout or abort)")
    code = int(response.Status)
    comment = str(response.get("ErrorComment", "") or "")
    reason = f"C-STORE to {where}: status 0x{code:04X}" + (f" ({comment})" if comment else "")
    if code == 0x0000 or code in (0x0001, 0x0107, 0x0116) or code >> 12 == 0xB:
        return StowOutcome(StowVerdict.STORED, None, reason, warning_reason=code or None)
    if code >> 8 == 0xA7:
        return StowOutcome(StowVerdict.TRANSIENT, None, reason, failure_reason=code)
    return StowOutcome(StowVerdict.REJECTED, None, reason, failure_reason=code, detail=comment)

"""C-STORE of a buffered Part-10 file to a DIMSE peer, byte for byte, in its own transfer syntax.

With STORE_SEND_CHUNKED_DATASET pynetdicom sends the file's encoded data set as it lies on
disk (no decode, no re-encode, not whole in memory), so the peer receives what our sender sent.
The file's transfer syntax is the only one proposed: a peer that will not take it gets nothing
rather than different bytes, and the reason says so.

The answer is judged like a STOW-RS one (StowOutcome): Success and the warning statuses mean
stored; 0xA7xx (out of resources), a transient rejection, a refused or dropped connection and
timeouts are transient; everything else is a permanent rejection for this peer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pynetdicom import AE, _config

from .aets import Peer
from .dicomweb import StowOutcome, StowVerdict
from .part10 import read_file_meta

_config.STORE_SEND_CHUNKED_DATASET = True

log = logging.getLogger(__name__)

_REJECT_REASONS = {0x01: "permanent", 0x02: "transient"}


def send_part10(path: Path, peer: Peer, *, calling_aet: str, timeout_s: float = 60.0) -> StowOutcome:
    """C-STORE one Part-10 file to `peer` on an association of its own."""
    with open(path, "rb") as fp:
        meta = read_file_meta(fp)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(meta.sop_class_uid, [meta.transfer_syntax_uid])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.name)
    where = f"{peer.name}@{peer.host}:{peer.port}"
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
        response = assoc.send_c_store(path)
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

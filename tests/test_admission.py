"""Who may talk to us and how many at once: calling-AE allow-list and host check, association
limits (total and per calling AE) with the A-ASSOCIATE-RJ reasons PS3.8 gives, services switched
off, query/retrieve limited to listed AEs; and bounds on peers that trickle, idle or send
oversized PDUs. DCMTK and pynetdicom are the clients; raw sockets play the hostile ones."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from support.adapter import ADAPTER_AET, LocalAdapter
from support.dcmtk import echoscu
from support.dicom_files import make_ct_instance
from support.processes import RssSampler
from support.raw_dimse import (
    P_DATA_TF,
    association_request_bytes,
    closed_within,
    pdu,
    read_pdu,
    trickle,
)
from support.sender import send_files

UNREACHABLE_STORE = "http://127.0.0.1:9/dicom-web"  # these tests never upload


def _adapter(tmp_path: Path, *args: str, name: str = "adapter") -> LocalAdapter:
    return LocalAdapter(tmp_path / name, UNREACHABLE_STORE, extra_args=list(args))


def _associate(port: int, calling_aet: str, contexts=(Verification,)):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = 20
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", port, ae_title=ADAPTER_AET)


def _rejection(assoc) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    assert assoc.is_rejected, "the association was not rejected"
    primitive = assoc.acceptor.primitive
    return (primitive.result, primitive.result_source, primitive.diagnostic)


CALLING_AET_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)

PEERS = [
    {"name": "GOODSCU", "host": "127.0.0.1", "port": 11112},
    {"name": "NAMEDSCU", "host": "localhost", "port": 11112},
    {"name": "FARSCU", "host": "10.255.255.1", "port": 11112},
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAdapter]:
    adapter = _adapter(
        tmp_path_factory.mktemp("guarded"),
        "--aet_dictionary_inline", json.dumps(PEERS), "--require_known_calling_aet", "--check_calling_host",
    )
    adapter.process.cleanup_scope = "session"
    with adapter:
        yield adapter


def test_an_unlisted_calling_ae_is_rejected(guarded: LocalAdapter):
    assert _rejection(_associate(guarded.port, "STRANGER")) == CALLING_AET_NOT_RECOGNIZED
    assert echoscu("127.0.0.1", guarded.port, called_aet=ADAPTER_AET, calling_aet="STRANGER").returncode != 0
    assert "calling AE title not on the allow-list" in guarded.logs()


def test_a_listed_ae_from_its_host_is_accepted(guarded: LocalAdapter):
    for aet in ("GOODSCU", "NAMEDSCU"):  # an address, and a host name that resolves to ours
        assert echoscu("127.0.0.1", guarded.port, called_aet=ADAPTER_AET, calling_aet=aet).returncode == 0, aet


def test_a_listed_ae_from_the_wrong_host_is_rejected(guarded: LocalAdapter):
    assert _rejection(_associate(guarded.port, "FARSCU")) == CALLING_AET_NOT_RECOGNIZED
    assert "called from a host other than its AET dictionary entry" in guarded.logs()


def test_association_limits_total_and_per_calling_ae(tmp_path: Path):
    with _adapter(tmp_path, "--max_associations", "2", "--max_associations_per_aet", "1") as adapter:
        first = _associate(adapter.port, "MODALITY1")
        assert first.is_established
        assert _rejection(_associate(adapter.port, "MODALITY1")) == LOCAL_LIMIT_EXCEEDED  # per AE
        second = _associate(adapter.port, "MODALITY2")
        assert second.is_established
        assert _rejection(_associate(adapter.port, "MODALITY3")) == LOCAL_LIMIT_EXCEEDED  # total
        first.release()
        deadline = time.monotonic() + 10
        while True:  # the slot is free once the adapter has seen the release through
            third = _associate(adapter.port, "MODALITY3")
            if third.is_established or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert third.is_established
        third.release()
        second.release()
    logs = adapter.logs()
    assert "maximum concurrent associations for this calling AE reached" in logs
    assert "maximum concurrent associations reached" in logs


def test_services_can_be_switched_off(tmp_path: Path):
    instance = make_ct_instance(tmp_path / "ct.dcm")
    with _adapter(tmp_path, "--dimse_services", "c-echo,c-find", name="no-store") as adapter:
        assoc = _associate(adapter.port, "SCU", contexts=(Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind))
        accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
        assoc.release()
        assert accepted == {Verification, StudyRootQueryRetrieveInformationModelFind}
    with _adapter(tmp_path, "--dimse_services", "c-store", name="store-only") as adapter:
        assoc = _associate(adapter.port, "SCU", contexts=(Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind))
        accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
        assoc.release()
        assert accepted == {CTImageStorage}
        assert [r.status for r in send_files([instance.path], adapter.port, called_aet=ADAPTER_AET)] == [0]


def test_query_retrieve_limited_to_listed_aes_separately_from_store(tmp_path: Path):
    instance = make_ct_instance(tmp_path / "ct.dcm")
    with _adapter(tmp_path, "--query_retrieve_aets", "VIEWER") as adapter:
        contexts = (CTImageStorage, StudyRootQueryRetrieveInformationModelFind)
        for aet, expected in (("VIEWER", {CTImageStorage, StudyRootQueryRetrieveInformationModelFind}), ("MODALITY", {CTImageStorage})):
            assoc = _associate(adapter.port, aet, contexts=contexts)
            assert {str(c.abstract_syntax) for c in assoc.accepted_contexts} == expected, aet
            assoc.release()
        assert [r.status for r in send_files([instance.path], adapter.port, called_aet=ADAPTER_AET, calling_aet="MODALITY")] == [0]


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAdapter]:
    """One association at a time, short timeouts: a peer that holds its slot shows at once."""
    adapter = _adapter(tmp_path_factory.mktemp("strict"), "--max_associations", "1", "--acse_timeout", "2", "--network_timeout", "3")
    adapter.process.cleanup_scope = "session"
    with adapter:
        yield adapter


def _slot_is_free(adapter: LocalAdapter, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assoc = _associate(adapter.port, "NEXT")
        if assoc.is_established:
            assoc.release()
            return True
        time.sleep(0.2)
    return False


def _trickled(sock: socket.socket, data: bytes, seconds: float) -> float | None:
    """Trickle `data` (a byte every 0.2 s) in the background; how long until the adapter hung up."""
    sender = threading.Thread(target=trickle, args=(sock, data, 0.2, seconds), daemon=True)
    sender.start()
    closed_after = closed_within(sock, seconds)
    sender.join(seconds)
    return closed_after


def test_a_trickled_association_request_is_cut_off(strict: LocalAdapter):
    request = association_request_bytes("TRICKLER", ADAPTER_AET, [Verification])
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        closed_after = _trickled(sock, request, 15)
    assert closed_after is not None and closed_after < 8, closed_after  # ACSE timeout 2 s
    assert _slot_is_free(strict)


def test_a_trickled_pdu_on_an_established_association_is_cut_off(strict: LocalAdapter):
    request = association_request_bytes("TRICKLER", ADAPTER_AET, [Verification])
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(request)
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == 0x02  # A-ASSOCIATE-AC
        # A P-DATA-TF announcing 4 KiB, sent a byte at a time: each byte resets no timer.
        closed_after = _trickled(sock, pdu(P_DATA_TF, b"\x00" * 4096), 20)
    assert closed_after is not None and closed_after < 10, closed_after  # network timeout 3 s
    assert _slot_is_free(strict)


def test_an_idle_association_is_aborted(strict: LocalAdapter):
    assoc = _associate(strict.port, "IDLER")
    assert assoc.is_established
    deadline = time.monotonic() + 15
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not assoc.is_established and assoc.is_aborted
    assert _slot_is_free(strict)


def test_an_oversized_pdu_is_refused_without_reading_it(strict: LocalAdapter):
    request = association_request_bytes("BIGPDU", ADAPTER_AET, [Verification])
    sampler = RssSampler(strict.process.pid, include_children=True).start()
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(request)
        assert read_pdu(sock)[0] == 0x02  # type: ignore[index]
        # Announce a 512 MiB P-DATA-TF and start sending it.
        sock.sendall(struct_header(P_DATA_TF, 512 << 20) + b"\x00" * 65536)
        answer = read_pdu(sock)
    sampler.stop()
    assert answer is not None and answer[0] == 0x07, answer  # A-ABORT
    assert answer[1][2:4] == b"\x02\x06"  # service provider, invalid PDU parameter value
    assert sampler.peak_total_rss_bytes < 400 << 20
    assert "PDU longer than allowed" in strict.logs()
    assert _slot_is_free(strict)


def struct_header(pdu_type: int, length: int) -> bytes:
    import struct

    return struct.pack(">BBL", pdu_type, 0, length)


def test_association_limits_hold_across_listener_processes(tmp_path: Path):
    """Two listener processes on one port count their associations together: the limits are
    the adapter's, however the kernel spreads the connections."""
    with _adapter(tmp_path, "--dimse_processes", "2", "--max_associations", "5", "--max_associations_per_aet", "2") as adapter:
        held = []
        try:
            for attempt in range(12):  # two calling AEs: each may hold 2, whichever process serves it
                assoc = _associate(adapter.port, f"MODALITY{attempt % 2}")
                if assoc.is_established:
                    held.append(assoc)
                else:
                    assert _rejection(assoc) == LOCAL_LIMIT_EXCEEDED
            assert len(held) == 4
            fifth = _associate(adapter.port, "MODALITY2")  # room for one more in total
            assert fifth.is_established
            held.append(fifth)
            assert _rejection(_associate(adapter.port, "MODALITY3")) == LOCAL_LIMIT_EXCEEDED
            logs = adapter.logs()
            # Both processes took part: 13 connections (admitted or refused) spread by the
            # kernel's hash of the source port, so one process alone has odds of 1 in 4096.
            for process in ("MainProcess", "dicom-adapter-listener-1"):
                assert re.search(rf"\[{process}\] edge_listener\.front\.(server|admission) association", logs), process
        finally:
            for assoc in held:
                assoc.release()

"""DIMSE TLS with DCMTK as the real peer: echoscu/storescu `+tls` with a client certificate get
in; without one, with an untrusted one, or in plain TCP they do not; the plain port beside the
TLS one still serves; a stalled handshake does not hold up the next client; C-MOVE to a
destination marked "tls" reaches a DCMTK storescp +tls; `export --peer_dimse_tls` checks its files at
start (its delivery over TLS is in test_export_cloud.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove
from support.adapter import ADAPTER_AET, FAST_PATH, LocalAdapter
from support.dcmtk import StoreSCP, echoscu, run_dcmtk, storescu
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.orthanc import Orthanc
from support.processes import free_port
from support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_args(pki: Pki, *, plain_port: int | None = None) -> list[str]:
    args = ["--dimse_tls_cert", str(pki.adapter.cert), "--dimse_tls_key", str(pki.adapter.key), "--dimse_tls_ca", str(pki.ca)]
    return args + (["--dimse_plain_port", str(plain_port)] if plain_port is not None else [])


@pytest.fixture
def tls_adapter(tmp_path: Path, fresh_orthanc: Orthanc, pki: Pki) -> Iterator[LocalAdapter]:
    plain_port = free_port()
    adapter = LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url, extra_args=[*_tls_args(pki, plain_port=plain_port), "--acse_timeout", "3"])
    adapter.plain_port = plain_port  # type: ignore[attr-defined]
    with adapter:
        yield adapter


def test_dcmtk_with_a_client_certificate_echoes_and_stores_over_tls(tmp_path: Path, tls_adapter: LocalAdapter, fresh_orthanc: Orthanc, pki: Pki):
    echo = echoscu("127.0.0.1", tls_adapter.port, called_aet=ADAPTER_AET, extra_args=pki.client.dcmtk_args(pki.ca))
    assert echo.returncode == 0, echo.stderr
    instance = make_ct_instance(tmp_path / "ct.dcm")
    stored = storescu([instance.path], "127.0.0.1", tls_adapter.port, called_aet=ADAPTER_AET, extra_args=pki.client.dcmtk_args(pki.ca))
    assert stored.returncode == 0, stored.stderr
    tls_adapter.wait_until_drained()
    assert instance.sop_instance_uid in fresh_orthanc.list_sop_instance_uids()
    assert "dicom-adapter ready" in tls_adapter.logs() and "(TLS)" in tls_adapter.logs()


@pytest.mark.parametrize(
    "who",
    ["no client certificate", "certificate of an untrusted CA", "plain TCP on the TLS port"],
)
def test_clients_that_do_not_belong_are_refused(tls_adapter: LocalAdapter, pki: Pki, who: str):
    args = {
        # +tla: TLS, but no certificate of our own; the adapter's is still verified.
        "no client certificate": ["+tla", "+cf", str(pki.ca)],
        "certificate of an untrusted CA": pki.rogue_client.dcmtk_args(pki.ca),
        "plain TCP on the TLS port": [],
    }[who]
    result = echoscu("127.0.0.1", tls_adapter.port, called_aet=ADAPTER_AET, extra_args=args, timeout=30)
    assert result.returncode != 0, f"{who}: echo succeeded"
    if who != "plain TCP on the TLS port":
        deadline = time.monotonic() + 10
        while "TLS handshake failed" not in tls_adapter.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "TLS handshake failed" in tls_adapter.logs()
    # ...and the adapter goes on serving those who belong
    assert echoscu("127.0.0.1", tls_adapter.port, called_aet=ADAPTER_AET, extra_args=pki.client.dcmtk_args(pki.ca)).returncode == 0


def test_plain_port_beside_the_tls_port(tls_adapter: LocalAdapter):
    assert echoscu("127.0.0.1", tls_adapter.plain_port, called_aet=ADAPTER_AET).returncode == 0  # type: ignore[attr-defined]


def test_a_stalled_handshake_does_not_hold_up_the_next_client(tls_adapter: LocalAdapter, pki: Pki):
    with socket.create_connection(("127.0.0.1", tls_adapter.port)) as stalled:
        stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        started = time.monotonic()
        echo = echoscu("127.0.0.1", tls_adapter.port, called_aet=ADAPTER_AET, extra_args=pki.client.dcmtk_args(pki.ca))
        assert echo.returncode == 0, echo.stderr
        assert time.monotonic() - started < 2.5, "the echo waited for the stalled handshake"
        # The stalled one is closed once the ACSE timeout (3 s) runs out.
        stalled.settimeout(15)
        assert stalled.recv(1024) == b""


def test_tls_is_checked_at_start(tmp_path: Path, pki: Pki):
    import subprocess

    from support.adapter import adapter_command

    base = adapter_command() + ["local", "--dimse_aet", "A", "--dimse_port", "0", "--spool_dir", str(tmp_path / "s"), "--dicomweb_address", "http://127.0.0.1:9/dicom-web"]
    mismatched = subprocess.run(base + ["--dimse_tls_cert", str(pki.adapter.cert), "--dimse_tls_key", str(pki.client.key)], capture_output=True, text=True, timeout=60)
    assert mismatched.returncode == 2 and "DIMSE TLS files" in mismatched.stderr
    lonely_key = subprocess.run(base + ["--dimse_tls_key", str(pki.adapter.key)], capture_output=True, text=True, timeout=60)
    assert lonely_key.returncode == 2 and "go together" in lonely_key.stderr
    plain_only = subprocess.run(base + ["--dimse_plain_port", "0"], capture_output=True, text=True, timeout=60)
    assert plain_only.returncode == 2 and "--dimse_plain_port" in plain_only.stderr



def test_export_checks_its_tls_settings_at_start(tmp_path: Path, pki: Pki):
    """`export --peer_dimse_tls` stops with a usage error before it subscribes to anything."""
    import subprocess

    from support.adapter import adapter_command

    base = adapter_command() + ["export", "--project_id", "p", "--subscription_id", "s", "--peer_dimse_aet", "PACS",
                                "--peer_dimse_ip", "127.0.0.1", "--peer_dimse_port", "104", "--peer_dimse_tls"]
    no_certificate = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert no_certificate.returncode == 2 and "--peer_dimse_tls needs --dimse_tls_cert" in no_certificate.stderr
    mismatched = subprocess.run(base + ["--dimse_tls_cert", str(pki.adapter.cert), "--dimse_tls_key", str(pki.client.key)], capture_output=True, text=True, timeout=60)
    assert mismatched.returncode == 2 and "DIMSE TLS files" in mismatched.stderr
    dicomweb = [a for a in base if a not in ("--peer_dimse_aet", "PACS", "--peer_dimse_ip", "127.0.0.1", "--peer_dimse_port", "104")]
    not_dimse = subprocess.run(dicomweb + ["--peer_dicomweb_address", "http://127.0.0.1:9/dicom-web"], capture_output=True, text=True, timeout=60)
    assert not_dimse.returncode == 2 and "is for a DIMSE peer" in not_dimse.stderr

def test_c_move_reaches_a_dcmtk_storescp_over_tls(tmp_path: Path, fresh_orthanc: Orthanc, pki: Pki):
    instance = make_ct_instance(tmp_path / "ct.dcm")
    assert fresh_orthanc.stow(instance.path).status_code == 200
    destination = StoreSCP(tmp_path / "received", aet="TLSPACS", extra_args=pki.peer.dcmtk_args(pki.ca)).start()
    plain_destination = StoreSCP(tmp_path / "plain", aet="PLAINPACS").start()
    peers = [
        {"name": "TLSPACS", "host": "127.0.0.1", "port": destination.port, "tls": True},
        {"name": "PLAINPACS", "host": "127.0.0.1", "port": plain_destination.port, "tls": True},
    ]
    plain_port = free_port()  # DCMTK's movescu has no TLS: it asks on the plain port
    extra = [*_tls_args(pki, plain_port=plain_port), "--aet_dictionary_inline", json.dumps(peers)]
    try:
        with LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url, extra_args=extra) as adapter:
            move = run_dcmtk(
                "movescu",
                ["-S", "-aet", "MOVESCU", "-aec", ADAPTER_AET, "-aem", "TLSPACS", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={instance.study_instance_uid}", "127.0.0.1", str(plain_port)],
            )
            assert move.returncode == 0, move.stderr[-2000:] + adapter.process.output_tail()
            # A destination marked tls that speaks plain DIMSE: refused with a reason, no hang.
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = instance.study_instance_uid
            ae = AE(ae_title="PYMOVESCU")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = ae.associate("127.0.0.1", plain_port, ae_title=ADAPTER_AET)
            try:
                [(status, _)] = list(assoc.send_c_move(identifier, "PLAINPACS", StudyRootQueryRetrieveInformationModelMove))
            finally:
                assoc.release()
            assert status.Status == 0xA801
            if FAST_PATH:  # (pynetdicom's own service sends no Error Comment with it)
                assert "cannot associate" in status.ErrorComment
    finally:
        destination.stop()
        plain_destination.stop()
    assert plain_destination.received_files() == []
    [received] = destination.received_files()
    assert dataset_bytes_after_meta(received) == dataset_bytes_after_meta(instance.path)


def test_routing_to_a_tls_dimse_destination(tmp_path: Path, pki: Pki):
    """The upload side's C-STORE to a routing destination marked "tls" (dimse_send.py)."""
    destination = StoreSCP(tmp_path / "received", aet="TLSPACS", extra_args=pki.peer.dcmtk_args(pki.ca)).start()
    peers = [{"name": "TLSPACS", "host": "127.0.0.1", "port": destination.port, "tls": True}]
    rules = [{"filter": "", "dimse_destination": "TLSPACS"}]
    extra = [*_tls_args(pki), "--aet_dictionary_inline", json.dumps(peers), "--destination_config_inline", json.dumps(rules)]
    instance = make_ct_instance(tmp_path / "ct.dcm")
    try:
        with LocalAdapter(tmp_path / "adapter", None, extra_args=extra) as adapter:
            stored = storescu([instance.path], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET, extra_args=pki.client.dcmtk_args(pki.ca))
            assert stored.returncode == 0, stored.stderr
            adapter.wait_until_drained()
            assert adapter.dead_letters() == []
    finally:
        destination.stop()
    [received] = destination.received_files()
    assert dataset_bytes_after_meta(received) == dataset_bytes_after_meta(instance.path)


def test_a_trickled_handshake_is_cut_off_at_the_acse_timeout(tls_adapter: LocalAdapter):
    import threading

    from support.raw_dimse import closed_within, trickle

    hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 512  # a TLS record announcing 512 bytes, sent a byte per 0.5 s
    with socket.create_connection(("127.0.0.1", tls_adapter.port)) as sock:
        sender = threading.Thread(target=trickle, args=(sock, hello, 0.5, 15), daemon=True)
        sender.start()
        closed_after = closed_within(sock, 15)
    assert closed_after is not None and closed_after < 6, closed_after  # ACSE timeout 3 s

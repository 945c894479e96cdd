"""C-STOREs taken in the network thread (edge_listener/direct_store.py): however a sender cuts
a message into PDUs, the data set lands byte for byte and is answered; what is not a plain
C-STORE request still reaches pynetdicom; a protocol error aborts and leaves nothing behind."""

from __future__ import annotations

import io
import socket
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, Verification
from support.adapter import ADAPTER_AET, LocalAdapter
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.processes import free_port
from support.raw_dimse import A_ABORT, A_ASSOCIATE_AC, P_DATA_TF, association_request_bytes, c_store_pdus, pdu, read_pdu

from edge_listener.front.fastpath.direct_store import _command_elements
from edge_listener.front.fastpath.wire import C_STORE_RQ, command_set

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory):
    """An adapter whose store never answers: what it took stays in its queue to be compared."""
    work = tmp_path_factory.mktemp("direct-store")
    with LocalAdapter(work / "adapter", f"http://127.0.0.1:{free_port()}/dicom-web", extra_args=["--dimse_processes", "1"]) as running:
        yield running


def _pdvs(pdus: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(context ID, control header, fragment) of every PDV of these P-DATA-TF PDUs."""
    pdvs = []
    for encoded in pdus:
        offset = 6
        while offset < len(encoded):
            (length,) = struct.unpack_from(">L", encoded, offset)
            pdvs.append((encoded[offset + 4], encoded[offset + 5], encoded[offset + 6 : offset + 4 + length]))
            offset += 4 + length
    return pdvs


def _p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU holding these PDVs."""
    return pdu(P_DATA_TF, b"".join(struct.pack(">LBB", len(data) + 2, context, control) + data for context, control, data in pdvs))


def _associate(adapter: LocalAdapter, *abstract_syntaxes: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", adapter.port), timeout=10)
    sock.sendall(association_request_bytes("RAWSCU", ADAPTER_AET, abstract_syntaxes, EXPLICIT_LE))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == A_ASSOCIATE_AC
    return sock


def _response(sock: socket.socket) -> pydicom.Dataset:
    """The command set of the next DIMSE message the adapter sends."""
    command = b""
    while True:
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == P_DATA_TF, answer
        for _, control, data in _pdvs([pdu(P_DATA_TF, answer[1])]):
            assert control & 0x01
            command += data
            if control & 0x02:
                return read_dataset(io.BytesIO(command), is_implicit_VR=True, is_little_endian=True)


def _release(sock: socket.socket) -> None:
    sock.sendall(pdu(5, b"\0\0\0\0"))  # A-RELEASE-RQ
    read_pdu(sock)
    sock.close()


def _queued_data_set(adapter: LocalAdapter, sop_instance_uid: str) -> bytes:
    [entry] = [path for path in adapter.queue_entries() if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == sop_instance_uid]
    return dataset_bytes_after_meta(entry)


def _regroup(pdvs: list[tuple[int, int, bytes]], how: str) -> list[bytes]:
    """The same message in other PDUs: the command set cut in two, or the command set and the
    first data fragments in one PDU."""
    command = [pdv for pdv in pdvs if pdv[1] & 0x01]
    data = [pdv for pdv in pdvs if not pdv[1] & 0x01]
    assert len(command) == 1 and len(data) >= 3
    context, _, command_bytes = command[0]
    if how == "command in two PDUs":
        return [_p_data((context, 0x01, command_bytes[:10])), _p_data((context, 0x03, command_bytes[10:]))] + [_p_data(d) for d in data]
    if how == "command and data in one PDU":
        return [_p_data(command[0], data[0], data[1])] + [_p_data(d) for d in data[2:]]
    if how == "whole message in one PDU":
        return [_p_data(command[0], *data)]
    raise ValueError(how)


@pytest.mark.parametrize("how", ["command in two PDUs", "command and data in one PDU", "whole message in one PDU"])
def test_any_cut_of_a_message_into_pdus_is_stored_byte_for_byte(tmp_path: Path, adapter: LocalAdapter, how: str):
    instance = make_ct_instance(tmp_path / "a.dcm", size_kb=60)
    data_set = dataset_bytes_after_meta(instance.path)
    sock = _associate(adapter, instance.sop_class_uid)
    pdus = c_store_pdus(instance.sop_class_uid, instance.sop_instance_uid, data_set, context_id=1, max_pdu=16384)
    for encoded in _regroup(_pdvs(pdus), how):
        sock.sendall(encoded)
    response = _response(sock)
    assert (response.Status, response.MessageIDBeingRespondedTo, response.AffectedSOPInstanceUID) == (0, 1, instance.sop_instance_uid)
    _release(sock)
    assert _queued_data_set(adapter, instance.sop_instance_uid) == data_set


def test_other_messages_on_the_association_still_reach_pynetdicom(tmp_path: Path, adapter: LocalAdapter):
    """C-ECHOs (pynetdicom's) between C-STOREs (ours) on one association."""
    instances = [make_ct_instance(tmp_path / f"{n}.dcm") for n in range(3)]
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = [build_context(CTImageStorage, EXPLICIT_LE), build_context(Verification)]
    assoc = ae.associate("127.0.0.1", adapter.port, ae_title=ADAPTER_AET)
    assert assoc.is_established
    try:
        statuses = []
        for instance in instances:
            statuses.append(assoc.send_c_echo().Status)
            statuses.append(assoc.send_c_store(pydicom.dcmread(instance.path)).Status)
        assert statuses == [0] * 6
    finally:
        assoc.release()
    for instance in instances:
        assert _queued_data_set(adapter, instance.sop_instance_uid) == dataset_bytes_after_meta(instance.path)


def test_data_set_interrupted_by_another_message_aborts_and_leaves_nothing(tmp_path: Path, adapter: LocalAdapter):
    instance = make_ct_instance(tmp_path / "a.dcm", size_kb=60)
    sock = _associate(adapter, instance.sop_class_uid)
    pdus = c_store_pdus(instance.sop_class_uid, instance.sop_instance_uid, dataset_bytes_after_meta(instance.path), 1, 16384)
    for encoded in pdus[:2]:  # the command and the first data fragment
        sock.sendall(encoded)
    sock.sendall(pdus[0])  # a command where the data set should go on
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == A_ABORT
    sock.close()
    assert adapter.incoming_files() == []
    assert all(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID != instance.sop_instance_uid for p in adapter.queue_entries())
    # The listener carries on.
    second = _associate(adapter, instance.sop_class_uid)
    for encoded in pdus:
        second.sendall(encoded)
    assert _response(second).Status == 0
    _release(second)


def test_command_elements_read_a_command_set_and_refuse_a_broken_one():
    command = command_set(AffectedSOPClassUID=CTImageStorage, CommandField=C_STORE_RQ, MessageID=7, Priority=2, CommandDataSetType=1, AffectedSOPInstanceUID="1.2.3.4")
    elements = _command_elements(command)
    assert elements is not None
    assert elements[0x0002].rstrip(b"\0") == CTImageStorage.encode()
    assert elements[0x0100] == struct.pack("<H", C_STORE_RQ) and elements[0x0110] == struct.pack("<H", 7)
    assert elements[0x1000] == b"1.2.3.4\0"
    assert _command_elements(command[:-3]) is None  # an element running past the end
    assert _command_elements(b"\x08\x00" + command[2:]) is None  # not group 0000

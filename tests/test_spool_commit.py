"""Spool.commit: one fsynced reception becomes one queue entry per destination, named as the
uploader and the status command expect, each found again from its event's buffer URI."""

from __future__ import annotations

from pathlib import Path

from dicom_adapter.buffers import open_buffered_object
from dicom_adapter.buffers.spool import Spool, destination_id_of, sop_instance_uid_of
from dicom_adapter.routing import Destination

UID = "1.2.826.0.1.3680043.8.498.1"


def test_each_destination_gets_an_entry_whose_uri_names_it(tmp_path: Path):
    spool = Spool(tmp_path / "spool with space")  # a path that needs quoting in a URI
    partial = spool.incoming / "1-abc-0.part"
    partial.write_bytes(b"instance bytes")
    archive = Destination.dicomweb("http://archive.example/dicom-web")

    names = spool.commit(str(partial), spool.new_entry_name(UID), [None, archive])

    assert not partial.exists()
    assert [sop_instance_uid_of(name) for name in names] == [UID, UID]
    assert [destination_id_of(name) for name in names] == ["", archive.id]
    for name in names:
        path = spool.queue / name
        assert spool.entry_uri(name) == path.as_uri() == spool.uri(path)
        buffered = open_buffered_object(spool.entry_uri(name))
        assert buffered.exists() and b"".join(buffered.open_chunks()) == b"instance bytes"


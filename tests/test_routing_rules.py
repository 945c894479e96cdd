"""Routing rules: the Google adapter's destination config, parsed, validated and matched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_adapter.aets import Peer
from dicom_adapter.routing import Destination, RoutingConfigError, parse_routing, read_routing_header
from support.adapter import adapter_command
from support.dicom_files import make_ct_instance, write_large_instance

PEERS = {"PACS": Peer("PACS", "10.0.0.5", 104)}
STORE_A = "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/a/dicomWeb"


def _table(entries: list, **kwargs):
    return parse_routing(json.dumps(entries), source="rules.json", peers=PEERS, **kwargs)


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_the_google_adapters_format_parses_unchanged():
    table = _table(
        [
            {"filter": "StudyDate=19931010&Modality=CT", "dicomweb_destination": f"{STORE_A}/studies"},
            {"filter": "AETitle=MRSCANNER", "name": "PACS", "host": "10.0.0.5", "port": 104},
        ],
        send_to_all_matching=True,
    )
    ct = _header(StudyDate="19931010", Modality="CT")
    # Google's examples name the .../studies URL; the destination is the service root.
    assert table.route("ANY", "ADAPTER", ct) == (Destination.dicomweb(STORE_A),)
    assert Destination.dicomweb(f"{STORE_A}/studies").address == STORE_A
    assert table.route("MRSCANNER", "ADAPTER", ct) == (Destination.dicomweb(STORE_A), Destination.dimse(PEERS["PACS"]))
    assert table.route("MRSCANNER", "ADAPTER", _header(Modality="MR")) == (Destination.dimse(PEERS["PACS"]),)


def test_first_match_wins_unless_all_matching_and_unmatched_go_to_the_default_store():
    entries = [
        {"filter": "Modality=CT", "dicomweb_destination": "http://a/dicom-web"},
        {"filter": "", "dimse_destination": "PACS"},
    ]
    first = _table(entries)
    every = _table(entries, send_to_all_matching=True)
    ct = _header(Modality="CT")
    assert [d.label for d in first.route("X", "Y", ct)] == ["http://a/dicom-web"]
    assert [d.label for d in every.route("X", "Y", ct)] == ["http://a/dicom-web", "PACS@10.0.0.5:104"]
    only_ct = _table(entries[:1])
    assert only_ct.route("X", "Y", _header(Modality="MR")) == (None,)  # None: the default store
    assert _table(entries[:1], has_default=False).route("X", "Y", _header(Modality="MR")) == ()


def test_matching_is_c_find_like_alternatives_wildcards_multi_values_and_no_empty_match():
    table = _table(
        [
            {"filter": "Modality=CT\\MR&StudyDescription=*HEAD*", "dicomweb_destination": "http://a/"},
            {"filter": "ImageType=DERIVED", "dicomweb_destination": "http://b/"},
            {"filter": "(0008,0080)=St?Mary", "dicomweb_destination": "http://c/"},
        ],
        send_to_all_matching=True,
        has_default=False,
    )
    labels = lambda header: [d.label for d in table.route("X", "Y", header)]  # noqa: E731
    assert labels(_header(Modality="MR", StudyDescription="CT HEAD W/O")) == ["http://a"]
    assert labels(_header(Modality="US", StudyDescription="HEAD")) == []
    assert labels(_header(ImageType=["ORIGINAL", "DERIVED"])) == ["http://b"]
    assert labels(_header(InstitutionName="StXMary")) == ["http://c"]
    assert labels(_header(Modality="CT")) == []  # StudyDescription absent: no match
    assert labels(_header(Modality="CT", StudyDescription="")) == []


def test_called_ae_title_routes_virtual_aes():
    table = _table(
        [
            {"filter": "CalledAETitle=RESEARCH", "dicomweb_destination": "http://research/"},
            {"filter": "CalledAETitle=CARDIO\\ECHO", "dimse_destination": "PACS"},
        ]
    )
    assert table.called_aets == {"RESEARCH", "CARDIO", "ECHO"}
    assert not table.needs_dataset  # AE titles alone decide: the header is never read
    assert [d.label for d in table.route("ANY", "ECHO", None)] == ["PACS@10.0.0.5:104"]
    assert table.route("ANY", "ADAPTER", None) == (None,)


@pytest.mark.parametrize(
    "entries, message",
    [
        ("not json", "rules.json: not JSON"),
        ({"filter": ""}, "expected a JSON list"),
        ([{"dicomweb_destination": "http://a/"}], "entry 0 (line 1): 'filter' is missing"),
        ([{"filter": "Modality"}], "entry 0 (line 1) (filter 'Modality'): term 'Modality' is not KEY=VALUE"),
        ([{"filter": "Modality=CT&&AETitle=X", "dicomweb_destination": "http://a/"}], "entry 0 (line 1) (filter 'Modality=CT&&AETitle=X'): empty term"),
        ([{"filter": "Modallity=CT", "dicomweb_destination": "http://a/"}], "unknown keyword or tag 'Modallity'"),
        ([{"filter": "Modality=CT"}], "entry 0 (line 1): no destination"),
        ([{"filter": "", "dimse_destination": "NOPE"}], "entry 0 (line 1): dimse_destination 'NOPE' is not in the AET dictionary"),
        ([{"filter": "", "name": "PACS", "host": "h", "port": 70000}], "entry 0 (line 1): 'port' must be a number"),
        ([{"filter": "", "dicomweb_destination": "ftp://a/"}], "entry 0 (line 1): dicomweb_destination must be an http(s) URL"),
        ([{"filter": "", "destinations": []}], "entry 0 (line 1): 'destinations' must be a non-empty list"),
        (
            [{"filter": "Modality=CT", "dicomweb_destination": "http://a/"}, {"filter": "Modality=CT", "dicomweb_destination": "http://b/"}],
            "entry 1 (line 1): same filter as entry 0",
        ),
    ],
)
def test_bad_rules_are_refused_naming_the_entry_and_the_reason(entries, message):
    text = entries if isinstance(entries, str) else json.dumps(entries)
    with pytest.raises(RoutingConfigError) as refused:
        parse_routing(text, source="rules.json", peers=PEERS)
    assert message in str(refused.value)


def test_bad_rules_stop_the_adapter_at_start(tmp_path: Path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"filter": "Modality=CT", "dicomweb_destination": "http://a/"}, {"filter": "Bogus=1", "dicomweb_destination": "http://b/"}], indent=2))
    started = subprocess.run(
        adapter_command() + ["local", "--dimse_aet", "ADAPTER", "--dimse_port", "0", "--spool_dir", str(tmp_path / "spool"),
                             "--destination_config_path", str(rules)],
        capture_output=True, text=True, timeout=60,
    )
    assert started.returncode == 2
    assert f"{rules}: entry 1 (line 6) (filter 'Bogus=1'): unknown keyword or tag 'Bogus'" in started.stderr
    neither = subprocess.run(
        adapter_command() + ["local", "--dimse_aet", "ADAPTER", "--spool_dir", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=60,
    )
    assert neither.returncode == 2 and "--dicomweb_address" in neither.stderr


def test_the_header_is_read_without_the_pixel_data(tmp_path: Path):
    big = write_large_instance(tmp_path / "big.dcm", 64 << 20, fill="zeros", seed=1)
    header = read_routing_header(big.path, [0x00080060, 0x00100010])
    assert header.Modality
    assert "PixelData" not in header
    small = make_ct_instance(tmp_path / "small.dcm", modality="MR")
    assert read_routing_header(small.path, [0x00080060]).Modality == "MR"

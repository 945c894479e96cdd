"""What the upload does with each answer a store can give, against a server that answers as the
Cloud Healthcare API documents (see support/healthcare_api_fake.py for the sources): 200 for a
new or identical instance, 409 for different content under an existing UID, 5xx/429 when
unavailable, 400 with a FailedSOPSequence for a permanent rejection."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.adapter import ADAPTER_AET, LocalAdapter, adapter_command
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.healthcare_api_fake import HealthcareApiFake
from support.http_proxy import ForwardingProxy
from support.sender import send_files


def _adapter(tmp_path: Path, fake: HealthcareApiFake, *extra: str) -> LocalAdapter:
    return LocalAdapter(tmp_path / "adapter", fake.url, extra_args=list(extra))


def _send(adapter: LocalAdapter, *paths: Path) -> None:
    results = send_files(paths, adapter.port, called_aet=ADAPTER_AET)
    assert [r.status for r in results] == [0] * len(paths), results


def test_transient_failures_are_retried_until_stored(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    instance = make_ct_instance(tmp_path / "a.dcm")
    healthcare_fake.fail_next(3, 503)
    healthcare_fake.fail_next(2, 429, retry_after="0")
    with _adapter(tmp_path, healthcare_fake) as adapter:
        _send(adapter, instance.path)
        adapter.wait_until_drained(timeout=60)
        assert not adapter.dead_letters()
    stored = healthcare_fake.get_instance(instance.sop_instance_uid)
    assert dataset_bytes_after_meta(stored.read_bytes()) == dataset_bytes_after_meta(instance.path)
    assert len(healthcare_fake.stow_requests()) == 6


def test_dropped_connections_and_timeouts_are_transient(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    instance = make_ct_instance(tmp_path / "a.dcm")
    healthcare_fake.drop_next(2)
    with _adapter(tmp_path, healthcare_fake) as adapter:
        _send(adapter, instance.path)
        adapter.wait_until_drained(timeout=60)
    assert healthcare_fake.instance_count() == 1


def test_permanent_rejection_dead_letters_with_original_bytes_then_redrive(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    good = make_ct_instance(tmp_path / "good.dcm")
    bad = make_ct_instance(tmp_path / "bad.dcm")
    healthcare_fake.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={bad.sop_instance_uid})
    with _adapter(tmp_path, healthcare_fake) as adapter:
        _send(adapter, good.path, bad.path)
        adapter.wait_until_drained(timeout=60)
        letters = adapter.dead_letters()
        assert [p.name.split("-")[1] for p in letters] == [bad.sop_instance_uid]
        # The original bytes are kept: the dead letter's data set is what the sender sent.
        assert dataset_bytes_after_meta(letters[0]) == dataset_bytes_after_meta(bad.path)
        record = json.loads(letters[0].with_suffix(".json").read_text())
        assert record["http_status"] == 400
        assert record["failure_reason"] == 0xA900
        assert "0xA900" in record["reason"]
        assert record["redrive"] == f"dicom-adapter redrive --spool_dir {adapter.spool_dir.resolve()} --sop_instance_uid {bad.sop_instance_uid}"
        adapter.wait_for_log("store rejected the instance; moved to dead letters")
        assert " ERROR " in adapter.logs()

        status = subprocess.run(
            adapter_command() + ["status", "--spool_dir", str(adapter.spool_dir)], capture_output=True, text=True, check=True
        ).stdout
        assert "dead letters:  1" in status

        healthcare_fake.clear_faults()  # the cause is fixed
        redrive = subprocess.run(
            adapter_command() + ["redrive", "--spool_dir", str(adapter.spool_dir), "--sop_instance_uid", bad.sop_instance_uid],
            capture_output=True, text=True,
        )
        assert redrive.returncode == 0, redrive.stderr
        assert "redrove 1" in redrive.stdout
        adapter.wait_until_drained(timeout=60)
        assert not adapter.dead_letters()
    assert healthcare_fake.instance_count() == 2
    assert dataset_bytes_after_meta(healthcare_fake.get_instance(bad.sop_instance_uid).read_bytes()) == dataset_bytes_after_meta(bad.path)


def test_redrive_of_an_unknown_uid_fails(tmp_path: Path):
    result = subprocess.run(
        adapter_command() + ["redrive", "--spool_dir", str(tmp_path / "spool"), "--sop_instance_uid", "1.2.3"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "redrove 0" in result.stdout


def test_identical_resend_is_a_success(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    instance = make_ct_instance(tmp_path / "a.dcm")
    with _adapter(tmp_path, healthcare_fake) as adapter:
        _send(adapter, instance.path)
        adapter.wait_until_drained()
        _send(adapter, instance.path)  # same data set; the file meta differs only by our header
        adapter.wait_until_drained()
        assert not adapter.dead_letters()
    assert healthcare_fake.instance_count() == 1


def _conflicting_pair(tmp_path: Path):
    first = make_ct_instance(tmp_path / "first.dcm", seed=1)
    second = make_ct_instance(
        tmp_path / "second.dcm",
        seed=2,
        study_instance_uid=first.study_instance_uid,
        series_instance_uid=first.series_instance_uid,
        sop_instance_uid=first.sop_instance_uid,
    )
    assert dataset_bytes_after_meta(first.path) != dataset_bytes_after_meta(second.path)
    return first, second


def test_a_different_instance_under_an_existing_uid_is_a_reported_conflict(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    first, second = _conflicting_pair(tmp_path)
    with _adapter(tmp_path, healthcare_fake) as adapter:
        _send(adapter, first.path)
        adapter.wait_until_drained()
        _send(adapter, second.path)
        adapter.wait_until_drained()
        letters = adapter.dead_letters()
        assert len(letters) == 1
        record = json.loads(letters[0].with_suffix(".json").read_text())
        assert record["http_status"] == 409
        assert "conflict" in record["reason"]
        assert dataset_bytes_after_meta(letters[0]) == dataset_bytes_after_meta(second.path)
    kept = healthcare_fake.get_instance(first.sop_instance_uid)
    assert dataset_bytes_after_meta(kept.read_bytes()) == dataset_bytes_after_meta(first.path)


def test_stow_overwrite_replaces_the_stored_instance(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    first, second = _conflicting_pair(tmp_path)
    with _adapter(tmp_path, healthcare_fake, "--stow_overwrite") as adapter:
        _send(adapter, first.path)
        adapter.wait_until_drained()
        _send(adapter, second.path)
        adapter.wait_until_drained()
        assert not adapter.dead_letters()
        adapter.wait_for_log("replaced a different stored instance")
    kept = healthcare_fake.get_instance(first.sop_instance_uid)
    assert dataset_bytes_after_meta(kept.read_bytes()) == dataset_bytes_after_meta(second.path)
    methods = [r.method for r in healthcare_fake.request_log]
    assert "DELETE" in methods


@pytest.mark.parametrize("codes, expect_dead", [("408,429,500,502,503,504", True), ("403,5xx", False)])
def test_http_error_codes_to_retry_decides_what_is_transient(tmp_path: Path, healthcare_fake: HealthcareApiFake, codes, expect_dead):
    instance = make_ct_instance(tmp_path / "a.dcm")
    healthcare_fake.fail_next(2, 403)
    with _adapter(tmp_path, healthcare_fake, "--http_error_codes_to_retry", codes) as adapter:
        _send(adapter, instance.path)
        adapter.wait_until_drained(timeout=60)
        assert bool(adapter.dead_letters()) == expect_dead
    assert healthcare_fake.instance_count() == (0 if expect_dead else 1)


@pytest.mark.parametrize("bypassed", [False, True], ids=["through the proxy", "NO_PROXY names the store"])
def test_uploads_follow_the_proxy_settings_of_the_environment(tmp_path: Path, healthcare_fake: HealthcareApiFake, bypassed: bool):
    """The environment's HTTP_PROXY and NO_PROXY are read once, when the store's session is
    made (not on every request), and still decide whether uploads go through the proxy."""
    instance = make_ct_instance(tmp_path / "a.dcm")
    with ForwardingProxy() as proxy:
        no_proxy = "127.0.0.1" if bypassed else ""
        env = {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": no_proxy, "no_proxy": no_proxy}
        with LocalAdapter(tmp_path / "adapter", healthcare_fake.url, extra_env=env) as adapter:
            _send(adapter, instance.path)
            adapter.wait_until_drained()
        carried = [line for line in proxy.carried if line.startswith(f"POST {healthcare_fake.url}/studies")]
    assert healthcare_fake.instance_count() == 1
    assert len(carried) == (0 if bypassed else 1), proxy.carried

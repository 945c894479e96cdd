"""How a STOW-RS answer is read, for the answers real stores give (no network needed)."""

from __future__ import annotations

import json

import pytest
import requests
from dicom_adapter.config import DEFAULT_RETRY_STATUS_CODES
from dicom_adapter.dicomweb import (
    DicomWebAddress,
    DicomWebClient,
    StowAnswer,
    StowVerdict,
    _json_body,
)

UID = "1.2.3.4"


def _response(status: int, body: object | None, content_type: str | None = "application/dicom+json") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 409: "Conflict", 503: "Service Unavailable"}.get(status, "")
    response._content = b"" if body is None else json.dumps(body).encode()
    if content_type:
        response.headers["Content-Type"] = content_type
    return response


def _referenced(uid: str, warning: int | None = None) -> dict:
    item = {"00081155": {"vr": "UI", "Value": [uid]}}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return {"00081199": {"vr": "SQ", "Value": [item]}}


def _failed(uid: str, reason: int) -> dict:
    return {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}]}}


def _judge(response: requests.Response, uid: str = UID):
    client = DicomWebClient(DicomWebAddress("http://store/dicom-web"), requests.Session(), retry_status_codes=DEFAULT_RETRY_STATUS_CODES)
    return client._judge_stow(StowAnswer(response, _json_body(response)), uid)


def test_one_answer_for_several_instances_is_judged_per_instance():
    """A batched STOW-RS (PS3.18 10.5.3): 202 with some stored and some failed."""
    body = {
        "00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.1"]}},
            {"00081155": {"vr": "UI", "Value": ["1.2"]}, "00081196": {"vr": "US", "Value": [0xB000]}},
        ]},
        "00081198": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.3"]}, "00081197": {"vr": "US", "Value": [0xA700]}},
            {"00081155": {"vr": "UI", "Value": ["1.4"]}, "00081197": {"vr": "US", "Value": [0xC000]}},
        ]},
    }
    response = _response(202, body)
    verdicts = {uid: _judge(response, uid) for uid in ("1.1", "1.2", "1.3", "1.4", "1.5")}
    assert verdicts["1.1"].verdict is StowVerdict.STORED
    assert verdicts["1.2"].verdict is StowVerdict.STORED and verdicts["1.2"].warning_reason == 0xB000
    assert verdicts["1.3"].verdict is StowVerdict.TRANSIENT  # out of resources: later
    assert verdicts["1.4"].verdict is StowVerdict.REJECTED and verdicts["1.4"].failure_reason == 0xC000
    assert verdicts["1.5"].verdict is StowVerdict.REJECTED  # sent but listed nowhere
    assert "does not list the instance" in verdicts["1.5"].reason


def test_a_failed_item_that_names_no_instance_applies_to_every_instance_it_precedes():
    """The first item naming the instance, or naming none, decides (as a store that reports one
    failure for the whole request without UIDs)."""
    body = {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": ["1.1"]}, "00081197": {"vr": "US", "Value": [0xA700]}},
        {"00081197": {"vr": "US", "Value": [0x0110]}},
        {"00081155": {"vr": "UI", "Value": ["1.2"]}, "00081197": {"vr": "US", "Value": [0xC000]}},
    ]}}
    answer = StowAnswer(_response(409, body), body)
    assert answer.failures.reason_for("1.1") == 0xA700
    assert answer.failures.reason_for("1.2") == 0x0110  # the unnamed item comes first
    assert answer.failures.reason_for("1.3") == 0x0110
    assert answer.references.reason_for("1.1") is None and answer.references.uids is None


def test_odd_values_in_an_answer_name_no_instance_and_do_not_crash():
    """A UID that is a number names no instance we sent; an absurd reason code is a failure."""
    body = {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": [1.1]}, "00081197": {"vr": "US", "Value": [0x0110]}},
        {"00081155": {"vr": "UI", "Value": ["2.2"]}, "00081197": {"vr": "US", "Value": [float("inf")]}},
    ]}}
    answer = StowAnswer(_response(400, body), body)
    assert answer.failures.reason_for("1.1") is None
    assert answer.failures.reason_for("2.2") == 0xC000


def test_stored_only_when_the_store_lists_the_instance():
    assert _judge(_response(200, _referenced(UID))).verdict is StowVerdict.STORED
    other = _judge(_response(200, _referenced("9.9.9")))
    assert other.verdict is StowVerdict.REJECTED
    assert "does not list the instance" in other.reason
    assert _judge(_response(200, None, None)).verdict is StowVerdict.STORED  # a store that sends no body


def test_orthanc_empty_failed_sequence_is_no_failure():
    body = {**_referenced(UID), "00081198": {"vr": "SQ"}}
    assert _judge(_response(200, body)).verdict is StowVerdict.STORED


def test_warning_reason_is_kept():
    outcome = _judge(_response(202, _referenced(UID, warning=0xB000)))
    assert outcome.verdict is StowVerdict.STORED
    assert outcome.warning_reason == 0xB000


def test_healthcare_api_conflict_is_already_exists_but_other_409s_are_rejections():
    assert _judge(_response(409, _failed(UID, 0x0110))).verdict is StowVerdict.ALREADY_EXISTS
    assert _judge(_response(409, None, None)).verdict is StowVerdict.ALREADY_EXISTS
    assert _judge(_response(409, _failed(UID, 45070))).verdict is StowVerdict.ALREADY_EXISTS
    unsupported = _judge(_response(409, _failed(UID, 0x0122)))
    assert unsupported.verdict is StowVerdict.REJECTED
    assert "0x0122" in unsupported.reason


def test_orthanc_rejection_without_content_type_keeps_its_failure_reason():
    outcome = _judge(_response(400, _failed(UID, 49152), content_type=None))
    assert outcome.verdict is StowVerdict.REJECTED
    assert outcome.failure_reason == 0xC000


def test_google_error_message_stays_out_of_the_loggable_reason():
    body = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad value 'DOE^JANE' in PatientName"}}
    outcome = _judge(_response(400, body, "application/json"))
    assert outcome.verdict is StowVerdict.REJECTED
    assert "INVALID_ARGUMENT" in outcome.reason and "DOE" not in outcome.reason
    assert "DOE^JANE" in outcome.detail  # kept for the dead-letter record only


@pytest.mark.parametrize("status, body", [(503, None), (429, None), (200, _failed(UID, 0xA700))])
def test_transient_answers(status, body):
    assert _judge(_response(status, body)).verdict is StowVerdict.TRANSIENT


def test_hex_string_failure_reason():
    body = {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [UID]}, "00081197": {"vr": "US", "Value": ["A900"]}}]}}
    assert _judge(_response(400, body)).failure_reason == 0xA900


def test_uids_are_quoted_in_urls():
    address = DicomWebAddress("http://store/dicom-web/")
    assert address.instance_url("1.2", "3.4", "5.6#x") == "http://store/dicom-web/studies/1.2/series/3.4/instances/5.6%23x"

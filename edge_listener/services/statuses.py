"""Small helpers for DIMSE responses shared by the services."""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


def status(code: int, comment: str = "") -> Dataset:
    """A response status with an Error Comment that tells the sender what went wrong.

    Error Comment is LO: at most 64 characters, so longer explanations are cut (the full
    text goes to our log).
    """
    response = Dataset()
    response.Status = code
    if comment:
        response.ErrorComment = error_comment(comment)
    return response


def error_comment(text: str) -> str:
    """An Error Comment (LO): one line of at most 64 characters, cut with '~'."""
    text = " ".join(text.split())
    return text if len(text) <= 64 else text[:63] + "~"

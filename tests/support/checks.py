"""Checks that several test modules make: byte-exactness in the store, corpus rounds."""

from __future__ import annotations

from pathlib import Path

import pydicom

from .dicom_files import (
    CorpusFile,
    dataset_bytes_after_meta,
    pydicom_corpus,
    unique_by_sop_instance_uid,
)
from .orthanc import Orthanc


def assert_byte_exact(store: Orthanc, sent: Path, study: str, series: str, sop: str, calling_aet: str) -> None:
    """The stored data set is the sent one byte for byte; the file meta names the syntax and sender."""
    stored = store.retrieve_instance_part10(study, series, sop)
    assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(sent), f"{sent.name}: data set differs"
    meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored), stop_before_pixels=True).file_meta
    sent_syntax = pydicom.filereader.read_file_meta_info(sent).TransferSyntaxUID
    assert meta.TransferSyntaxUID == sent_syntax
    assert meta.SourceApplicationEntityTitle == calling_aet


def corpus_rounds(extra: list) -> list[list[CorpusFile]]:
    """The corpus split so that no round holds two files with the same SOP Instance UID
    (pydicom ships one image in several transfer syntaxes under one UID)."""
    remaining = [f for files in pydicom_corpus().values() for f in files] + extra
    rounds = []
    while remaining:
        this_round = unique_by_sop_instance_uid(remaining)
        rounds.append(this_round)
        taken = {id(f) for f in this_round}
        remaining = [f for f in remaining if id(f) not in taken]
    return rounds

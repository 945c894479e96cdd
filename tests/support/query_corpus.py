"""A query/retrieve corpus: 12 patients, their studies and series, varied names (non-ASCII in
declared character sets: ISO_IR 100, 126 and 192), dates, modalities and accession numbers;
small instances."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from .dicom_files import GeneratedInstance, make_ct_instance

# (name, ID, birth date, sex, Specific Character Set)
PATIENTS = [
    ("Smith^John", "PID001", "19700101", "M", "ISO_IR 100"),
    ("Smith^Jane", "PID002", "19750315", "F", "ISO_IR 100"),
    ("Smyth^Joe", "PID003", "19801224", "M", "ISO_IR 100"),
    ("Müller^Jürgen", "PID004", "19650704", "M", "ISO_IR 100"),
    ("Øster^Åse", "PID005", "19900202", "F", "ISO_IR 100"),
    ("Doe^Jane", "PID006", "19551111", "F", "ISO_IR 100"),
    ("Doe^John", "PID007", "19600606", "M", "ISO_IR 100"),
    ("Brown^Charlie", "PID008", "20010909", "M", "ISO_IR 100"),
    ("García^María", "PID009", "19881010", "F", "ISO_IR 100"),
    ("Παπαδόπουλος^Νίκος", "PID010", "19770707", "M", "ISO_IR 126"),
    ("Lee^Ann", "PID011", "19991231", "F", "ISO_IR 100"),
    ("Nguyễn^Văn", "PID012", "19830303", "O", "ISO_IR 192"),  # needs UTF-8
]
MODALITY_SETS = [["CT"], ["MR"], ["CT", "MR"], ["US", "CT"]]


@dataclass(frozen=True)
class CorpusStudy:
    patient_id: str
    study_instance_uid: str
    modalities: tuple[str, ...]
    instances: tuple[GeneratedInstance, ...]


def make_query_corpus(directory: str | os.PathLike[str]) -> list[CorpusStudy]:
    """Write the corpus under `directory`; 12 patients, 18 studies, 27 series, 45 instances."""
    directory = Path(directory)
    studies = []
    for i, (name, patient_id, birth_date, sex, charset) in enumerate(PATIENTS):
        for j in range(i % 2 + 1):
            study_uid = generate_uid()
            date = f"{2022 + (i + j) % 3}{(i * 3 + j) % 12 + 1:02d}{(i + j * 7) % 28 + 1:02d}"
            modalities = MODALITY_SETS[(i + j) % 4]
            instances = []
            for k, modality in enumerate(modalities):
                series_uid = generate_uid()
                for n in range(2 if k == 0 else 1):
                    instances.append(
                        make_ct_instance(
                            directory / f"{patient_id}-{j}-{k}-{n}.dcm",
                            patient_name=name,
                            patient_id=patient_id,
                            patient_birth_date=birth_date,
                            accession_number=f"ACC{i:03d}{j}",
                            study_instance_uid=study_uid,
                            series_instance_uid=series_uid,
                            instance_number=n + 1,
                            modality=modality,
                            size_kb=2,
                            seed=i * 100 + j * 10 + k + n,
                            extra={
                                "SpecificCharacterSet": charset,
                                "PatientSex": sex,
                                "StudyDate": date,
                                "SeriesDate": date,
                                "StudyDescription": f"Study {j + 1} of {patient_id}",
                                "SeriesDescription": f"{modality} series {k + 1}",
                                "SeriesNumber": k + 1,
                                "StudyID": f"S{j + 1}",
                            },
                        )
                    )
            studies.append(CorpusStudy(patient_id, study_uid, tuple(modalities), tuple(instances)))
    return studies

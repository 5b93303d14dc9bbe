"""The training split: by patient, fixed seed, every part non-empty."""

from __future__ import annotations

import pytest

from dicomnode.models.api import StudyViews
from dicomnode.models.training import LabelledStudy, patient_key, split_by_patient


def studies(patients: int, per_patient: int = 2) -> list[LabelledStudy]:
    return [
        LabelledStudy(patient_key(f"P{p}"), StudyViews(f"1.{p}.{s}", {}), ())
        for p in range(patients)
        for s in range(per_patient)
    ]


def test_split_keeps_each_patient_in_one_part() -> None:
    split = split_by_patient(studies(20))
    parts = [{s.patient_key for s in part} for part in (split.train, split.validation, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(split.counts().values()) == 40
    assert split.counts() == {"train": 28, "validation": 6, "test": 6}


def test_split_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    def test_uids(seed: int) -> list[str]:
        return [s.study.study_instance_uid for s in split_by_patient(studies(20), seed=seed).test]

    assert test_uids(0) == test_uids(0)
    assert test_uids(0) != test_uids(1)


def test_split_refuses_fewer_than_three_patients() -> None:
    with pytest.raises(ValueError, match="at least 3 patients"):
        split_by_patient(studies(2))


def test_patient_key_does_not_contain_the_patient_id() -> None:
    assert "SYNTH0001" not in patient_key("SYNTH0001")
    assert patient_key("SYNTH0001") == patient_key("SYNTH0001")

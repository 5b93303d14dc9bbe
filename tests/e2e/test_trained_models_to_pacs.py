"""The built-in models end to end through Orthanc, with their shipped weights.

Orthanc (the PACS) sends a synthetic study to the node over DICOM; the node runs the
model and sends its results back; what Orthanc then holds is read back and checked
against the ground truth: the CT lesion SEG by Dice, the mammography SR by its finding.
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.synth.ct import build_ct_series, ct_phantom
from dicomnode.synth.ct.anatomical import (
    AnatomicalCtOptions,
    build_anatomical_ct_series,
    draw_anatomical_ct,
    render_anatomical_ct,
)
from dicomnode.synth.mg import build_mg_study
from dicomnode.volumes import volume_from_datasets
from tests.factories import encode
from tests.nodeproc import NodeProcess, free_port
from tests.orthanc import OrthancServer, require_orthanc
from tests.pacs import node_settings, series_files, wait_for_series

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

# ct-lesion-seg's shipped accuracy floor (its model card); Dice below it is a failure.
LESION_DICE_FLOOR = 0.85
ANATOMICAL_DICE_FLOOR = 0.5


def start(
    tmp_path: Path, model: str, match: str, options: str = ""
) -> tuple[OrthancServer, NodeProcess]:
    require_orthanc()
    node_port = free_port()
    orthanc = OrthancServer(
        tmp_path / "orthanc", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}
    )
    settings = node_settings(orthanc.dicom_port, model).replace('Modality = "CT"', match)
    if options:
        settings += f"options = {{ {options} }}\n"
    node = NodeProcess(tmp_path / "n", extra_toml=settings, port=node_port, study_quiet_seconds=0.5)
    return orthanc, node


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def test_ct_lesions_come_back_from_orthanc_as_a_seg_matching_the_truth(tmp_path: Path) -> None:
    orthanc, node = start(tmp_path, "ct-lesion-seg", 'Modality = "CT"')
    size = {"slices": 48, "rows": 256, "columns": 256, "pixel_spacing": 1.4}
    datasets = list(build_ct_series(seed=424242, slice_thickness=2.0, **size))
    with orthanc, node:
        study = ""
        for ds in datasets:
            study = orthanc.upload(encode(ds))
        started = time.monotonic()
        orthanc.store_to("node", [study])
        wait_for_series(orthanc, study, 3, node)  # CT, SEG, SR
        files = series_files(orthanc, study)
    phantom = ct_phantom(424242, size["slices"], 256, 256, 2.0, 1.4)
    found = _lesion_pixels(files["SEG"][0], datasets)
    assert dice(found, phantom.lesion_labels() > 0) >= LESION_DICE_FLOOR
    sr = dcmread(BytesIO(files["SR"][0]))
    assert sr.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert "Lesion" in str(sr.ContentSequence)
    print(f"CT round trip through Orthanc: {time.monotonic() - started:.1f} s")


def _lesion_pixels(seg_file: bytes, datasets: list[Dataset]) -> npt.NDArray[np.bool_]:
    """The SEG's lesion segment on the source volume's slices (slices, rows, columns)."""
    seg = hd.seg.Segmentation.from_dataset(dcmread(BytesIO(seg_file)))
    volume = volume_from_datasets(datasets)
    lesion = [
        int(item.SegmentNumber)
        for item in seg.SegmentSequence
        if item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    ]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids),
        segment_numbers=lesion,
        assert_missing_frames_are_empty=True,
    )
    return np.asarray(pixels[..., 0] > 0)


#: A study of the anatomical generator the ``anatomical`` weights never saw (training
#: used seeds from 0, validation and test from 900000), with three lung lesions of 10 mm
#: and more. A regression guard, not a benchmark: the first of seeds 424000-424009 in
#: which these weights find every lesion of 10 mm or more (lesion Dice 0.895 in
#: process); the model card has the figures over many studies.
ANATOMICAL_SEED = 424_003


def test_an_anatomical_ct_comes_back_from_orthanc_with_its_lesions_found(tmp_path: Path) -> None:
    ct = draw_anatomical_ct(ANATOMICAL_SEED, AnatomicalCtOptions(lesion_free_fraction=0.0))
    rendered = render_anatomical_ct(ct)
    datasets = build_anatomical_ct_series(ct, rendered)
    truth = rendered.lesion_mask()
    orthanc, node = start(tmp_path, "ct-lesion-seg", 'Modality = "CT"', 'weights = "anatomical"')
    with orthanc, node:
        study = ""
        for ds in datasets:
            study = orthanc.upload(encode(ds))
        orthanc.store_to("node", [study])
        wait_for_series(orthanc, study, 3, node)  # CT, SEG, SR
        files = series_files(orthanc, study)
    found = _lesion_pixels(files["SEG"][0], datasets)
    # Well under the model card's figure on this generator, so it does not flake.
    assert dice(found, truth) >= ANATOMICAL_DICE_FLOOR
    sr = dcmread(BytesIO(files["SR"][0]))
    assert "Lesion" in str(sr.ContentSequence)


def test_mammogram_comes_back_from_orthanc_with_an_sr_naming_the_suspicious_breast(
    tmp_path: Path,
) -> None:
    orthanc, node = start(tmp_path, "mg-4view", 'Modality = "MG"')
    mg = build_mg_study(515151, rows=256, columns=208, finding="suspicious")
    with orthanc, node:
        study = ""
        for ds in mg.images.values():
            study = orthanc.upload(encode(ds))
        orthanc.store_to("node", [study])
        wait_for_series(orthanc, study, 5, node)  # four MG series and the SR
        files = series_files(orthanc, study)
    assert "SEG" not in files  # a classifier: SR only
    sr = dcmread(BytesIO(files["SR"][0]))
    assert sr.StudyInstanceUID == mg.study_instance_uid
    text = str(sr.ContentSequence)
    assert "Certainty of Finding" in text
    referenced = {str(ds.SOPInstanceUID) for ds in mg.images.values()}
    assert all(uid in str(sr) for uid in referenced), "every view's image is referenced"

"""Results back to the PACS: Orthanc sends a study, the node answers with SEG and SR.

The model here is a model file (TorchScript + manifest) that labels voxels above a
Hounsfield value, so the SEG that comes back can be checked voxel for voxel; the
trained models go through the same path in ``test_trained_models_to_pacs.py``.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicomnode.index.schema import DeliveryRecord, DeliveryState, JobRecord, JobState
from dicomnode.synth.ct import build_ct_series
from dicomnode.volumes import volume_from_datasets
from tests.factories import encode
from tests.model_files import write_threshold_segmenter
from tests.nodeproc import NodeProcess, free_port
from tests.orthanc import OrthancServer, require_orthanc
from tests.pacs import node_settings, series_files, wait_for_series

pytestmark = [pytest.mark.orthanc]


def test_orthanc_study_comes_back_with_a_seg_and_sr_in_the_same_study(tmp_path: Path) -> None:
    require_orthanc()
    node_port = free_port()
    orthanc = OrthancServer(
        tmp_path / "orthanc", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}
    )
    settings = node_settings(orthanc.dicom_port, "bone-seg", '["seg", "sr", "sc"]')
    node = NodeProcess(tmp_path / "n", extra_toml=settings, port=node_port, study_quiet_seconds=0.5)
    write_threshold_segmenter(node.data_dir / "models", "bone-seg", above_hu=300.0)
    datasets = list(build_ct_series(slices=12, rows=48, columns=48, seed=3, pixel_spacing=7.0))
    with orthanc, node:
        study = ""
        for ds in datasets:
            study = orthanc.upload(encode(ds))
        orthanc.store_to("node", [study])
        wait_for_series(orthanc, study, 4, node)  # CT, SEG, SR, SC
        files = series_files(orthanc, study)
        with node.session() as session:
            job = session.scalars(select(JobRecord)).one()
            deliveries = list(session.scalars(select(DeliveryRecord)))

    assert job.state is JobState.DONE, job.error
    result = json.loads(job.result or "{}")
    assert all(o["valid"] for o in result["outputs"]), result["outputs"]
    assert {d.state for d in deliveries} == {DeliveryState.SENT}
    assert sorted(files) == ["CT", "OT", "SEG", "SR"]  # OT: the Secondary Capture overlay

    # The SEG decodes to the voxels above 300 HU, slice by slice of the source.
    seg = hd.seg.Segmentation.from_dataset(dcmread(BytesIO(files["SEG"][0])))
    volume = volume_from_datasets(datasets)
    uids = list(volume.sop_instance_uids)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels[..., 0] > 0, volume.array > 300.0)
    study_uid = str(datasets[0].StudyInstanceUID)
    for modality in ("SEG", "SR"):
        ds = dcmread(BytesIO(files[modality][0]))
        assert ds.StudyInstanceUID == study_uid
        assert ds.PatientID == datasets[0].PatientID
        assert ds.Manufacturer == "dicomnode"
    # The SR references the SEG it came with.
    sr = dcmread(BytesIO(files["SR"][0]))
    assert seg.SOPInstanceUID in str(sr)

"""The node's outputs open in OHIF Viewer v3, served offline, over Orthanc's DICOMweb.

Orthanc (with its DICOMweb plugin) is the PACS. It sends a small synthetic CT and a
four-view synthetic mammogram to the node (``dicomnode run``: ``ct-lesion-seg`` for
CT, ``mg-4view`` for MG, SEG, SR and SC sent back), and holds what comes back. OHIF's
built ``dist/`` (npm ``@ohif/app``, installed by ``python -m tests.ohif install``) is
served from 127.0.0.1 with Orthanc's DICOMweb on the same origin, and Chromium
(headless) opens each study at ``/viewer?StudyInstanceUIDs=...``:

- CT: the SEG's segments are listed and drawn in their colours, every SR measurement
  is drawn on its image with its values, the SC overlay is shown;
- MG: every SR measurement (the findings' regions and the class probabilities) is
  drawn on its image, and a Secondary Capture of a mammogram (the node's SC builder
  on the phantom's truth masks) is shown;

and nothing went wrong: no error boundary, notification or uncaught error in the
browser console. A SEG of a projection image (the ``demo-data`` mammography truth) is
an expected failure: OHIF 3.13 loads a SEG only with plane geometry (see
``test_a_mammography_seg_is_drawn``). Screenshots: ``test-artefacts/screenshots/ohif-*.png``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.outputs.sc import build_overlay_capture
from dicomnode.synth.ct import build_ct_series
from dicomnode.synth.mg import MG_VIEWS, build_mg_study
from dicomnode.synth.truth import build_truth_segmentation
from dicomnode.volumes import volume_from_datasets
from tests.factories import encode
from tests.nodeproc import NodeProcess, free_port
from tests.ohif import OhifServer, require_ohif
from tests.ohif_page import ViewerPage, chromium, require_chromium
from tests.orthanc import OrthancServer, require_dicomweb
from tests.pacs import node_settings, series_files, wait_for_series

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.orthanc]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "screenshots"
MG_PIPELINE = (
    '[[pipelines]]\nname = "mg"\nmatch = { Modality = "MG" }\nmodel = "mg-4view"\n'
    'send_to = ["pacs"]\n'
)
#: A pixel is coloured when its channels differ by more than this (grey has none).
COLOURED = 60
#: Measurement Group, Tracking Unique Identifier (PS3.16 TID 1501).
_GROUP, _TRACKING_UID = "125007", "112040"


@dataclass(frozen=True)
class Studies:
    """What Orthanc holds once the node has answered."""

    ct: str
    mg: str
    ct_files: dict[str, list[bytes]]
    mg_files: dict[str, list[bytes]]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancServer, Studies]]:
    """Orthanc with a CT and an MG study and the node's results for both."""
    require_ohif()
    require_dicomweb()
    require_chromium()
    folder = tmp_path_factory.mktemp("ohif")
    node_port = free_port()
    orthanc = OrthancServer(
        folder / "orthanc", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)},
        dicomweb=True,
    )  # fmt: skip
    settings = node_settings(orthanc.dicom_port, "ct-lesion-seg", '["seg", "sr", "sc"]')
    node = NodeProcess(
        folder / "node", extra_toml=settings + MG_PIPELINE, port=node_port, study_quiet_seconds=0.5
    )
    ct = list(
        build_ct_series(
            seed=424242, slices=32, rows=192, columns=192, pixel_spacing=1.8, slice_thickness=2.5
        )
    )
    mg = build_mg_study(515151, rows=256, columns=208, finding="suspicious")
    with orthanc:
        with node:
            ids = {}
            for kind, datasets in (("ct", ct), ("mg", list(mg.images.values()))):
                for ds in datasets:
                    ids[kind] = orthanc.upload(encode(ds))
                orthanc.store_to("node", [ids[kind]])
            wait_for_series(orthanc, ids["ct"], 4, node)  # CT, SEG, SR, SC
            wait_for_series(orthanc, ids["mg"], 5, node)  # four MG series and the SR
        for ds in _mg_extras(mg):
            orthanc.upload(encode(ds))
        yield (
            orthanc,
            Studies(
                str(ct[0].StudyInstanceUID),
                mg.study_instance_uid,
                series_files(orthanc, ids["ct"]),
                series_files(orthanc, ids["mg"]),
            ),
        )


def _mg_extras(mg: Any) -> list[Dataset]:
    """The SC the node's builder makes of a mammogram, and demo-data's truth SEG."""
    extras: list[Dataset] = []
    for view in MG_VIEWS:
        masks = mg.masks[view]
        if not masks.any():
            continue
        image = mg.images[view]
        volume = volume_from_datasets([image])
        extras += build_overlay_capture(
            [image], volume, masks, mg.truth_labels, model_name="mg-truth", model_version="1",
            job_key=f"ohif-test/{view}", series_number=9300 + MG_VIEWS.index(view) + 1,
        )  # fmt: skip
        keep = [i for i in range(len(mg.truth_labels)) if masks[i].any()]
        extras.append(
            build_truth_segmentation([image], masks[keep], [mg.truth_labels[i] for i in keep])
        )
    return extras


@pytest.fixture(scope="module")
def viewer(studies: tuple[OrthancServer, Studies]) -> Iterator[ViewerPage]:
    orthanc, _ = studies
    with OhifServer(orthanc.http_port) as server, chromium() as driver:
        yield ViewerPage(driver, server, SCREENSHOTS)


def tracked_regions(sr: Dataset) -> dict[str, str]:
    """Tracking UID -> identifier of the SR's measurement groups with a SCOORD (drawn)."""
    found: dict[str, str] = {}
    for container in sr.ContentSequence:
        for group in container.get("ContentSequence", []):
            if group.ConceptNameCodeSequence[0].CodeValue != _GROUP:
                continue
            items = list(group.ContentSequence)
            uid = [i.UID for i in items if i.ConceptNameCodeSequence[0].CodeValue == _TRACKING_UID]
            text = [i.TextValue for i in items if i.ValueType == "TEXT" and "TextValue" in i]
            if uid and _has_scoord(items):
                found[str(uid[0])] = str(text[0]) if text else ""
    return found


def _has_scoord(items: list[Dataset]) -> bool:
    return any(
        item.ValueType == "SCOORD" or _has_scoord(list(item.get("ContentSequence", [])))
        for item in items
    )


def coloured(pixels: npt.NDArray[np.int16]) -> int:
    """How many pixels are not grey."""
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > COLOURED).sum())


def assert_no_error(page: ViewerPage, name: str) -> None:
    page.screenshot(name)
    errors = page.errors()
    assert not errors, "OHIF reported errors:\n" + "\n".join(errors)


def collect_measurements(
    page: ViewerPage, expected: set[str], timeout: float = 60
) -> dict[str, str]:
    """Every annotation drawn while stepping through the SR's measurements (one series)."""
    drawn = dict(page.wait_for_annotations())
    deadline = time.monotonic() + timeout
    while not expected <= drawn.keys() and time.monotonic() < deadline:
        page.next_measurement()
        time.sleep(1)
        page.redraw()
        drawn |= page.annotations()
    return drawn


def test_the_ct_seg_lists_and_draws_its_segments(
    studies: tuple[OrthancServer, Studies], viewer: ViewerPage
) -> None:
    _, found = studies
    viewer.open_study(found.ct)
    before = coloured(viewer.viewport_pixels())
    viewer.open_series("ct-lesion-seg segmentation")
    viewer.answer("Do you want to open this Segmentation?")
    viewer.open_panel("panelSegmentation-btn")
    deadline = time.monotonic() + 60
    while "lesion" not in viewer.text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "body" in viewer.text() and "lesion" in viewer.text(), "segments not listed"
    # Clicking a segment jumps to its slice; under load the jump and the slice's
    # rendering can take longer than one look, so look again (clicking again) a while.
    deadline = time.monotonic() + 45
    while True:
        viewer.click_text("lesion")
        time.sleep(2)
        viewer.redraw()
        pixels = viewer.viewport_pixels()
        red = (pixels[..., 0] - pixels[..., 1:].max(axis=2)) > 40
        green = (pixels[..., 1] - np.maximum(pixels[..., 0], pixels[..., 2])) > 40
        if (red.sum() > 500 and green.sum() > 20) or time.monotonic() > deadline:
            break
    assert_no_error(viewer, "ct-seg")
    assert coloured(pixels) > before + 2000, "the SEG drew no colour over the CT"
    assert red.sum() > 500 and green.sum() > 20, "both segments (body red, lesion green) drawn"


def test_the_ct_sr_draws_every_measurement_on_its_image(
    studies: tuple[OrthancServer, Studies], viewer: ViewerPage
) -> None:
    _, found = studies
    sr = dcmread(BytesIO(found.ct_files["SR"][0]))
    expected = set(tracked_regions(sr))
    assert expected, "the CT report has regions"
    viewer.open_study(found.ct)
    viewer.open_series("ct-lesion-seg report")
    drawn = collect_measurements(viewer, expected)
    assert_no_error(viewer, "ct-sr")
    assert expected <= drawn.keys(), f"not drawn: {expected - drawn.keys()}"
    assert all("Certainty of Finding" in drawn[uid] for uid in expected)
    assert any("Volume" in drawn[uid] for uid in expected), "measurements shown with regions"


def test_the_ct_overlay_capture_is_shown(
    studies: tuple[OrthancServer, Studies], viewer: ViewerPage
) -> None:
    _, found = studies
    viewer.open_study(found.ct)
    viewer.open_series("ct-lesion-seg overlay")
    time.sleep(3)
    viewer.redraw()
    pixels = viewer.viewport_pixels()
    assert_no_error(viewer, "ct-sc")
    assert coloured(pixels) > 2000, "the banner and outlines are not shown"


def test_the_mammography_sr_draws_its_regions_and_probabilities_without_an_error(
    studies: tuple[OrthancServer, Studies], viewer: ViewerPage
) -> None:
    """The issue's failure: OHIF's SR loader threw on a measurement group without a
    SCOORD (the class probabilities: TypeError reading ReferencedSOPSequence of
    coords[0]) and its error boundary showed "Something went wrong".

    OHIF shows the image of the first measurement with every measurement on it: here a
    finding's region and the class probabilities of that breast. Stepping to a
    measurement on another series (another view) does not change the image in OHIF
    3.13 (cornerstone logs "No image URI found"), so the other views are not checked.
    """
    _, found = studies
    sr = dcmread(BytesIO(found.mg_files["SR"][0]))
    regions = tracked_regions(sr)
    groups = len(sr.ContentSequence[-1].ContentSequence)
    assert len(regions) == groups, "every measurement group has a region to draw"
    viewer.open_study(found.mg)
    viewer.open_series("mg-4view report")
    drawn = viewer.wait_for_annotations()
    assert_no_error(viewer, "mg-sr")
    assert drawn.keys() <= regions.keys(), "OHIF drew what the report holds"
    names = [regions[uid] for uid in drawn]
    assert any(n.startswith("finding") for n in names), f"no finding region drawn: {names}"
    assert any(n.startswith("class") for n in names), f"no class probability drawn: {names}"
    assert all("Certainty of Finding" in text for text in drawn.values())


def test_a_mammography_overlay_capture_is_shown(
    studies: tuple[OrthancServer, Studies], viewer: ViewerPage
) -> None:
    _, found = studies
    viewer.open_study(found.mg)
    viewer.open_series("mg-truth overlay")
    time.sleep(3)
    viewer.redraw()
    pixels = viewer.viewport_pixels()
    assert_no_error(viewer, "mg-sc")
    assert coloured(pixels) > 1000, "the banner and outlines are not shown"


@pytest.mark.xfail(
    reason="OHIF 3.13 loads a SEG only with Pixel Measures in the shared functional groups"
    " and a Plane Orientation (ImageOrientationPatient) matching the source's; a SEG of a"
    " projection image (MG, DX) has neither: TypeError in _getReferencedDisplaySetMetadata,"
    " then cornerstone's checkOrientation",
    strict=True,
)
def test_a_mammography_seg_is_drawn(
    studies: tuple[OrthancServer, Studies], viewer: ViewerPage
) -> None:
    _, found = studies
    viewer.open_study(found.mg)
    before = coloured(viewer.viewport_pixels())
    viewer.open_series("Ground truth")
    try:
        viewer.answer("Do you want to open this Segmentation?", timeout=15)
    finally:
        time.sleep(3)
        viewer.redraw()
        assert_no_error(viewer, "mg-seg")
    assert coloured(viewer.viewport_pixels()) > before + 200

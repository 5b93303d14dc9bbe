"""Result previews: SEG thumbnails, SR finding rows, projection views and their cache.

Every SEG and SR here is built by the project's own builders (``outputs/seg.py``,
``outputs/sr.py``, ``synth/truth.py`` through ``demo-data``), written to disk and
previewed from the files, as the web stage does.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.index.layout import DataLayout
from dicomnode.kernel import ClassLabel, Code, Finding, ModelResult, Region, SegmentLabel, Volume
from dicomnode.models import codes
from dicomnode.outputs.seg import build_segmentation, segment_number_map
from dicomnode.outputs.sr import build_measurement_report
from dicomnode.synth.ct import build_ct_series
from dicomnode.synth.mg import MG_VIEWS, build_mg_study
from dicomnode.synth.studies import DemoOptions, write_demo_data
from dicomnode.volumes import volume_from_datasets
from dicomnode.web.previews import (
    ALPHA,
    MAX_WIDTH,
    PALETTE,
    FindingRow,
    ImageRegion,
    Measurement,
    PreviewCache,
    PreviewError,
    SourceSlice,
    lab_to_srgb,
    projection_preview,
    seg_key_slices,
    seg_thumbnail,
    sr_findings,
)

SLICES, SIZE = 20, 64
JOB = "study-1.2.3@v1/pipeline-ct"
CANARY_NAME = "Canary^Zebedee"
CANARY_ID = "CANARY-ID-4711"
CANARY_BIRTH = "19010203"
CT_WINDOW = (40.0, 400.0)  # the synthetic CT's first WindowCenter / WindowWidth
LESION = SegmentLabel(1, "lesion", codes.MORPHOLOGICALLY_ABNORMAL, codes.LESION)
BODY = SegmentLabel(2, "body", codes.ANATOMICAL_STRUCTURE, codes.BODY)
#: (slice, first row, first column, side) of each square lesion: areas 36, 144, 100, 64.
SQUARES = ((3, 10, 10, 6), (7, 20, 20, 12), (12, 30, 14, 10), (16, 8, 40, 8))


@dataclass(frozen=True)
class ModelInfo:
    """What the outputs need of a model (name, version, labels, classes)."""

    name: str
    version: str
    labels: tuple[SegmentLabel, ...]
    classes: tuple[ClassLabel, ...] = ()


@dataclass(frozen=True)
class Ct:
    sources: list[Dataset]
    paths: list[Path]
    volume: Volume
    masks: npt.NDArray[np.bool_]


def _with_canaries(ds: Dataset) -> Dataset:
    ds.PatientName = CANARY_NAME
    ds.PatientID = CANARY_ID
    ds.PatientBirthDate = CANARY_BIRTH
    return ds


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Ct:
    """A 20-slice 64x64 CT stored as the node stores it (``<sop>.dcm``), square
    lesions of known areas on four slices."""
    folder = tmp_path_factory.mktemp("ct")
    sources = [_with_canaries(ds) for ds in build_ct_series(slices=SLICES, rows=SIZE,
                                                             columns=SIZE, seed=1)]  # fmt: skip
    paths = []
    for ds in sources:
        paths.append(folder / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    masks = np.zeros((1, SLICES, SIZE, SIZE), dtype=np.bool_)
    for k, row, column, side in SQUARES:
        masks[0, k, row : row + side, column : column + side] = True
    return Ct(sources, paths, volume_from_datasets(sources), masks)


def ct_seg(ct: Ct, masks: npt.NDArray[np.bool_], labels: Sequence[SegmentLabel]) -> Dataset:
    seg = build_segmentation(
        ct.sources[::-1], ct.volume, masks, labels,
        model_name="ct-lesion-seg", model_version="1", job_key=JOB,
    )  # fmt: skip
    assert seg is not None
    return seg


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def with_colours(seg: Dataset, *rgb: tuple[int, int, int]) -> Dataset:
    """The SEG with a RecommendedDisplayCIELabValue per segment (highdicom's encoder)."""
    for item, colour in zip(seg.SegmentSequence, rgb, strict=True):
        item.RecommendedDisplayCIELabValue = list(hd.color.CIELabColor.from_rgb(*colour).value)
    return seg


def pixels(png: bytes) -> npt.NDArray[np.int16]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def windowed(hounsfield: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The grey levels a CT slice should show (linear window, 0-255)."""
    centre, width = CT_WINDOW
    return np.rint(np.clip((hounsfield - (centre - width / 2)) / width, 0, 1) * 255)


def eroded(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    inner = np.pad(mask, 1)
    return (
        mask & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    )  # fmt: skip


def tile(image: npt.NDArray[np.int16], index: int, width: int = SIZE) -> npt.NDArray[np.int16]:
    return image[:, index * (width + 4) : index * (width + 4) + width]


# -- colour -------------------------------------------------------------------------


def test_lab_to_srgb_gives_known_colours() -> None:
    assert lab_to_srgb((0xFFFF, 0x8080, 0x8080)) == (255, 255, 255)
    assert lab_to_srgb((0, 0x8080, 0x8080)) == (0, 0, 0)
    # PS3.3 scaled CIELab of orange and of Lab (50, 34, 12.4), as highdicom documents them.
    assert lab_to_srgb((49107, 39048, 53188)) == (255, 165, 0)
    assert lab_to_srgb(hd.color.CIELabColor(50.0, 34.0, 12.4).value) == (177, 95, 99)


def test_lab_to_srgb_inverts_highdicoms_encoding_of_srgb() -> None:
    for rgb in itertools.product((0, 64, 128, 200, 255), repeat=3):
        back = lab_to_srgb(hd.color.CIELabColor.from_rgb(*rgb).value)
        assert max(abs(a - b) for a, b in zip(back, rgb, strict=True)) <= 1, rgb


@pytest.mark.parametrize("value", [(1, 2), (0, 0, 70000), (-1, 0, 0)])
def test_lab_to_srgb_refuses_a_value_that_is_not_a_dicom_triplet(value: tuple[int, ...]) -> None:
    with pytest.raises(PreviewError, match="RecommendedDisplayCIELabValue"):
        lab_to_srgb(value)


# -- SEG thumbnails -----------------------------------------------------------------


def test_key_slices_are_those_with_the_largest_area_in_volume_order(ct: Ct, tmp_path: Path) -> None:
    path = write(ct_seg(ct, ct.masks, [LESION]), tmp_path / "seg.dcm")

    chosen = seg_key_slices(path, ct.paths)

    # Areas 36, 144, 100, 64 on slices 3, 7, 12, 16: the three largest, along the volume.
    assert chosen == [SourceSlice(ct.volume.sop_instance_uids[k]) for k in (7, 12, 16)]


def test_overlay_has_the_segment_colour_on_the_mask_and_the_source_grey_elsewhere(
    ct: Ct, tmp_path: Path
) -> None:
    colour = (0, 200, 255)
    seg = with_colours(ct_seg(ct, ct.masks, [LESION]), colour)
    image = pixels(seg_thumbnail(write(seg, tmp_path / "seg.dcm"), ct.paths))

    assert image.shape == (SIZE, 3 * SIZE + 2 * 4, 3)  # small slices are not enlarged
    for index, k in enumerate((7, 12, 16)):
        shown, mask = tile(image, index), ct.masks[0, k]
        grey = windowed(ct.volume.array[k])
        assert np.all(np.abs(shown[~mask] - grey[~mask][:, None]) <= 1)
        inside = eroded(mask)
        blend = (1 - ALPHA) * grey[inside][:, None] + ALPHA * np.array(colour)
        assert np.all(np.abs(shown[inside] - blend) <= 1)
        assert np.all(shown[mask & ~inside] == colour)  # the outline


def test_segments_without_a_recommended_colour_take_the_palette_smallest_on_top(
    ct: Ct, tmp_path: Path
) -> None:
    body = np.zeros_like(ct.masks[0])
    body[:, 4:60, 4:60] = True
    masks = np.stack([ct.masks[0], body & ~ct.masks[0]])
    masks[1, 7, 20:32, 20:32] = True  # the body also covers the largest lesion
    path = write(ct_seg(ct, masks, [LESION, BODY]), tmp_path / "seg.dcm")

    image = pixels(seg_thumbnail(path, ct.paths))
    chosen = seg_key_slices(path, ct.paths)

    # The body is on every slice; only on slice 7 does it cover a lesion too: the largest.
    middle = tile(image, chosen.index(SourceSlice(ct.volume.sop_instance_uids[7])))
    assert tuple(middle[20, 25]) == PALETTE[0]  # lesion's outline, drawn over the body
    assert tuple(middle[4, 30]) == PALETTE[1]  # body's outline
    inside = middle[25, 25]
    assert not (inside[0] == inside[1] == inside[2])


def test_a_seg_without_source_references_is_placed_by_plane_position(
    ct: Ct, tmp_path: Path
) -> None:
    seg = ct_seg(ct, ct.masks, [LESION])
    for group in seg.PerFrameFunctionalGroupsSequence:
        del group.DerivationImageSequence
    path = write(seg, tmp_path / "seg.dcm")

    chosen = seg_key_slices(path, ct.paths)

    assert chosen == [SourceSlice(ct.volume.sop_instance_uids[k]) for k in (7, 12, 16)]


def test_a_seg_of_a_multi_frame_source_names_its_frames(ct: Ct, tmp_path: Path) -> None:
    source = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=ct.sources[::-1], series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1,
    )  # fmt: skip
    source_path = write(source, tmp_path / "enhanced.dcm")
    volume = volume_from_datasets([source])
    seg = build_segmentation(
        [source], volume, ct.masks, [LESION], model_name="m", model_version="1", job_key=JOB
    )
    assert seg is not None
    path = write(seg, tmp_path / "seg.dcm")

    chosen = seg_key_slices(path, [source_path])
    image = pixels(seg_thumbnail(path, [source_path]))

    uid = str(source.SOPInstanceUID)
    assert chosen == [SourceSlice(uid, volume.frame_numbers[k]) for k in (7, 12, 16)]
    grey = windowed(ct.volume.array[12])
    assert np.all(np.abs(tile(image, 1)[~ct.masks[0, 12]] - grey[~ct.masks[0, 12]][:, None]) <= 1)


def manual_segment(label: SegmentLabel) -> hd.seg.SegmentDescription:
    def concept(code: Code) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)

    return hd.seg.SegmentDescription(
        segment_number=label.number, segment_label=label.name,
        segmented_property_category=concept(label.category),
        segmented_property_type=concept(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )  # fmt: skip


def test_a_fractional_seg_shows_where_the_fraction_is_at_least_half(ct: Ct, tmp_path: Path) -> None:
    fraction = ct.masks[0].astype(np.float32) * 0.8
    fraction[7, 20:32, 20:26] = 0.3  # below half: not the segment
    seg = hd.seg.Segmentation(
        source_images=[ct.sources[k] for k in range(SLICES)], pixel_array=fraction,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[manual_segment(LESION)],
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1",
    )  # fmt: skip
    path = write(seg, tmp_path / "fractional.dcm")

    slice_7 = tile(pixels(seg_thumbnail(path, ct.paths)), 0)

    grey = windowed(ct.volume.array[7])
    assert np.all(np.abs(slice_7[25, 21:24] - grey[25, 21:24][:, None]) <= 1)
    assert tuple(slice_7[25, 26]) == PALETTE[0]  # the new left edge


def test_a_label_map_seg_shows_each_label_and_leaves_the_background_grey(
    ct: Ct, tmp_path: Path
) -> None:
    labels = ct.masks[0].astype(np.uint8)  # 1 where the lesion squares are
    labels[7, 40:50, 40:50] = 2
    seg = hd.seg.Segmentation(
        source_images=ct.sources, pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=[manual_segment(LESION), manual_segment(BODY)],
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1",
    )  # fmt: skip
    path = write(seg, tmp_path / "labelmap.dcm")

    chosen = seg_key_slices(path, ct.paths)
    slice_7 = tile(pixels(seg_thumbnail(path, ct.paths)), 0)

    assert chosen == [SourceSlice(ct.volume.sop_instance_uids[k]) for k in (7, 12, 16)]
    assert tuple(slice_7[20, 25]) == PALETTE[0] and tuple(slice_7[40, 45]) == PALETTE[1]
    outside = labels[7] == 0  # outlines lie on the labels' own pixels
    grey = windowed(ct.volume.array[7])
    assert np.all(np.abs(slice_7[outside] - grey[outside][:, None]) <= 1)


def test_a_seg_of_a_mammogram_is_one_tile_on_the_image(tmp_path: Path) -> None:
    study = build_mg_study(5, rows=128, columns=104, finding="suspicious")
    view = next(v for v in MG_VIEWS if study.masks[v].any())
    image = study.images[view]
    seg = build_segmentation(
        [image], volume_from_datasets([image]), study.masks[view], study.truth_labels,
        model_name="mg-4view", model_version="1", job_key=JOB,
    )  # fmt: skip
    assert seg is not None
    path = write(with_colours(seg, (255, 0, 255)), tmp_path / "seg.dcm")

    shown = pixels(seg_thumbnail(path, [write(image, tmp_path / "mg.dcm")]))

    mask = study.masks[view][0, 0]
    assert shown.shape == (128, 104, 3)
    assert np.all(np.abs(shown[mask & ~eroded(mask)] - (255, 0, 255)) <= 1)
    outside = shown[~mask]
    assert np.all((outside[:, 0] == outside[:, 1]) & (outside[:, 1] == outside[:, 2]))


def test_the_ground_truth_seg_of_demo_data_renders_within_the_width(tmp_path: Path) -> None:
    options = DemoOptions(ct=1, mg=0, cxr=0, ct_slices=24, ct_size=400, ct_thickness=2.0)
    write_demo_data(tmp_path, options)
    [folder] = (tmp_path / "ct").iterdir()
    sources = sorted(folder.glob("0*.dcm"))  # named by instance number, not by UID

    image = pixels(seg_thumbnail(folder / "truth-seg.dcm", sources))
    chosen = seg_key_slices(folder / "truth-seg.dcm", sources)

    assert image.shape[1] <= MAX_WIDTH
    assert image.shape[0] == (MAX_WIDTH - 2 * 4) // 3  # three 400-pixel slices, shrunk
    assert len(chosen) == 3
    assert len({c.sop_instance_uid for c in chosen}) == 3


def test_a_file_that_is_not_a_seg_is_refused_naming_it(ct: Ct) -> None:
    with pytest.raises(PreviewError, match="not a Segmentation"):
        seg_thumbnail(ct.paths[0], ct.paths)


def test_a_seg_on_other_images_is_refused(ct: Ct, tmp_path: Path) -> None:
    seg = ct_seg(ct, ct.masks, [LESION])
    for group in seg.PerFrameFunctionalGroupsSequence:
        del group.DerivationImageSequence
        del group.PlanePositionSequence
    path = write(seg, tmp_path / "seg.dcm")
    with pytest.raises(PreviewError, match="no segmentation frame could be placed"):
        seg_thumbnail(path, ct.paths)


# -- SR rows ------------------------------------------------------------------------


def ct_report(ct: Ct, tmp_path: Path) -> tuple[Path, Dataset]:
    labels = (LESION,)
    seg = ct_seg(ct, ct.masks, labels)
    finding = Finding(
        codes.LESION, 0.87, views=("ct",), segment_number=1,
        measurements={"volume": (523.6, "mm3"), "longest_diameter": (12.5, "mm")},
        regions=(Region("ct", 7, 20, 20, 32, 32),),
    )  # fmt: skip
    sr = build_measurement_report(
        {"ct": ct.sources}, ModelResult(findings=(finding,)),
        ModelInfo("ct-lesion-seg", "1", labels), volumes={"ct": ct.volume}, job_key=JOB,
        segmentations={"ct": seg}, segment_numbers={"ct": segment_number_map(ct.masks, labels)},
    )  # fmt: skip
    return write(sr, tmp_path / "sr.dcm"), seg


def group_count(path: Path) -> int:
    report = hd.sr.MeasurementReport.from_sequence([dcmread(path)])
    return (
        len(report.get_volumetric_roi_measurement_groups())
        + len(report.get_planar_roi_measurement_groups())
        + len(report.get_image_measurement_groups())
    )


def test_sr_rows_are_one_per_measurement_group_with_what_the_report_wrote(
    ct: Ct, tmp_path: Path
) -> None:
    path, seg = ct_report(ct, tmp_path)

    rows = sr_findings(path)

    assert len(rows) == group_count(path) == 2
    volumetric, planar = rows
    assert volumetric.finding == planar.finding == "Lesion"
    assert volumetric.tracking_identifier == "finding 1: Lesion"
    assert volumetric.tracking_uid == planar.tracking_uid is not None
    assert volumetric.finding_category == "Morphologically Abnormal Structure"
    assert volumetric.certainty == pytest.approx(0.87)
    assert volumetric.measurements == (
        Measurement("Volume", 523.6, "mm3"),
        Measurement("Long axis", 12.5, "mm"),
    )
    assert volumetric.algorithm == "ct-lesion-seg 1"
    assert volumetric.segment is not None
    assert volumetric.segment.sop_instance_uid == str(seg.SOPInstanceUID)
    assert volumetric.segment.segment_number == 1
    assert volumetric.segment.source_series_instance_uid == ct.volume.series_instance_uid
    assert planar.regions == (
        ImageRegion(
            "POLYLINE",
            ((20.0, 20.0), (32.0, 20.0), (32.0, 32.0), (20.0, 32.0), (20.0, 20.0)),
            ct.volume.sop_instance_uids[7],
            None,
            "Lesion",
        ),
    )


@pytest.fixture(scope="module")
def mg_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], str]:
    """A four-view mammography report: a malignant finding with SEGs on one side, a
    mass with regions on the other, class probabilities per side."""
    folder = tmp_path_factory.mktemp("mg")
    study = build_mg_study(5, rows=128, columns=104, finding="suspicious")
    images = {v: _with_canaries(study.images[v]) for v in MG_VIEWS}
    volumes = {v: volume_from_datasets([images[v]]) for v in MG_VIEWS}
    side = next(v for v in MG_VIEWS if study.masks[v].any())[0]
    other = "R" if side == "L" else "L"
    segs, numbers = {}, {}
    for view in MG_VIEWS:
        if study.masks[view].any():
            seg = build_segmentation(
                [images[view]], volumes[view], study.masks[view], study.truth_labels,
                model_name="mg-4view", model_version="1", job_key=JOB,
            )  # fmt: skip
            assert seg is not None
            segs[view] = seg
            numbers[view] = segment_number_map(study.masks[view], study.truth_labels)
    findings = (
        Finding(codes.MALIGNANT, 0.93, laterality=side, views=(f"{side}-CC", f"{side}-MLO"),
                segment_number=1),
        Finding(codes.MASS, 0.6, laterality=other, views=(f"{other}-CC", f"{other}-MLO"),
                regions=(Region(f"{other}-CC", 0, 5, 6, 20, 21),
                         Region(f"{other}-MLO", 0, 7, 8, 22, 23))),
    )  # fmt: skip
    classes = (ClassLabel("normal", codes.NORMAL), ClassLabel("suspicious", codes.MALIGNANT))
    sr = build_measurement_report(
        {v: [images[v]] for v in MG_VIEWS},
        ModelResult(probabilities={f"{side}:suspicious": 0.9, "normal": 0.05},
                            findings=findings),
        ModelInfo("mg-4view", "1", study.truth_labels, classes), volumes=volumes,
        job_key=JOB, segmentations=segs, segment_numbers=numbers,
    )  # fmt: skip
    paths = {v: write(images[v], folder / f"{v}.dcm") for v in MG_VIEWS}
    return write(sr, folder / "sr.dcm"), paths, other


def test_mammography_rows_carry_site_laterality_regions_and_class_probabilities(
    mg_report: tuple[Path, dict[str, Path], str],
) -> None:
    path, _, other = mg_report
    side = "L" if other == "R" else "R"
    sides = {"L": "Left", "R": "Right"}

    listed = sr_findings(path)

    rows = {row.tracking_identifier: row for row in listed}
    assert len(listed) == group_count(path) == 5  # 2 SEG frames, the mass, 2 classes
    malignant = [
        r for r in listed if r.tracking_identifier == f"finding 1: {codes.MALIGNANT.meaning}"
    ]
    assert len(malignant) == 2
    for row in malignant:  # TID 1410: a Referenced Segmentation Frame on one view
        assert row.segment is not None and row.segment.frame_numbers == (1,)
        assert (row.laterality, row.certainty) == (sides[side], pytest.approx(0.93))
        assert len(row.source_images) == 1
    mass = rows[f"finding 2: {codes.MASS.meaning}"]
    assert (mass.finding_site, mass.laterality) == ("Breast", sides[other])
    assert mass.certainty == pytest.approx(0.6)
    assert [r.graphic_type for r in mass.regions] == ["POLYLINE", "POLYLINE"]
    assert len(mass.source_images) == 2
    lateral = rows[f"class {side}:suspicious"]
    assert (lateral.finding, lateral.laterality, lateral.certainty) == (
        codes.MALIGNANT.meaning,
        sides[side],
        pytest.approx(0.9),
    )


def test_sr_rows_hold_no_patient_data(
    ct: Ct, tmp_path: Path, mg_report: tuple[Path, dict[str, Path], str]
) -> None:
    ct_path, _ = ct_report(ct, tmp_path)
    for path in (ct_path, mg_report[0]):
        assert dcmread(path).PatientName == CANARY_NAME  # the report does carry them

        text = repr(sr_findings(path))

        for canary in (CANARY_NAME, "Canary", "Zebedee", CANARY_ID, CANARY_BIRTH):
            assert canary not in text


def test_a_file_that_is_not_a_report_is_refused(ct: Ct) -> None:
    with pytest.raises(PreviewError, match="not an SR document"):
        sr_findings(ct.paths[0])


# -- projection views ---------------------------------------------------------------


def test_projection_preview_draws_each_region_on_the_view_it_references(
    mg_report: tuple[Path, dict[str, Path], str],
) -> None:
    path, views, other = mg_report
    regions = [r for row in sr_findings(path) for r in row.regions]
    order = list(MG_VIEWS)

    image = pixels(projection_preview([views[v] for v in order], regions))

    assert image.shape == (128, 4 * 104 + 3 * 4, 3)
    colour = PALETTE[0]  # the only label with regions
    for view, (row0, column0, column1) in ((f"{other}-CC", (5, 6, 21)),
                                           (f"{other}-MLO", (7, 8, 23))):  # fmt: skip
        shown = tile(image, order.index(view), 104)
        top_edge = shown[row0 - 1 : row0 + 2, column0 + 2 : column1 - 2]
        assert np.any(np.all(top_edge == colour, axis=-1), axis=0).all()
    for view in (v for v in order if not v.startswith(other)):
        shown = tile(image, order.index(view), 104)
        assert not np.any(np.all(shown == colour, axis=-1))


def test_projection_preview_lays_a_seg_over_its_image(tmp_path: Path) -> None:
    study = build_mg_study(5, rows=128, columns=104, finding="suspicious")
    view = next(v for v in MG_VIEWS if study.masks[v].any())
    paths = [write(study.images[v], tmp_path / f"{v}.dcm") for v in MG_VIEWS]
    image = study.images[view]
    seg = build_segmentation(
        [image], volume_from_datasets([image]), study.masks[view], study.truth_labels,
        model_name="mg-4view", model_version="1", job_key=JOB,
    )  # fmt: skip
    assert seg is not None

    shown = pixels(projection_preview(paths, segmentation_paths=[write(seg, tmp_path / "s.dcm")]))

    mask = study.masks[view][0, 0]
    on_view = tile(shown, MG_VIEWS.index(view), 104)
    assert np.all(on_view[mask & ~eroded(mask)] == PALETTE[0])


# -- the cache ----------------------------------------------------------------------


@dataclass
class Renders:
    """Counts the renders a cache asks for (a real render, counted)."""

    render: Callable[[], bytes]
    calls: int = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.render()


def test_a_cached_preview_is_not_rendered_again(ct: Ct, tmp_path: Path) -> None:
    seg = write(ct_seg(ct, ct.masks, [LESION]), tmp_path / "seg.dcm")
    cache = PreviewCache(DataLayout(tmp_path).previews)
    renders = Renders(lambda: seg_thumbnail(seg, ct.paths))
    key = ("seg", seg, *ct.paths)

    first = cache.get_or_render(key, renders, study_instance_uid="1.2.3")
    again = cache.get_or_render(key, renders, study_instance_uid="1.2.3")

    assert renders.calls == 1
    assert again == first == seg_thumbnail(seg, ct.paths)


def test_replacing_the_output_renders_a_new_preview(ct: Ct, tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    seg = tmp_path / "seg.dcm"
    write(with_colours(ct_seg(ct, ct.masks, [LESION]), (255, 0, 0)), seg)
    cache = PreviewCache(layout.previews)
    renders = Renders(lambda: seg_thumbnail(seg, ct.paths))
    red = cache.get_or_render(("seg", seg, *ct.paths), renders, study_instance_uid="1.2.3")

    # A rerun of the job writes the output again under the same name (os.replace).
    write(with_colours(ct_seg(ct, ct.masks, [LESION]), (0, 0, 255)), tmp_path / "new.dcm")
    os.replace(tmp_path / "new.dcm", seg)
    blue = cache.get_or_render(("seg", seg, *ct.paths), renders, study_instance_uid="1.2.3")

    assert renders.calls == 2
    assert blue != red
    assert blue == seg_thumbnail(seg, ct.paths)
    assert len(list(layout.preview_dir("1.2.3").glob("*.png"))) == 1  # the old one is gone


def test_previews_lie_in_the_studys_folder_and_go_with_the_study(ct: Ct, tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    cache = PreviewCache(layout.previews)
    seg = write(ct_seg(ct, ct.masks, [LESION]), tmp_path / "seg.dcm")
    for study in ("1.2.3", "1.2.9"):
        cache.get_or_render(("seg", seg), lambda: seg_thumbnail(seg, ct.paths),
                            study_instance_uid=study)  # fmt: skip

    [kept] = layout.preview_dir("1.2.3").iterdir()
    layout.remove_study_files("1.2.3", [], [], [])

    assert kept.suffix == ".png" and kept.parent == layout.previews / "1.2.3"
    assert not layout.preview_dir("1.2.3").exists()
    assert len(list(layout.preview_dir("1.2.9").iterdir())) == 1


def test_a_torn_cached_file_is_rendered_again(ct: Ct, tmp_path: Path) -> None:
    seg = write(ct_seg(ct, ct.masks, [LESION]), tmp_path / "seg.dcm")
    cache = PreviewCache(DataLayout(tmp_path).previews)
    renders = Renders(lambda: seg_thumbnail(seg, ct.paths))
    png = cache.get_or_render(("seg", seg), renders, study_instance_uid="1.2.3")
    [cached] = cache.study_folder("1.2.3").iterdir()
    cached.write_bytes(png[: len(png) // 2])  # a write a power cut cut short

    again = cache.get_or_render(("seg", seg), renders, study_instance_uid="1.2.3")

    assert renders.calls == 2
    assert again == png


@pytest.mark.parametrize("study", ["", "..", "1.2/../x"])
def test_a_study_uid_that_could_leave_the_previews_folder_is_refused(
    tmp_path: Path, study: str
) -> None:
    with pytest.raises(ValueError, match="cannot name a preview folder"):
        PreviewCache(tmp_path).get_or_render(("x",), lambda: b"", study_instance_uid=study)


def test_rows_are_frozen(ct: Ct, tmp_path: Path) -> None:
    path, _ = ct_report(ct, tmp_path)
    row: FindingRow = sr_findings(path)[0]
    with pytest.raises(AttributeError):
        row.finding = "changed"  # type: ignore[misc]

"""The anatomical CT generator: valid DICOM, organs per phase, lesions, variety, determinism."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections import Counter
from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from scipy import ndimage

from dicomnode.models.api import ClassLabel, SegmentLabel, SeriesRule, ViewSpec
from dicomnode.models.codes import BODY, LESION
from dicomnode.synth.ct._lesions import HOSTS
from dicomnode.synth.ct.anatomical import (
    AnatomicalCt,
    AnatomicalCtOptions,
    BodyRegion,
    ContrastPhase,
    CtTissue,
    LesionKind,
    RenderedCt,
    anatomical_training_sample,
    anatomical_volume,
    build_anatomical_ct_series,
    draw_anatomical_ct,
    render_anatomical_ct,
)
from dicomnode.synth.studies import DemoOptions, write_demo_data
from dicomnode.volumes import volume_from_datasets
from dicomnode.worker.training_data import load_labelled_studies

TINY = AnatomicalCtOptions(slices=4, rows=48, columns=40)
# The abdomen always holds organs lesions grow in, whatever window a series covers.
ABDOMEN = AnatomicalCtOptions(slices=24, rows=96, columns=96, regions=(BodyRegion.ABDOMEN,))


def _render(seed: int, options: AnatomicalCtOptions) -> tuple[AnatomicalCt, RenderedCt]:
    ct = draw_anatomical_ct(seed, options)
    return ct, render_anatomical_ct(ct)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_series_of_every_phase_and_pixel_encoding_pass_dciodvfy(tmp_path: Path) -> None:
    seen: set[tuple[ContrastPhase, bool]] = set()
    for seed in range(40):
        ct = draw_anatomical_ct(seed, TINY)
        if (ct.phase, ct.scanner.signed) in seen:
            continue
        seen.add((ct.phase, ct.scanner.signed))
        path = tmp_path / f"{seed}.dcm"
        build_anatomical_ct_series(ct)[0].save_as(path, enforce_file_format=True)
        done = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "Error" not in output, output
        assert "Warning" not in output, output
    assert len(seen) == 8, "every phase with both pixel encodings"


@pytest.mark.parametrize("seed", [3, 4])
def test_series_read_back_as_the_rendered_volume(seed: int) -> None:
    ct, rendered = _render(seed, TINY)
    datasets = build_anatomical_ct_series(ct, rendered, patient_id="P1")
    volume = volume_from_datasets(list(reversed(datasets)))

    np.testing.assert_array_equal(volume.array, rendered.hu.astype(np.float32))
    assert volume.spacing == pytest.approx((ct.slice_spacing, ct.pixel_spacing, ct.pixel_spacing))
    assert volume.origin == pytest.approx(ct.origin)
    assert float(datasets[0].SliceThickness) == pytest.approx(ct.slice_thickness)
    assert datasets[0].BodyPartExamined and datasets[0].ConvolutionKernel == ct.scanner.kernel.name
    # The in-memory training volume is the same grid, with the same UIDs.
    direct = anatomical_volume(ct, rendered)
    again = volume_from_datasets(build_anatomical_ct_series(ct, rendered))
    np.testing.assert_array_equal(direct.array, again.array)
    assert direct.sop_instance_uids == again.sop_instance_uids
    assert direct.frame_of_reference_uid == again.frame_of_reference_uid


def _median(rendered: RenderedCt, tissue: CtTissue, erode: bool = True) -> float:
    """Median CT number of a tissue, one voxel in from its border (no partial volume)."""
    core = rendered.tissues == tissue
    if erode:
        core = ndimage.binary_erosion(core, np.ones((1, 3, 3), bool))
    assert core.sum() > 20, f"too little {tissue.name} to measure"
    return float(np.median(rendered.hu[core]))


@pytest.fixture(scope="module")
def phases() -> dict[ContrastPhase, RenderedCt]:
    """One low-noise abdomen per phase, long enough to hold liver, kidneys and aorta."""
    out = {}
    for phase in ContrastPhase:
        options = AnatomicalCtOptions(
            slices=40, rows=128, columns=128, regions=(BodyRegion.ABDOMEN,), phases=(phase,),
            slice_thickness=(5.0, 5.0), noise_sigma=(1.0, 1.0), artefacts=False,
        )  # fmt: skip
        out[phase] = _render(21, options)[1]
    return out


def test_organ_ct_numbers_follow_the_contrast_phase(
    phases: dict[ContrastPhase, RenderedCt],
) -> None:
    none = phases[ContrastPhase.NONE]
    assert 20 <= _median(none, CtTissue.BLOOD_ARTERIAL) <= 70
    assert 35 <= _median(none, CtTissue.LIVER) <= 85
    # Medullary pyramids are a few voxels wide here: kidneys are compared whole.
    kidney = (CtTissue.KIDNEY_CORTEX, CtTissue.KIDNEY_MEDULLA)
    cortex, medulla = (_median(none, t, erode=False) for t in kidney)
    assert abs(cortex - medulla) < 20
    arterial = phases[ContrastPhase.ARTERIAL]
    assert _median(arterial, CtTissue.BLOOD_ARTERIAL) > 200
    cortex, medulla = (_median(arterial, t, erode=False) for t in kidney)
    assert cortex > medulla + 50  # corticomedullary phase
    portal = phases[ContrastPhase.PORTAL_VENOUS]
    assert _median(portal, CtTissue.LIVER) > _median(none, CtTissue.LIVER) + 25
    # Vessels are a few voxels wide here: compare them whole, partial volume and all.
    veins = [_median(r, CtTissue.BLOOD_PORTAL, erode=False) for r in (portal, arterial)]
    assert veins[0] > veins[1] + 20
    delayed = phases[ContrastPhase.DELAYED]
    assert _median(delayed, CtTissue.BLOOD_ARTERIAL) < _median(arterial, CtTissue.BLOOD_ARTERIAL)
    assert (delayed.tissues == CtTissue.EXCRETED_CONTRAST).any()
    assert not (portal.tissues == CtTissue.EXCRETED_CONTRAST).any()
    for rendered in phases.values():
        assert -1024 <= rendered.hu.min() and rendered.hu.max() <= 3071
        assert -150 <= _median(rendered, CtTissue.FAT) <= -60


def test_lesion_labels_lie_inside_their_organ_and_have_sizes_in_range() -> None:
    options = AnatomicalCtOptions(
        slices=40, rows=128, columns=128, slice_thickness=(2.5, 2.5), lesion_free_fraction=0.0
    )
    seen = Counter[str]()
    for seed in range(6):
        ct, rendered = _render(seed, options)
        spacing = np.asarray((ct.slice_spacing, ct.pixel_spacing, ct.pixel_spacing))
        for number, lesion in enumerate(ct.lesions, start=1):
            assert 5.0 <= lesion.diameter <= 50.0
            where = rendered.lesions == number
            if not where.any():
                continue  # drawn in the scanned box, but thinner than the slices around it
            seen[lesion.site.value] += 1
            assert set(np.unique(rendered.tissues[where])) <= set(HOSTS[lesion.site])
            extent = (np.ptp(np.argwhere(where), axis=0) + 1) * spacing
            # Within the nominal diameter; lung spicules reach up to 1.4 radii.
            assert extent.max() <= 1.45 * lesion.diameter + 2 * spacing.max()
        assert rendered.lesions.max() <= len(ct.lesions)
    assert sum(seen.values()) >= 6 and len(seen) >= 2


def test_lesion_free_studies_come_at_the_configured_rate() -> None:
    # Any chest window holds lung. (A window with no organ lesions grow in, such as
    # the lower abdomen below liver and kidneys, is lesion-free whatever the fraction.)
    def lesion_free(fraction: float, seeds: range) -> float:
        options = AnatomicalCtOptions(
            slices=24, rows=16, columns=16, regions=(BodyRegion.CHEST,),
            lesion_free_fraction=fraction,
        )  # fmt: skip
        return float(np.mean([not draw_anatomical_ct(s, options).lesions for s in seeds]))

    # 80 studies: the standard deviation of the observed fraction is about 0.05.
    assert 0.15 <= lesion_free(0.3, range(80)) <= 0.45
    assert lesion_free(1.0, range(10)) == 1.0
    assert lesion_free(0.0, range(20)) == 0.0


def test_seeds_vary_the_patient_the_scanner_and_the_study() -> None:
    studies = [draw_anatomical_ct(seed, TINY) for seed in range(40)]

    assert len({ct.slice_thickness for ct in studies}) >= 8
    assert (
        min(ct.slice_thickness for ct in studies)
        < 1.0
        < 4.0
        < max(ct.slice_thickness for ct in studies)
    )
    assert any(ct.slice_spacing < ct.slice_thickness for ct in studies)  # overlapping
    assert len({round(ct.scanner.field_of_view) for ct in studies}) >= 20
    assert len({round(ct.scanner.noise_sigma, 1) for ct in studies}) >= 30
    assert len({ct.scanner.kernel.name for ct in studies}) >= 5
    assert {ct.phase for ct in studies} == set(ContrastPhase)
    assert {ct.region for ct in studies} == set(BodyRegion)
    assert np.ptp([ct.habitus.width for ct in studies]) > 0.2
    assert len({ct.habitus.centre for ct in studies}) == 40
    kinds = {lesion.kind for ct in studies for lesion in ct.lesions}
    assert len(kinds) >= 6


def test_the_same_seed_gives_the_same_voxels_and_files() -> None:
    first_ct, first = _render(7, ABDOMEN)
    second_ct, second = _render(7, ABDOMEN)
    _, other = _render(8, ABDOMEN)

    for name in ("hu", "tissues", "lesions"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.hu, other.hu)
    one = [
        hashlib.sha256(_bytes(ds)).hexdigest() for ds in build_anatomical_ct_series(first_ct, first)
    ]
    two = [
        hashlib.sha256(_bytes(ds)).hexdigest()
        for ds in build_anatomical_ct_series(second_ct, second)
    ]
    assert one == two


def _seed_with_cysts() -> int:
    for seed in range(100):
        if draw_anatomical_ct(seed, ABDOMEN).cysts:
            return seed
    raise AssertionError("no seed under 100 draws a simple cyst")


def test_simple_cysts_are_a_tissue_unless_asked_to_be_lesions() -> None:
    seed = _seed_with_cysts()
    ct, rendered = _render(seed, ABDOMEN)
    assert not any(lesion.kind is LesionKind.SIMPLE_CYST for lesion in ct.lesions)
    cyst_voxels = rendered.tissues == CtTissue.CYST
    assert not (rendered.lesions[cyst_voxels] > 0).any()

    as_lesions = AnatomicalCtOptions(**{**_fields(ABDOMEN), "simple_cysts_are_lesions": True})
    counted = draw_anatomical_ct(seed, as_lesions)
    cysts = [lesion for lesion in counted.lesions if lesion.kind is LesionKind.SIMPLE_CYST]
    assert [c.centre for c in cysts] == [c.centre for c in ct.cysts]
    assert not counted.cysts


def _fields(options: AnatomicalCtOptions) -> dict[str, object]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("slices", 0),
        ("slice_thickness", (5.0, 1.0)),
        ("lesion_diameter", (0.0, 50.0)),
        ("lesion_free_fraction", 1.5),
        ("lesions", (2, 99)),
        ("pixel_spacing", -1.0),
        ("phases", ()),
    ],
)
def test_options_reject_a_bad_value_naming_it(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        AnatomicalCtOptions(**{field: value})  # type: ignore[arg-type]


def test_a_training_sample_is_a_volume_with_lesion_body_and_host_masks() -> None:
    volume, lesion, body, host = anatomical_training_sample(5, TINY)
    masks: list[npt.NDArray[np.bool_]] = [lesion, body, host]

    assert all(m.shape == volume.shape and m.dtype == np.bool_ for m in masks)
    assert body.any() and not body[:, 0, 0].any()  # a corner of the field is air
    assert not (lesion & ~body).any()
    # Lesions lie in host tissue, the host in the body, and the body is more than it.
    assert lesion.any() and not (lesion & ~host).any()
    assert host.any() and not (host & ~body).any() and (body & ~host).any()


class _AxialCt:
    """A model's view declaration, enough for the training loader."""

    name = "axial-ct"
    version = "1"
    description = "views only"
    views = (ViewSpec("ct", SeriesRule(modality=("CT",), image_plane=("AXIAL",))),)
    labels: tuple[SegmentLabel, ...] = ()
    classes: tuple[ClassLabel, ...] = ()


def test_demo_data_ground_truth_of_anatomical_ct_reads_back_for_training(tmp_path: Path) -> None:
    small = {"ct_slices": 16, "ct_size": 48}
    options = AnatomicalCtOptions(slices=16, rows=48, columns=48)
    # Two studies, one with lesions in the scanned slices and one without.
    with_lesions = next(s for s in range(50) if _render(s, options)[1].lesions.any())
    without = next(s for s in range(50) if not _render(s, options)[1].lesions.any())
    for seed in (with_lesions, without):
        demo = DemoOptions(ct=1, mg=0, cxr=0, seed=seed, ct_anatomical=True, **small)
        write_demo_data(tmp_path / str(seed), demo)

    for seed in (with_lesions, without):
        studies, report = load_labelled_studies(tmp_path / str(seed), _AxialCt())
        assert report.studies == 1
        _, rendered = _render(seed, options)
        segments = {s.type.value: s.mask for s in studies[0].segments}
        np.testing.assert_array_equal(segments[BODY.value], rendered.body_mask())
        lesion = segments.get(LESION.value, np.zeros_like(rendered.lesion_mask()))
        np.testing.assert_array_equal(lesion, rendered.lesion_mask())

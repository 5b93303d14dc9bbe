"""Anatomical synthetic CT: a patient, a scanner and lesions, drawn from one seed.

A model trained on bright spheres in a plain body learns the phantom, not CT. This
generator varies what a model must not rely on:

- **Anatomy** of the chest, abdomen and pelvis: lungs with vessel and airway trees,
  heart chambers, aorta and its branches, caval, portal, hepatic, renal and iliac
  veins; liver, gallbladder, spleen, pancreas, kidneys (cortex, medulla, sinus fat,
  collecting system, ureters), stomach, duodenum, small bowel loops and colon with
  fluid, gas, oral contrast or stool; bladder, prostate or uterus; vertebrae with
  discs and arches, ribs and costal cartilage, sternum, clavicles, scapulae, pelvis
  and femora (cortex around marrow); muscle, subcutaneous and visceral fat, lymph
  nodes, vascular calcification, granulomas; the table. Body size, fat, organ sizes
  and places vary per patient; arms lie beside the body in some.
- **Contrast phase**: none, arterial, portal venous or delayed, which changes organs
  and vessels (corticomedullary kidneys and a heterogeneous spleen when arterial,
  excreted contrast in the urinary tract when delayed), scaled per study by dose and
  tube voltage.
- **Lesions** in liver, spleen, pancreas, kidneys and lungs: hypo- or hyperdense,
  cystic with a wall and septum or nodule, rim-enhancing, necrotic, subsolid or
  cavitary in the lung; round, lobulated or irregular (spiculated in the lung);
  5 to 50 mm. Some studies have none. Simple cysts are *not* lesions unless
  :attr:`AnatomicalCtOptions.simple_cysts_are_lesions` says so.
- **Scanner**: slice thickness 0.6 to 5 mm (sometimes overlapping), partial volume
  across the slice, field of view and pixel size, kernel blur and edge overshoot,
  noise level and texture (noise power spectrum, more noise through longer paths),
  streaks from metal and dense contrast, beam hardening between dense bones, the
  reconstruction circle, tube voltage, 12-bit unsigned or 16-bit signed pixels.

Three volumes come out: CT numbers, a *tissue* label volume (:class:`CtTissue`; a
lesion voxel keeps the label of its organ) and a *lesion* label volume (0, or the
lesion's number). Everything is deterministic for a seed and options.

Speed (2 CPU cores): see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID

from dicomnode.kernel import Volume
from dicomnode.synth.ct._anatomy import Anatomy, build_anatomy
from dicomnode.synth.ct._atlas import Habitus, Streak, draw_habitus
from dicomnode.synth.ct._dicom import SeriesHeader, slice_dataset
from dicomnode.synth.ct._lesions import (
    HOSTS,
    AnatomicalLesion,
    LesionKind,
    LesionShape,
    LesionSite,
    Placement,
    build_lesion,
    draw_cysts,
    draw_granulomas,
    draw_lesion,
    lesion_label,
)
from dicomnode.synth.ct._render import Lookups, Plan, render
from dicomnode.synth.ct._scanner import Scanner, draw_scanner
from dicomnode.synth.ct._shapes import Paint
from dicomnode.synth.ct._tissues import (
    TISSUE_COUNT,
    ContrastPhase,
    CtTissue,
    TissueTable,
    draw_tissue_table,
)
from dicomnode.uids import derive_uid

__all__ = [
    "AnatomicalCt",
    "AnatomicalCtOptions",
    "AnatomicalLesion",
    "BodyRegion",
    "ContrastPhase",
    "CtTissue",
    "LesionKind",
    "LesionShape",
    "LesionSite",
    "RenderedCt",
    "Scanner",
    "SimpleCyst",
    "anatomical_training_sample",
    "anatomical_volume",
    "build_anatomical_ct_series",
    "draw_anatomical_ct",
    "render_anatomical_ct",
]

_UID_NAMESPACE = "dicomnode.synth.ct.anatomical"
# Streams of the seeded generator.
_SCAN_STREAM = 10
_BODY_STREAM = 11
_LESION_STREAM = 12
_COMMON_THICKNESS = (0.625, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_MAX_LESIONS = 50  # render labels are uint8: TISSUE_COUNT + 4 per lesion


class BodyRegion(enum.StrEnum):
    """The part of the body a series covers."""

    CHEST = "chest"
    ABDOMEN = "abdomen"
    ABDOMEN_PELVIS = "abdomen_pelvis"
    CHEST_ABDOMEN_PELVIS = "chest_abdomen_pelvis"


# Atlas z range of each region (z = 0 at the right diaphragm dome), and the defined
# terms of Body Part Examined (PS3.16 Annex L).
_REGION_Z = {
    BodyRegion.CHEST: (-40.0, 310.0),
    BodyRegion.ABDOMEN: (-200.0, 20.0),
    BodyRegion.ABDOMEN_PELVIS: (-380.0, 20.0),
    BodyRegion.CHEST_ABDOMEN_PELVIS: (-380.0, 310.0),
}
_BODY_PART = {
    BodyRegion.CHEST: "CHEST",
    BodyRegion.ABDOMEN: "ABDOMEN",
    BodyRegion.ABDOMEN_PELVIS: "ABDOMENPELVIS",
    BodyRegion.CHEST_ABDOMEN_PELVIS: "CHESTABDPELVIS",
}


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not (low <= value[0] <= value[1] <= high):
        raise ValueError(
            f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {value}"
        )


@dataclass(frozen=True, slots=True)
class AnatomicalCtOptions:
    """What the generator may draw from.

    Attributes
    ----------
    slices, rows, columns
        Size of every series.
    regions, phases
        Body regions and contrast phases to choose from (uniformly).
    slice_thickness
        (min, max) millimetres; common vendor values inside it are preferred.
    overlap_fraction
        Share of series (1 mm and thicker) reconstructed with overlapping slices.
    pixel_spacing
        Fixed in-plane spacing (mm), or None to derive it from a drawn field of view.
    field_of_view
        (min, max) reconstruction diameter, millimetres.
    noise_sigma
        (min, max) noise at 1 mm with a standard kernel, HU (drawn log-uniformly;
        thickness, kernel and tube voltage then scale it).
    lesion_free_fraction
        Share of studies drawn without lesions. A series whose slices hold none of the
        organs lesions grow in (the lower abdomen below liver and kidneys, say) is
        lesion-free whatever this says.
    lesions
        (min, max) lesions in a study that has them (fewer when the scanned organs
        leave no room).
    lesion_diameter
        (min, max) nominal lesion diameter, millimetres.
    simple_cysts_are_lesions
        Count simple cysts as lesions (default: a tissue, ``CtTissue.CYST``).
    artefacts
        Metal implants and streak artefacts.
    """

    slices: int = 120
    rows: int = 256
    columns: int = 256
    regions: tuple[BodyRegion, ...] = tuple(BodyRegion)
    phases: tuple[ContrastPhase, ...] = tuple(ContrastPhase)
    slice_thickness: tuple[float, float] = (0.6, 5.0)
    overlap_fraction: float = 0.2
    pixel_spacing: float | None = None
    field_of_view: tuple[float, float] = (300.0, 500.0)
    noise_sigma: tuple[float, float] = (8.0, 30.0)
    lesion_free_fraction: float = 0.25
    lesions: tuple[int, int] = (1, 6)
    lesion_diameter: tuple[float, float] = (5.0, 50.0)
    simple_cysts_are_lesions: bool = False
    artefacts: bool = True

    def __post_init__(self) -> None:
        for name in ("slices", "rows", "columns"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be between 1 and 65535, got {getattr(self, name)}")
        if not self.regions or not self.phases:
            raise ValueError("regions and phases must each name at least one value")
        _check_range("slice_thickness", self.slice_thickness, 0.1, 20.0)
        _check_range("field_of_view", self.field_of_view, 50.0, 1000.0)
        _check_range("noise_sigma", self.noise_sigma, 0.5, 200.0)
        _check_range("lesion_diameter", self.lesion_diameter, 1.0, 200.0)
        _check_range("lesions", self.lesions, 0, _MAX_LESIONS)
        for name in ("overlap_fraction", "lesion_free_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.pixel_spacing is not None and not (
            math.isfinite(self.pixel_spacing) and self.pixel_spacing > 0
        ):
            raise ValueError(f"pixel_spacing must be a positive number, got {self.pixel_spacing}")


@dataclass(frozen=True, slots=True)
class SimpleCyst:
    """A simple cyst (not a lesion unless the options say so)."""

    site: LesionSite
    centre: tuple[float, float, float]
    diameter: float


@dataclass(frozen=True, slots=True, eq=False)
class AnatomicalCt:
    """One drawn study: patient, scanner, geometry and lesions; render it to get voxels.

    Attributes
    ----------
    seed, options
        What it was drawn from.
    region, phase
        Body region covered and contrast phase.
    slices, rows, columns
        Size in voxels.
    pixel_spacing, slice_spacing, slice_thickness
        Millimetres.
    origin
        ImagePositionPatient of the first (most inferior) slice.
    scanner, habitus
        The scanner's settings and the patient's build.
    lesions
        In the order of their numbers in the lesion label volume (1, 2, ...).
    cysts
        Simple cysts that are not lesions.
    implants
        Metal implants, if any.
    oral_contrast
        Whether the bowel holds positive oral contrast.
    iodine
        Scale of the intravenous contrast enhancement (dose, patient, tube voltage).
    """

    seed: int
    options: AnatomicalCtOptions
    region: BodyRegion
    phase: ContrastPhase
    slices: int
    rows: int
    columns: int
    pixel_spacing: float
    slice_spacing: float
    slice_thickness: float
    origin: tuple[float, float, float]
    scanner: Scanner
    habitus: Habitus
    lesions: tuple[AnatomicalLesion, ...]
    cysts: tuple[SimpleCyst, ...]
    implants: tuple[str, ...]
    oral_contrast: bool
    iodine: float
    plan: Plan = field(repr=False)

    def image_position(self, index: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice `index` (0 is the most inferior), millimetres."""
        x0, y0, z0 = self.origin
        return (x0, y0, z0 + index * self.slice_spacing)

    @property
    def description(self) -> str:
        """A SeriesDescription: region, phase, thickness and kernel."""
        phase = "non-contrast" if self.phase is ContrastPhase.NONE else self.phase.value
        return (
            f"Synthetic CT {self.region.value.replace('_', '-')} {phase.replace('_', ' ')} "
            f"{self.slice_thickness:g} mm {self.scanner.kernel.name}"
        )


@dataclass(frozen=True, slots=True, eq=False)
class RenderedCt:
    """The voxels of a rendered study, each (slices, rows, columns).

    Attributes
    ----------
    hu
        CT numbers, ``int16`` (-1024 to 3071).
    tissues
        :class:`CtTissue` label at each voxel centre, ``uint8``; a lesion voxel has
        its organ's label.
    lesions
        0, or the number (1, 2, ...) of the lesion at the voxel centre, ``uint8``.
    """

    hu: npt.NDArray[np.int16]
    tissues: npt.NDArray[np.uint8]
    lesions: npt.NDArray[np.uint8]

    def body_mask(self) -> npt.NDArray[np.bool_]:
        """The patient (everything but air, table and mattress)."""
        outside = np.zeros(256, dtype=bool)
        outside[[CtTissue.AIR, CtTissue.TABLE, CtTissue.TABLE_PAD]] = True
        return ~outside[self.tissues]

    def lesion_mask(self) -> npt.NDArray[np.bool_]:
        """Every lesion voxel."""
        return self.lesions > 0

    def host_mask(self) -> npt.NDArray[np.bool_]:
        """The tissue lesions can grow in: every organ of :data:`HOSTS` with its simple
        cysts, and every lesion voxel."""
        host = np.zeros(256, dtype=bool)
        host[[int(t) for tissues in HOSTS.values() for t in tissues]] = True
        host[CtTissue.CYST] = True
        return host[self.tissues] | (self.lesions > 0)


def _pick(rng: np.random.Generator, values: Sequence[enum.Enum]) -> int:
    return int(rng.integers(len(values)))


def _draw_thickness(rng: np.random.Generator, options: AnatomicalCtOptions) -> tuple[float, float]:
    """(thickness, spacing): common values preferred; some series overlap."""
    low, high = options.slice_thickness
    common = [t for t in _COMMON_THICKNESS if low <= t <= high]
    if low == high:
        thickness = low
    elif common and rng.random() < 0.7:
        thickness = common[int(rng.integers(len(common)))]
    else:
        thickness = round(float(rng.uniform(low, high)), 3)
    spacing = thickness
    if thickness >= 1.0 and rng.random() < options.overlap_fraction:
        spacing = round(thickness * float(rng.uniform(0.5, 0.8)), 3)
    return thickness, spacing


def _draw_field(
    rng: np.random.Generator, options: AnatomicalCtOptions, habitus: Habitus
) -> tuple[float, float, tuple[float, float]]:
    """(field of view, pixel spacing, reconstruction centre)."""
    matrix = max(options.rows, options.columns)
    width = 2 * (168.0 * habitus.width + habitus.fat)
    if options.pixel_spacing is not None:
        fov = options.pixel_spacing * matrix
    else:
        low, high = options.field_of_view
        # Most fields of view hold the whole body; some cut its sides off.
        factor = (
            float(rng.uniform(0.8, 0.95)) if rng.random() < 0.1 else float(rng.uniform(1.0, 1.3))
        )
        fov = min(max(width * factor, low), high)
    centre = (0.0, 0.0)
    if rng.random() < 0.3:
        centre = (float(rng.uniform(-20, 20)), float(rng.uniform(-20, 20)))
    return fov, fov / matrix, centre


def _draw_z(
    rng: np.random.Generator, region: BodyRegion, habitus: Habitus, slices: int, spacing: float
) -> float:
    """z of the first slice: a window inside the region, or centred on it if longer."""
    lo, hi = (habitus.height * z for z in _REGION_Z[region])
    coverage = (slices - 1) * spacing
    if coverage < hi - lo:
        return round(float(rng.uniform(lo, hi - coverage)), 3)
    return round((lo + hi) / 2 - coverage / 2 + float(rng.uniform(-20, 20)), 3)


def draw_anatomical_ct(seed: int, options: AnatomicalCtOptions | None = None) -> AnatomicalCt:
    """Draw a study: patient, contrast phase, scanner, geometry, lesions. Cheap; no voxels.

    Parameters
    ----------
    seed
        Non-negative seed; the same seed and options always give the same study.
    options
        What to draw from (the defaults when None).

    Returns
    -------
    AnatomicalCt
        Render it with :func:`render_anatomical_ct`.

    Raises
    ------
    ValueError
        If `seed` is negative.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    options = options or AnatomicalCtOptions()
    scan_rng = np.random.default_rng([seed, _SCAN_STREAM])
    region = options.regions[_pick(scan_rng, options.regions)]
    phase = options.phases[_pick(scan_rng, options.phases)]
    thickness, spacing = _draw_thickness(scan_rng, options)
    body_rng = np.random.default_rng([seed, _BODY_STREAM])
    habitus = draw_habitus(body_rng)
    fov, pixel_spacing, centre = _draw_field(scan_rng, options, habitus)
    scanner = draw_scanner(scan_rng, thickness, fov, options.noise_sigma)
    table, iodine = draw_tissue_table(scan_rng, phase, scanner.kvp)
    z0 = _draw_z(scan_rng, region, habitus, options.slices, spacing)
    origin = (
        round(centre[0] - (options.columns - 1) / 2 * pixel_spacing, 6),
        round(centre[1] - (options.rows - 1) / 2 * pixel_spacing, 6),
        z0,
    )
    anatomy = build_anatomy(body_rng, habitus, phase, implants=options.artefacts)
    geometry = (options.slices, options.rows, options.columns)
    box = _scanned_box(origin, geometry, pixel_spacing, spacing)
    lesions, cysts, extra = _draw_findings(seed, options, anatomy, box, table, phase)
    plan = Plan(
        seed, geometry, origin, pixel_spacing, spacing, thickness,
        paints=anatomy.paints + tuple(extra),
        lookups=_lookups(np.random.default_rng([seed, _LESION_STREAM, 1]), table, lesions),
        scanner=scanner,
        streaks=_streaks(anatomy, phase) if options.artefacts else (),
        body_y=habitus.centre[1],
    )  # fmt: skip
    return AnatomicalCt(
        seed, options, region, phase, *geometry, pixel_spacing, spacing, thickness, origin,
        scanner, habitus, tuple(lesions), tuple(cysts), anatomy.implants,
        anatomy.oral_contrast, iodine, plan,
    )  # fmt: skip


def _streaks(anatomy: Anatomy, phase: ContrastPhase) -> tuple[Streak, ...]:
    """Streak sources of this phase: a dense bolus streaks only in the arterial phase."""
    arterial = phase is ContrastPhase.ARTERIAL
    return tuple(s for s in anatomy.streaks if arterial or not s.bolus)


def _scanned_box(
    origin: tuple[float, float, float],
    shape: tuple[int, int, int],
    pixel_spacing: float,
    spacing: float,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The box of voxel centres the series covers, millimetres."""
    slices, rows, columns = shape
    lo = (origin[0], origin[1], origin[2])
    hi = (
        origin[0] + (columns - 1) * pixel_spacing,
        origin[1] + (rows - 1) * pixel_spacing,
        origin[2] + (slices - 1) * spacing,
    )
    return lo, hi


def _draw_findings(
    seed: int,
    options: AnatomicalCtOptions,
    anatomy: Anatomy,
    box: tuple[tuple[float, float, float], tuple[float, float, float]],
    table: TissueTable,
    phase: ContrastPhase,
) -> tuple[list[AnatomicalLesion], list[SimpleCyst], list[Paint]]:
    """Cysts, granulomas and lesions, each placed in what the ones before left."""
    rng = np.random.default_rng([seed, _LESION_STREAM])
    placement = Placement(anatomy.paints, anatomy.sites, box[0], box[1])
    extra: list[Paint] = []
    lesions: list[AnatomicalLesion] = []
    cysts: list[SimpleCyst] = []
    cyst_count = int(rng.integers(1, 4)) if rng.random() < 0.35 else 0
    for site, centre, diameter, paint in draw_cysts(rng, placement, cyst_count):
        if options.simple_cysts_are_lesions:
            lesion = build_lesion(
                rng, len(lesions), site, LesionKind.SIMPLE_CYST, LesionShape.ROUND, centre,
                diameter, table, phase,
            )  # fmt: skip
            lesions.append(lesion)
            extra.extend(lesion.paints)
        else:
            cysts.append(SimpleCyst(site, centre, diameter))
            extra.append(paint)
        placement = replace(placement, paints=anatomy.paints + tuple(extra))
    extra.extend(draw_granulomas(rng, placement))
    placement = replace(placement, paints=anatomy.paints + tuple(extra))
    wanted = 0
    if rng.random() >= options.lesion_free_fraction:
        wanted = int(rng.integers(options.lesions[0], options.lesions[1] + 1))
    for _ in range(wanted):
        drawn = draw_lesion(rng, placement, len(lesions), table, phase, options.lesion_diameter)
        if drawn is not None:
            lesions.append(drawn)
            extra.extend(drawn.paints)
            placement = replace(placement, paints=anatomy.paints + tuple(extra))
    return lesions, cysts, extra


def _lookups(
    rng: np.random.Generator, table: TissueTable, lesions: Sequence[AnatomicalLesion]
) -> Lookups:
    """Render-label lookups: the tissues' values, then each lesion part's."""
    hu, coarse, fine = table.hu.copy(), table.coarse.copy(), table.fine.copy()
    tissue = np.zeros(256, dtype=np.uint8)
    tissue[:TISSUE_COUNT] = np.arange(TISSUE_COUNT)
    lesion = np.zeros(256, dtype=np.uint8)
    for i, drawn in enumerate(lesions):
        for part, value in enumerate(drawn.hu):
            label = lesion_label(i, part)
            hu[label] = value
            coarse[label] = float(rng.uniform(0.0, 5.0))
            fine[label] = float(rng.uniform(3.0, 12.0))
            tissue[label] = HOSTS[drawn.site][0]
            lesion[label] = i + 1
    return Lookups(hu, coarse, fine, table.gradient.copy(), tissue, lesion)


def render_anatomical_ct(ct: AnatomicalCt) -> RenderedCt:
    """Render a drawn study's voxels: CT numbers, tissue labels, lesion labels."""
    hu, tissues, lesions = render(ct.plan)
    return RenderedCt(hu, tissues, lesions)


def _header(
    ct: AnatomicalCt,
    study_instance_uid: str | None,
    patient: tuple[str, str],
    series: tuple[int, str | None],
) -> SeriesHeader:
    patient_id = patient[0]
    study_uid = study_instance_uid or derive_uid(_UID_NAMESPACE, "study", str(ct.seed), patient_id)
    if len(study_uid) > 64 or not RE_VALID_UID.match(study_uid):
        raise ValueError(f"study_instance_uid is not a valid UID: {study_uid!r}")
    number, description = series[0], series[1] or ct.description
    if not 0 <= number <= 2**31 - 1:
        raise ValueError(f"series_number must fit an IS value, got {number}")
    series_uid = derive_uid(
        _UID_NAMESPACE, "series", study_uid, str(number), description, str(ct.seed),
        repr(ct.options),
    )  # fmt: skip
    contrast = None if ct.phase is ContrastPhase.NONE else "IODINATED CONTRAST"
    return SeriesHeader(
        namespace=_UID_NAMESPACE, study_uid=study_uid, series_uid=series_uid,
        patient=patient, series=(number, description[:64]), rows=ct.rows,
        columns=ct.columns, pixel_spacing=ct.pixel_spacing,
        slice_thickness=ct.slice_thickness,
        reconstruction_diameter=ct.scanner.field_of_view,
        spacing_between_slices=ct.slice_spacing, signed=ct.scanner.signed,
        study_description=f"Synthetic CT {ct.region.value.replace('_', ' ')}",
        body_part=_BODY_PART[ct.region], model_name="synthetic anatomical CT",
        kvp=str(ct.scanner.kvp), kernel=ct.scanner.kernel.name, contrast_agent=contrast,
    )  # fmt: skip


def build_anatomical_ct_series(
    ct: AnatomicalCt,
    rendered: RenderedCt | None = None,
    *,
    study_instance_uid: str | None = None,
    patient_id: str = "SYNTH0001",
    patient_name: str = "Synthetic^Patient",
    series_number: int = 1,
    series_description: str | None = None,
) -> list[Dataset]:
    """The slices of a study as CT Image Storage datasets, in instance-number order.

    Parameters
    ----------
    ct
        The drawn study.
    rendered
        Its voxels; rendered here when None.
    study_instance_uid
        Study to put the series in; by default one derived from the seed and patient.
    patient_id, patient_name
        Patient Module values.
    series_number, series_description
        General Series Module values (the description defaults to
        :attr:`AnatomicalCt.description`); they also enter the series' UIDs.

    Returns
    -------
    list of pydicom.dataset.Dataset
        With File Meta Information for Explicit VR Little Endian.

    Raises
    ------
    ValueError
        If a UID or the series number is not valid; the message names it.
    """
    header = _header(
        ct, study_instance_uid, (patient_id, patient_name), (series_number, series_description)
    )
    rendered = rendered if rendered is not None else render_anatomical_ct(ct)
    out = []
    for index in range(ct.slices):
        hu = rendered.hu[index]
        values = hu if ct.scanner.signed else hu.astype(np.int32) + 1024
        out.append(slice_dataset(header, index, ct.image_position(index), values))
    return out


def anatomical_volume(ct: AnatomicalCt, rendered: RenderedCt) -> Volume:
    """The rendered CT numbers as a :class:`~dicomnode.kernel.Volume`, without DICOM.

    Its geometry and (derived) UIDs match :func:`build_anatomical_ct_series` with the
    default arguments, so masks on it fit those files too.
    """
    header = _header(ct, None, ("SYNTH0001", "Synthetic^Patient"), (1, None))
    sops = tuple(
        derive_uid(_UID_NAMESPACE, "sop", header.series_uid, str(i)) for i in range(ct.slices)
    )
    return Volume(
        array=rendered.hu.astype(np.float32),
        spacing=(ct.slice_spacing, ct.pixel_spacing, ct.pixel_spacing),
        origin=ct.origin,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        sop_instance_uids=sops,
        frame_numbers=(1,) * ct.slices,
        series_instance_uid=header.series_uid,
        frame_of_reference_uid=derive_uid(_UID_NAMESPACE, "frame-of-reference", header.series_uid),
    )


def anatomical_training_sample(
    seed: int, options: AnatomicalCtOptions | None = None
) -> tuple[Volume, npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Draw and render one study for training, without DICOM: (volume, lesions, body, host).

    The host mask is :meth:`RenderedCt.host_mask`.

    Fits :data:`dicomnode.models.ct_lesion_training.VolumeSource` (bind the options
    with :func:`functools.partial`).
    """
    ct = draw_anatomical_ct(seed, options)
    rendered = render_anatomical_ct(ct)
    return (
        anatomical_volume(ct, rendered),
        rendered.lesion_mask(),
        rendered.body_mask(),
        rendered.host_mask(),
    )

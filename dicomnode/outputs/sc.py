"""Secondary Capture images with a model's mask outlines burned in, for viewers without SEG.

Each image is one key slice of the source series, windowed to 8 bits, with the outline
of every label's mask drawn in that label's colour, a black band on top reading
"NOT FOR DIAGNOSTIC USE" and a band below naming the labels in their colours. The
image is enlarged by an integer factor (nearest neighbour) until it is at least
``min_columns`` wide, so the text is legible on small images; it therefore carries no
Pixel Spacing and is not meant for measuring. Burned In Annotation is YES (PS3.3
C.7.6.1.1.4), the Source Image Sequence names the slice it shows, and the images are
in the source's study, in a new series, with deterministic UIDs.

Key slices: for every label with a mask, the slice where its area is largest; at most
``max_images`` of them (the labels with the largest areas first), in slice order.
The text uses Pillow's built-in bitmap font (Pillow comes with highdicom), so no font
file is needed and the pixels are the same on every machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.kernel import SegmentLabel, Volume
from dicomnode.outputs.identity import MANUFACTURER, SERIES_NUMBERS, Producer
from dicomnode.outputs.identity import series_description as describe_series
from dicomnode.outputs.seg import check_masks, check_series_number

__all__ = ["BANNER", "COLOURS", "banner_mask", "build_overlay_capture", "key_slices"]

logger = logging.getLogger(__name__)

#: Text burned into the top of every overlay image.
BANNER = "NOT FOR DIAGNOSTIC USE"
#: Outline colour of label ``i`` (in label order) is ``COLOURS[i % len(COLOURS)]``.
COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48),
    (48, 255, 48),
    (64, 160, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 140, 0),
    (160, 96, 255),
    (255, 255, 255),
)
_BANNER_COLOUR = np.array([255, 255, 0], dtype=np.uint8)  # yellow on black
_PAD = 4  # pixels round the text in a band
_PAIRED = frozenset(
    "BREAST LUNG KIDNEY EYE EAR HAND FOOT KNEE HIP SHOULDER ARM LEG ELBOW WRIST ANKLE"
    " EXTREMITY OVARY TESTIS CLAVICLE".split()
)
_LETTERS = {0: ("R", "L"), 1: ("A", "P"), 2: ("F", "H")}  # LPS axis -> (-, +)


def key_slices(masks: npt.NDArray[np.bool_], max_images: int = 8) -> list[int]:
    """Return the slices to capture: per non-empty label, its largest-area slice.

    Parameters
    ----------
    masks
        ``bool`` array (labels, slices, rows, columns).
    max_images
        Most slices to return; the labels with the largest areas are kept.

    Returns
    -------
    list of int
        Distinct slice indices, ascending; empty when every mask is empty.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    areas = masks.sum(axis=(2, 3))  # (labels, slices)
    best = [(int(a.max()), int(a.argmax())) for a in areas if a.max() > 0]
    chosen: list[int] = []
    for _, index in sorted(best, key=lambda pair: -pair[0]):
        if index not in chosen and len(chosen) < max_images:
            chosen.append(index)
    return sorted(chosen)


def banner_mask(text: str, width: int) -> npt.NDArray[np.bool_]:
    """Render `text` in the built-in bitmap font, scaled to fit `width` pixels.

    Parameters
    ----------
    text
        What to write (Latin-1).
    width
        Width available, pixels.

    Returns
    -------
    numpy.ndarray
        ``bool`` array (rows, columns) of the text's pixels, at most `width` wide.
    """
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("1", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(canvas).text((-left, -top), text, fill=1, font=font)
    glyphs = np.array(canvas, dtype=np.bool_)
    # Up to 4x, filling about 90 % of the width; cut (never squeeze) when too wide.
    scale = max(1, min(4, int(0.9 * width) // glyphs.shape[1]))
    scaled = np.repeat(np.repeat(glyphs, scale, axis=0), scale, axis=1)
    return scaled[:, :width]


def build_overlay_capture(
    sources: Sequence[Dataset],
    volume: Volume,
    masks: npt.NDArray[np.bool_],
    labels: Sequence[SegmentLabel],
    *,
    model_name: str,
    model_version: str,
    job_key: str,
    series_number: int = SERIES_NUMBERS["sc"] + 1,
    max_images: int = 8,
    min_columns: int = 512,
) -> list[Dataset]:
    """Build Secondary Capture images of the key slices with the outlines burned in.

    Parameters
    ----------
    sources
        The images of the series `volume` was built from.
    volume
        The volume the masks were drawn on (its pixels are what is shown).
    masks
        ``bool`` array (labels, slices, rows, columns) on the volume's grid.
    labels
        One per mask plane (names for the legend, order for the colours).
    model_name, model_version, job_key
        Identify the model and the job; the UIDs derive from the job and the slices.
    series_number
        Series Number of the images.
    max_images
        Most images to make (see :func:`key_slices`).
    min_columns
        The image is enlarged by an integer factor to at least this width.

    Returns
    -------
    list of pydicom.dataset.Dataset
        Secondary Capture Image Storage datasets (RGB), one per key slice; empty when
        every mask is empty.

    Raises
    ------
    ValueError
        If an argument does not fit the others; the message names the attribute.
    """
    producer = Producer(model_name, model_version, job_key)
    check_masks(masks, labels, volume)
    check_series_number(series_number)
    if not 1 <= min_columns <= 4096:
        raise ValueError(f"min_columns must be between 1 and 4096, got {min_columns}")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
    if missing:
        raise ValueError(f"volume.sop_instance_uids names instance {missing[0]} not in sources")
    slices = key_slices(masks, max_images)
    series_uid = producer.uid("sc-series", volume.series_instance_uid)
    images = []
    for number, index in enumerate(slices, start=1):
        source = by_uid[volume.sop_instance_uids[index]]
        pixels = _render(volume.array[index], masks[:, index], labels, source, min_columns)
        images.append(
            _capture(producer, source, volume, index, pixels, (series_uid, series_number, number))
        )
    logger.info(
        "overlay captures built",
        extra={
            "action": "sc_built",
            "series_instance_uid": volume.series_instance_uid,
            "count": len(images),
        },
    )
    return images


def _render(
    values: npt.NDArray[np.float32],
    planes: npt.NDArray[np.bool_],
    labels: Sequence[SegmentLabel],
    source: Dataset,
    min_columns: int,
) -> npt.NDArray[np.uint8]:
    """Window, enlarge, draw outlines, add the banner and the legend: (rows, cols, 3)."""
    grey = _window(values, source)
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=2)
    for i, plane in enumerate(planes):
        rgb[_outline(plane)] = COLOURS[i % len(COLOURS)]
    factor = max(1, math.ceil(min_columns / rgb.shape[1]))
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    width = rgb.shape[1]
    banner = _band(banner_mask(BANNER, width), width, _BANNER_COLOUR)
    legend = _legend(planes, labels, width)
    return np.ascontiguousarray(np.concatenate([banner, rgb, legend], axis=0))


def _window(values: npt.NDArray[np.float32], source: Dataset) -> npt.NDArray[np.uint8]:
    """Linear VOI window of the source (PS3.3 C.11.2.1.2), else the 1st-99th percentile."""
    centre, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    # The volume mirrors MONOCHROME1, so the source's window no longer applies.
    inverted = str(source.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if centre is None or width is None or width <= 1 or inverted:
        low, high = (float(v) for v in np.percentile(values, [1.0, 99.0]))
        centre, width = (low + high) / 2, max(high - low, 1.0) + 1
    scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    window: npt.NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return window


def _first(value: object) -> float | None:
    """The first value of a (possibly multi-valued) DS, or None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _outline(plane: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Mask pixels with a 4-neighbour outside the mask (or on the image border)."""
    padded = np.pad(plane, 1)
    inner = (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    outline: npt.NDArray[np.bool_] = plane & ~inner
    return outline


def _band(
    text: npt.NDArray[np.bool_], width: int, colour: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """A black band `width` wide with `text` centred in `colour`."""
    band = np.zeros((text.shape[0] + 2 * _PAD, width, 3), dtype=np.uint8)
    left = (width - text.shape[1]) // 2
    band[_PAD : _PAD + text.shape[0], left : left + text.shape[1]][text] = colour
    return band


def _legend(
    planes: npt.NDArray[np.bool_], labels: Sequence[SegmentLabel], width: int
) -> npt.NDArray[np.uint8]:
    """A black band naming the labels shown on this slice, each in its colour."""
    shown = [
        (i, label)
        for i, (label, plane) in enumerate(zip(labels, planes, strict=True))
        if plane.any()
    ]
    glyphs = [banner_mask(label.name, width // 2) for _, label in shown]
    height = max((g.shape[0] for g in glyphs), default=0)
    band = np.zeros((height + 2 * _PAD, width, 3), dtype=np.uint8)
    left = _PAD
    for (i, _), text in zip(shown, glyphs, strict=True):
        room = width - left
        if room <= 0:
            break
        cut = text[:, :room]
        band[_PAD : _PAD + cut.shape[0], left : left + cut.shape[1]][cut] = COLOURS[
            i % len(COLOURS)
        ]
        left += cut.shape[1] + 4 * _PAD
    return band


def _orientation(source: Dataset, volume: Volume) -> list[str]:
    """PatientOrientation of the source, else derived from the volume's orientation."""
    given = source.get("PatientOrientation")
    if given and len(given) == 2 and all(given):
        return [str(v) for v in given]
    # ImageOrientationPatient, at the top level or in the functional groups.
    geometry = any(
        keyword in source
        for keyword in (
            "ImageOrientationPatient",
            "SharedFunctionalGroupsSequence",
            "PerFrameFunctionalGroupsSequence",
        )
    )
    if not geometry:
        raise ValueError(
            f"source {source.SOPInstanceUID} has neither PatientOrientation nor"
            " ImageOrientationPatient: the capture needs PatientOrientation"
        )
    cosines = volume.orientation
    return [_letters(cosines[:3]), _letters(cosines[3:])]


def _letters(direction: Sequence[float]) -> str:
    """Orientation letters of a direction, strongest axis first (PS3.3 C.7.6.1.1.1)."""
    axes = sorted(range(3), key=lambda a: -abs(direction[a]))
    return "".join(_LETTERS[a][direction[a] > 0] for a in axes if abs(direction[a]) > 0.25)


def _capture(
    producer: Producer,
    source: Dataset,
    volume: Volume,
    index: int,
    pixels: npt.NDArray[np.uint8],
    series: tuple[str, int, int],
) -> Dataset:
    series_uid, series_number, instance_number = series
    orientation = _orientation(source, volume)
    laterality = source.get("ImageLaterality") or source.get("Laterality")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=producer.uid("sc", volume.series_instance_uid, str(index)),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        # highdicom takes one letter per direction; the full values are set below.
        patient_orientation=(orientation[0][0], orientation[1][0]),
        laterality=laterality if laterality in ("L", "R") else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        manufacturer_model_name=producer.model_name,
        software_versions=list(producer.software_versions),
        series_description=describe_series("sc", producer.model_name),
    )
    sc.PatientOrientation = orientation
    body_part = str(source.get("BodyPartExamined") or "").upper()
    if body_part:
        sc.BodyPartExamined = body_part
    if "Laterality" not in sc and (not body_part or body_part in _PAIRED):
        # Type 2C for a paired (or unknown) body part (General Series, PS3.3 C.7.3.1):
        # empty means unknown.
        sc.Laterality = ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = (
        f"Mask outlines of {producer.model_name} {producer.model_version} burned in; {BANNER}"
    )
    sc.ImageComments = BANNER
    sc.SourceImageSequence = [_source_reference(source, volume.frame_numbers[index])]
    return sc


def _source_reference(source: Dataset, frame: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if int(source.get("NumberOfFrames") or 1) > 1:
        item.ReferencedFrameNumber = frame
    return item

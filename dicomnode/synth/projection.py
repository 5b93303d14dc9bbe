"""Shared pieces of the synthetic projection radiographs (mammography and chest X-ray).

Both generators draw on a millimetre grid, add tissue texture made of power-law
filtered noise (the 1/f^beta spectrum of real radiographic anatomy), draw lesions from
the same few shapes (circumscribed blob, spiculated mass, calcification cluster) and
wrap the 12-bit pixels in a For Presentation X-ray header. Everything is deterministic
given the seeds, the UIDs included (RFC 4122 version 5 names under ``2.25.``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from dicomnode import __version__

__all__ = [
    "UID_NAMESPACE",
    "Blob",
    "Grid",
    "ImageHeader",
    "add_code_sequence",
    "build_projection_dataset",
    "code_item",
    "draw_blob",
    "power_law_noise",
    "to_stored",
]

FloatArray = npt.NDArray[np.float32]

# 12 bits stored, unsigned (PS3.3 C.8.11.7 allows 10 to 16 for MG; DX likewise).
_BITS_STORED = 12
_MAX_STORED = float(2**_BITS_STORED - 1)

# Fixed dates keep the output byte-identical between runs.
_DATE = "20200101"
_TIME = "120000"

#: Namespace of every UID the projection generators (mg, cxr) derive with
#: :func:`dicomnode.uids.derive_uid`; shared so their UIDs never collide.
UID_NAMESPACE = "dicomnode.synth.projection"


@dataclass(frozen=True, slots=True)
class Grid:
    """A pixel grid in millimetres: ``rows`` x ``columns`` pixels of ``spacing`` mm.

    Attributes
    ----------
    rows, columns
        Size in pixels.
    spacing
        (between rows, between columns), millimetres.
    """

    rows: int
    columns: int
    spacing: tuple[float, float]

    def mm(self) -> tuple[FloatArray, FloatArray]:
        """Return the (y, x) millimetre coordinates of the pixel centres, broadcastable."""
        y = (np.arange(self.rows, dtype=np.float32) + 0.5) * np.float32(self.spacing[0])
        x = (np.arange(self.columns, dtype=np.float32) + 0.5) * np.float32(self.spacing[1])
        return y[:, np.newaxis], x[np.newaxis, :]

    def box(self, centre: tuple[float, float], half: float) -> tuple[slice, slice]:
        """Return the pixel slices covering a square of half-side `half` mm at `centre` (y, x)."""
        (cy, cx), (sy, sx) = centre, self.spacing
        r0 = max(0, math.floor((cy - half) / sy))
        r1 = min(self.rows, math.ceil((cy + half) / sy) + 1)
        c0 = max(0, math.floor((cx - half) / sx))
        c1 = min(self.columns, math.ceil((cx + half) / sx) + 1)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def power_law_noise(grid: Grid, rng: np.random.Generator, beta: float) -> FloatArray:
    """Return zero-mean, unit-variance noise with a 1/f^beta power spectrum.

    Real mammographic and chest anatomy has beta near 3 (Burgess 2001); a smaller
    beta gives finer texture. The spectrum is shaped in the Fourier domain, so the
    cost is one FFT pair whatever the grid size.

    Parameters
    ----------
    grid
        The grid to fill.
    rng
        Seeded generator.
    beta
        Spectral exponent of the power spectrum.
    """
    white = rng.standard_normal((grid.rows, grid.columns)).astype(np.float32)
    fy = np.fft.fftfreq(grid.rows, d=grid.spacing[0])[:, np.newaxis]
    fx = np.fft.rfftfreq(grid.columns, d=grid.spacing[1])[np.newaxis, :]
    # Frequencies below 1/200 mm^-1 are flattened: no structure larger than the organ.
    f = np.sqrt(fy**2 + fx**2) + 1.0 / 200.0
    shaped = np.fft.irfft2(np.fft.rfft2(white) * f ** (-beta / 2.0), s=white.shape)
    shaped -= shaped.mean()
    out: FloatArray = (shaped / (shaped.std() + 1e-12)).astype(np.float32)
    return out


@dataclass(frozen=True, slots=True)
class Blob:
    """A lesion-like shape: what real lesions and one-view pseudo-lesions are drawn from.

    Attributes
    ----------
    kind
        ``round`` (circumscribed oval), ``spiculated`` (irregular core with radiating
        spicules) or ``calcifications`` (a cluster of bright specks).
    centre
        (y, x) in millimetres on the image.
    radius
        Core radius (round, spiculated) or cluster radius (calcifications), millimetres.
    contrast
        Peak intensity added to the tissue, on the 0-1 image scale.
    seed
        Seeds the shape details (orientation, spicules, speck positions).
    """

    kind: str
    centre: tuple[float, float]
    radius: float
    contrast: float
    seed: int


def draw_blob(image: FloatArray, grid: Grid, blob: Blob) -> npt.NDArray[np.bool_]:
    """Add `blob` to `image` in place and return its ground-truth mask.

    The mask is where the lesion adds more than a tenth of its peak intensity for
    masses; for a calcification cluster it is the disc that holds the specks (how
    clusters are outlined in practice).
    """
    rng = np.random.default_rng(blob.seed)
    extent = blob.radius * (4.2 if blob.kind == "spiculated" else 1.6) + 3.0
    rows, cols = grid.box(blob.centre, extent)
    y, x = grid.mm()
    dy = y[rows] - np.float32(blob.centre[0])
    dx = x[:, cols] - np.float32(blob.centre[1])
    if blob.kind == "calcifications":
        added = _calcifications(dy, dx, blob, rng)
        region = dy**2 + dx**2 <= (blob.radius + 1.5) ** 2
    else:
        added = _round(dy, dx, blob, rng)
        if blob.kind == "spiculated":
            added = np.maximum(added, _spicules(dy, dx, blob, rng))
        region = added > 0.1 * blob.contrast
    image[rows, cols] += added
    mask = np.zeros(image.shape, dtype=np.bool_)
    mask[rows, cols] = region
    return mask


def _round(dy: FloatArray, dx: FloatArray, blob: Blob, rng: np.random.Generator) -> FloatArray:
    """A dense oval with a sharp (circumscribed) margin and a domed profile."""
    angle = rng.uniform(0.0, math.pi)
    aspect = rng.uniform(0.75, 1.0)
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / aspect
    rho = np.sqrt(u**2 + v**2) / np.float32(blob.radius)
    if blob.kind == "spiculated":
        # An irregular (lobulated) core: the radius wobbles with the angle.
        phase = rng.uniform(0.0, 2 * math.pi, 3)
        theta = np.arctan2(v, u)
        wobble = sum(0.12 * np.cos((k + 2) * theta + phase[k]) for k in range(3))
        rho = rho / (1.0 + wobble)
    # Thickness of a sphere through its projection, with a 0.4 mm soft edge.
    dome = np.sqrt(np.clip(1.0 - rho**2, 0.0, None)) * 0.6 + 0.4
    edge = 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) * blob.radius / 0.4, -30.0, 30.0)))
    return (np.float32(blob.contrast) * dome * edge).astype(np.float32)


def _spicules(dy: FloatArray, dx: FloatArray, blob: Blob, rng: np.random.Generator) -> FloatArray:
    """Lines radiating from the core, thick at the root and tapering (a stellate margin).

    Spicules are 1.5-2.5 mm wide at the root and reach 2.5-4 core radii (a 6-10 mm core
    gives spicules of 15-40 mm, as in spiculated carcinomas), so the stellate pattern
    survives a reader's (or a model's) downsampling to ~2 mm pixels.
    """
    count = int(rng.integers(6, 12))
    angles = rng.uniform(0.0, 2 * math.pi) + np.linspace(0, 2 * math.pi, count, endpoint=False)
    angles = (angles + rng.normal(0.0, 0.2, count)).astype(np.float32)
    lengths = (blob.radius * rng.uniform(2.5, 4.0, count)).astype(np.float32)
    roots = rng.uniform(1.5, 2.5, count).astype(np.float32)
    distance = np.sqrt(dy**2 + dx**2)[..., np.newaxis]
    theta = np.arctan2(dy, dx)[..., np.newaxis]
    across = np.abs(np.sin(theta - angles)) * distance
    along = np.cos(theta - angles) * distance
    fade = np.clip(1.0 - along / lengths, 0.0, 1.0)
    width = 0.3 + roots * fade
    line = np.exp(-((across / width) ** 2)) * np.sqrt(fade)
    line = np.where(along > 0, line, 0.0)
    out: FloatArray = (np.float32(0.75 * blob.contrast) * line.max(axis=-1)).astype(np.float32)
    return out


def _calcifications(
    dy: FloatArray, dx: FloatArray, blob: Blob, rng: np.random.Generator
) -> FloatArray:
    """Bright specks of 0.4-0.9 mm scattered in a disc (a microcalcification cluster)."""
    count = int(rng.integers(10, 25))
    r = blob.radius * np.sqrt(rng.uniform(0.0, 1.0, count))
    phi = rng.uniform(0.0, 2 * math.pi, count)
    sizes = rng.uniform(0.4, 0.9, count)
    # Specks smaller than a pixel would vanish: the Gaussian is at least ~a pixel wide.
    out = np.zeros(np.broadcast_shapes(dy.shape, dx.shape), dtype=np.float32)
    for k in range(count):
        sigma = max(float(sizes[k]), 0.6)
        d2 = (dy - r[k] * math.sin(phi[k])) ** 2 + (dx - r[k] * math.cos(phi[k])) ** 2
        out += np.float32(blob.contrast) * np.exp(-d2 / (2 * sigma**2)).astype(np.float32)
    return out


def to_stored(image: FloatArray) -> npt.NDArray[np.uint16]:
    """Map the 0-1 image scale to 12-bit stored values (clipped, rounded)."""
    scaled = np.clip(image, 0.0, 1.0) * np.float32(_MAX_STORED)
    stored: npt.NDArray[np.uint16] = np.rint(scaled).astype("<u2")
    return stored


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """Return one Code Sequence Macro item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What differs between the projection images of a study.

    Attributes
    ----------
    sop_class_uid, modality
        Storage SOP Class and Modality (``MG``, ``DX``).
    study_instance_uid, series_instance_uid, sop_instance_uid, frame_of_reference_uid
        The image's UIDs.
    patient_id
        PatientID (synthetic).
    series_number, series_description, study_description, body_part
        Descriptive values.
    spacing
        ImagerPixelSpacing (row, column), millimetres.
    """

    sop_class_uid: str
    modality: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    frame_of_reference_uid: str
    patient_id: str
    series_number: int
    series_description: str
    study_description: str
    body_part: str
    spacing: tuple[float, float]


def _ds(value: float) -> str:
    return format_number_as_ds(round(value, 6) + 0.0)


def build_projection_dataset(header: ImageHeader, stored: npt.NDArray[np.uint16]) -> Dataset:
    """Build the modules every For Presentation projection image shares.

    SOP Common, Patient, General Study, General Series, DX Series (presentation
    intent), Frame of Reference, General Equipment, General Image, Image Pixel,
    Acquisition Context and DX Image / DX Detector values (PS3.3 A.26, A.27). The
    caller adds the modality-specific modules (laterality, view, orientation).
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(header.sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(header.sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = header.sop_class_uid
    ds.SOPInstanceUID = header.sop_instance_uid
    ds.InstanceCreationDate = _DATE
    ds.InstanceCreationTime = _TIME
    # Acquisition Context Module (PS3.3 C.7.6.14), mandatory in the DX and MG IODs:
    # its sequence is Type 2, present and empty when no context is recorded.
    ds.AcquisitionContextSequence = Sequence()
    _add_patient_study_series(ds, header)
    _add_image_pixel(ds, header, stored)
    return ds


def add_patient_and_study(
    ds: Dataset, patient_name: str, patient_id: str, study_uid: str, description: str
) -> None:
    """The Patient and General Study modules of a synthetic study (every generator's)."""
    # Patient: birth date is type 2 (present, empty); sex "O" for a phantom.
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # General Study: referring physician and accession number are type 2.
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _DATE
    ds.StudyTime = _TIME
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.StudyDescription = description


def _add_patient_study_series(ds: Dataset, header: ImageHeader) -> None:
    add_patient_and_study(
        ds, "Synthetic^Patient", header.patient_id, header.study_instance_uid,
        header.study_description,
    )  # fmt: skip
    ds.Modality = header.modality
    ds.SeriesInstanceUID = header.series_instance_uid
    ds.SeriesNumber = header.series_number
    ds.SeriesDescription = header.series_description
    ds.SeriesDate = _DATE
    ds.SeriesTime = _TIME
    ds.BodyPartExamined = header.body_part
    # DX Series Module: Presentation Intent Type is type 1 (PS3.3 C.8.11.1).
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "dicomnode"
    ds.ManufacturerModelName = "synthetic projection phantom"
    ds.SoftwareVersions = __version__
    ds.DeviceSerialNumber = "0"


def _add_image_pixel(ds: Dataset, header: ImageHeader, stored: npt.NDArray[np.uint16]) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.ContentDate = _DATE
    ds.ContentTime = _TIME
    ds.AcquisitionDate = _DATE
    ds.AcquisitionTime = _TIME
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = "Synthetic phantom, not patient data"
    ds.ImagerPixelSpacing = [_ds(header.spacing[0]), _ds(header.spacing[1])]
    ds.DetectorType = "DIRECT"
    # DX Image Module (PS3.3 C.8.11.3): log relationship, higher value = more
    # attenuation, identity Presentation LUT for MONOCHROME2.
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS_STORED
    ds.HighBit = _BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OW", stored.tobytes())


def add_code_sequence(ds: Dataset, keyword: str, value: str, scheme: str, meaning: str) -> None:
    """Set the Code Sequence `keyword` on `ds` to one item."""
    setattr(ds, keyword, Sequence([code_item(value, scheme, meaning)]))

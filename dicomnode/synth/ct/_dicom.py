"""The CT Image IOD (PS3.3 A.3) of one synthetic slice, shared by both CT generators.

Fixed dates keep the output byte-identical between runs; UIDs derive from names
(:func:`dicomnode.uids.derive_uid`). The defaults of :class:`SeriesHeader` are those
of the simple phantom, whose files must not change (the shipped weights were trained
on them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from dicomnode import __version__
from dicomnode.synth.projection import add_patient_and_study
from dicomnode.uids import derive_uid

__all__ = ["SeriesHeader", "format_ds", "slice_dataset"]

_DATE = "20200101"
_TIME = "120000"


def format_ds(value: float) -> str:
    """Format a DS value: rounded to a micrometre so float noise never shows."""
    return format_number_as_ds(round(value, 6) + 0.0)


@dataclass(frozen=True, slots=True)
class SeriesHeader:
    """What the slices of one series share.

    Attributes
    ----------
    namespace
        Namespace of the derived SOP Instance and Frame of Reference UIDs.
    study_uid, series_uid
        The study's and series' UIDs.
    patient
        (PatientID, PatientName).
    series
        (SeriesNumber, SeriesDescription).
    rows, columns, pixel_spacing, slice_thickness
        Image geometry (millimetres).
    spacing_between_slices
        Written when not None (it differs from the thickness for overlapping slices).
    signed
        Signed 16-bit pixels with intercept 0; else 12-bit unsigned, intercept -1024.
    study_description, body_part, model_name, kvp, kernel
        Descriptive values.
    contrast_agent
        ContrastBolusAgent when contrast was given (Contrast/Bolus Module), else None.
    """

    namespace: str
    study_uid: str
    series_uid: str
    patient: tuple[str, str]
    series: tuple[int, str]
    rows: int
    columns: int
    pixel_spacing: float
    slice_thickness: float
    reconstruction_diameter: float
    spacing_between_slices: float | None = None
    signed: bool = False
    study_description: str = "Synthetic chest CT"
    body_part: str = "CHEST"
    model_name: str = "synthetic CT phantom"
    kvp: str = "120"
    kernel: str = "STANDARD"
    contrast_agent: str | None = None


def slice_dataset(
    header: SeriesHeader,
    index: int,
    position: tuple[float, float, float],
    hu_or_stored: npt.NDArray[np.integer],
) -> Dataset:
    """Build one slice. `hu_or_stored` is HU for a signed header, else stored values."""
    sop_uid = derive_uid(header.namespace, "sop", header.series_uid, str(index))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = _DATE
    ds.InstanceCreationTime = _TIME
    _add_patient_and_study(ds, header)
    _add_series_and_equipment(ds, header)

    # General Image and General Acquisition
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = _DATE
    ds.AcquisitionTime = _TIME
    ds.ContentDate = _DATE
    ds.ContentTime = _TIME
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = "Synthetic phantom, not patient data"

    # Image Plane: rows along +y, columns along +x, so the normal is +z.
    ds.PixelSpacing = [format_ds(header.pixel_spacing)] * 2
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = [format_ds(value) for value in position]
    ds.SliceThickness = format_ds(header.slice_thickness)
    if header.spacing_between_slices is not None:
        ds.SpacingBetweenSlices = format_ds(header.spacing_between_slices)
    ds.SliceLocation = format_ds(position[2])
    _add_ct_image(ds, header, hu_or_stored)
    return ds


def _add_ct_image(ds: Dataset, header: SeriesHeader, values: npt.NDArray[np.integer]) -> None:
    # CT Image (PS3.3 C.8.2.1.1): 12 of 16 bits unsigned, HU = stored - 1024, or
    # 16 bits signed with HU = stored.
    ds.KVP = header.kvp
    ds.RescaleIntercept = format_ds(0.0 if header.signed else -1024.0)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.ConvolutionKernel = header.kernel
    ds.ReconstructionDiameter = format_ds(header.reconstruction_diameter)
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
    if header.contrast_agent is not None:
        # Contrast/Bolus Module (PS3.3 C.7.6.4): required when contrast was used.
        ds.ContrastBolusAgent = header.contrast_agent
        ds.ContrastBolusRoute = "IV"

    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = header.rows
    ds.Columns = header.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if header.signed else 12
    ds.HighBit = 15 if header.signed else 11
    ds.PixelRepresentation = 1 if header.signed else 0
    encoded = values.astype("<i2" if header.signed else "<u2")
    ds.add_new(0x7FE00010, "OW", encoded.tobytes())


def _add_patient_and_study(ds: Dataset, header: SeriesHeader) -> None:
    patient_id, patient_name = header.patient
    add_patient_and_study(ds, patient_name, patient_id, header.study_uid, header.study_description)


def _add_series_and_equipment(ds: Dataset, header: SeriesHeader) -> None:
    series_number, series_description = header.series
    # General Series: PatientPosition is required for CT (PS3.3 C.7.3.1.1.2).
    ds.Modality = "CT"
    ds.SeriesInstanceUID = header.series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = _DATE
    ds.SeriesTime = _TIME
    ds.BodyPartExamined = header.body_part
    ds.PatientPosition = "HFS"
    # Frame of Reference: every slice of the series shares one.
    ds.FrameOfReferenceUID = derive_uid(header.namespace, "frame-of-reference", header.series_uid)
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "dicomnode"
    ds.ManufacturerModelName = header.model_name
    ds.SoftwareVersions = __version__

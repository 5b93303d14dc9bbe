"""The validation gate every output passes before it is sent (docs/outputs.md).

:func:`validate_output` writes the object (unless it is given the file), runs
``dciodvfy -new`` (Debian dicom3tools), and reads the file back with pydicom and
highdicom:

- ``dciodvfy`` prints ``Error - ...`` lines for an invalid object and ``Warning - ...``
  lines for questionable ones. Errors fail the gate; warnings are recorded.
- For SR, DCMTK ``dsrdump -v +Pt`` renders the tree when it is installed; its stderr
  ``E:`` lines are errors and ``W:`` lines warnings.
- SEG: ``highdicom.seg.Segmentation.from_dataset`` must parse it, and, when the
  masks and volume it was built from are given, its pixels on every source frame must
  equal the non-empty masks (segments 1..n, as :mod:`dicomnode.outputs.seg` numbers
  them).
- SR: highdicom must parse it as a TID 1500 Measurement Report with at least one
  measurement group.
- Secondary Capture: the pixels must decode to RGB and Burned In Annotation be YES.

When ``dciodvfy`` is not installed the gate fails with an error saying so, unless the
caller passes ``require_dciodvfy=False`` (for tests and development hosts).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, SegmentationStorage

from dicomnode.kernel import Volume

__all__ = ["ValidationReport", "validate_output"]

logger = logging.getLogger(__name__)

_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """The verdict of the validation gate on one output.

    Attributes
    ----------
    ok
        True when nothing failed: no validator error and a clean read-back.
    errors
        Why it failed (validator ``Error`` / ``E:`` lines, read-back mismatches).
    warnings
        What the validators warned about; never fatal.
    validator
        What ran, e.g. ``dciodvfy+dsrdump+highdicom``.
    """

    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validator: str = ""


def validate_output(
    ds: Dataset,
    path: Path | None = None,
    *,
    masks: npt.NDArray[np.bool_] | None = None,
    volume: Volume | None = None,
    require_dciodvfy: bool = True,
    timeout_s: float = _TIMEOUT_S,
) -> ValidationReport:
    """Check one output with dciodvfy (and dsrdump for SR) and a highdicom read-back.

    Parameters
    ----------
    ds
        The output (a highdicom SEG, SR or SC, or any dataset with File Meta).
    path
        The file `ds` was written to; when None it is written to a temporary file.
    masks, volume
        For a SEG: the masks and volume given to
        :func:`~dicomnode.outputs.seg.build_segmentation`, to compare the pixels.
    require_dciodvfy
        When True (the default) a missing ``dciodvfy`` is an error.
    timeout_s
        Seconds each validator may run.

    Returns
    -------
    ValidationReport
        ``ok`` is False when anything failed; ``errors`` says what.

    Raises
    ------
    ValueError
        If only one of `masks` and `volume` is given.
    """
    if (masks is None) != (volume is None):
        raise ValueError("masks and volume must be given together (or neither)")
    errors: list[str] = []
    warnings: list[str] = []
    ran: list[str] = []
    with _written(ds, path, errors) as file:
        if file is not None:
            is_sr = str(ds.get("Modality", "")) == "SR"
            tool_errors: list[str] = []
            tool_warnings: list[str] = []

            def run_tools() -> None:
                _run_dciodvfy(file, require_dciodvfy, timeout_s, tool_errors, tool_warnings, ran)
                if is_sr:
                    _run_dsrdump(file, timeout_s, tool_errors, tool_warnings, ran)

            # The validators are other processes: read back with highdicom meanwhile.
            with ThreadPoolExecutor(max_workers=1) as pool:
                tools = pool.submit(run_tools)
                back_errors: list[str] = []
                back_warnings: list[str] = []
                _read_back(file, masks, volume, back_errors, back_warnings)
                tools.result()
            errors += tool_errors + back_errors
            warnings += tool_warnings + back_warnings
            ran.append("highdicom")
    report = ValidationReport(not errors, errors, warnings, "+".join(ran))
    logger.info(
        "output validated",
        extra={
            "action": "output_validated",
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "ok": report.ok,
            "errors": len(errors),
            "warnings": len(warnings),
        },
    )
    return report


@contextmanager
def _written(ds: Dataset, path: Path | None, errors: list[str]) -> Iterator[Path | None]:
    """Yield the file to check: `path`, or a temporary copy of `ds`."""
    if path is not None:
        if not path.is_file():
            errors.append(f"output file {path} does not exist")
            yield None
        else:
            yield path
        return
    with tempfile.TemporaryDirectory(prefix="dicomnode-validate-") as folder:
        file = Path(folder) / "output.dcm"
        try:
            ds.save_as(file, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError, OSError) as exc:
            errors.append(f"cannot write the output as a DICOM file: {exc}")
            yield None
            return
        yield file


def _run(
    command: list[str], timeout_s: float, errors: list[str]
) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        errors.append(f"{command[0]} did not finish within {timeout_s:g} s")
    except OSError as exc:
        errors.append(f"cannot run {command[0]}: {exc}")
    return None


def _run_dciodvfy(
    file: Path,
    required: bool,
    timeout_s: float,
    errors: list[str],
    warnings: list[str],
    ran: list[str],
) -> None:
    executable = shutil.which("dciodvfy")
    if executable is None:
        message = "dciodvfy (Debian dicom3tools) is not on PATH: the output was not validated"
        (errors if required else warnings).append(message)
        return
    ran.append("dciodvfy")
    done = _run([executable, "-new", str(file)], timeout_s, errors)
    if done is None:
        return
    found = 0
    for line in (done.stdout + done.stderr).splitlines():
        text = line.strip()
        if text.startswith("Error"):
            errors.append(f"dciodvfy: {text}")
            found += 1
        elif text.startswith("Warning"):
            warnings.append(f"dciodvfy: {text}")
    if done.returncode != 0 and not found:
        errors.append(f"dciodvfy exited with status {done.returncode}")


def _run_dsrdump(
    file: Path, timeout_s: float, errors: list[str], warnings: list[str], ran: list[str]
) -> None:
    executable = shutil.which("dsrdump")
    if executable is None:
        warnings.append("dsrdump (DCMTK) is not on PATH: the SR tree was not rendered")
        return
    ran.append("dsrdump")
    done = _run([executable, "-v", "+Pt", str(file)], timeout_s, errors)
    if done is None:
        return
    for line in done.stderr.splitlines():
        text = line.strip()
        if text.startswith(("E:", "F:")):
            errors.append(f"dsrdump: {text}")
        elif text.startswith("W:"):
            warnings.append(f"dsrdump: {text}")
    if done.returncode != 0:
        errors.append(f"dsrdump exited with status {done.returncode}")


def _read_back(
    file: Path,
    masks: npt.NDArray[np.bool_] | None,
    volume: Volume | None,
    errors: list[str],
    warnings: list[str],
) -> None:
    try:
        ds = dcmread(file)
        sop_class = str(ds.SOPClassUID)
        if sop_class == SegmentationStorage:
            _check_seg(ds, masks, volume, errors)
        elif str(ds.get("Modality", "")) == "SR":
            _check_sr(ds, errors)
        elif sop_class == SecondaryCaptureImageStorage:
            _check_sc(ds, errors)
        else:
            warnings.append(f"no read-back check for SOP Class {sop_class}")
    except Exception as exc:  # any failure to parse is a failed gate, not a crash
        errors.append(f"read-back failed: {type(exc).__name__}: {exc}")


def _check_seg(
    ds: Dataset,
    masks: npt.NDArray[np.bool_] | None,
    volume: Volume | None,
    errors: list[str],
) -> None:
    seg = hd.seg.Segmentation.from_dataset(ds)
    if masks is None or volume is None:
        return
    planes = masks[masks.reshape(masks.shape[0], -1).any(axis=1)]
    if seg.number_of_segments != planes.shape[0]:
        errors.append(
            f"SEG has {seg.number_of_segments} segments, the masks have {planes.shape[0]}"
            " non-empty labels"
        )
        return
    numbers = list(range(1, planes.shape[0] + 1))
    if len(set(volume.sop_instance_uids)) == 1 and volume.frame_numbers != (1,):
        pixels = seg.get_pixels_by_source_frame(
            volume.sop_instance_uids[0],
            source_frame_numbers=list(volume.frame_numbers),
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
    else:
        pixels = seg.get_pixels_by_source_instance(
            list(volume.sop_instance_uids),
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
    # highdicom answers (slices, rows, columns, segments).
    if not np.array_equal(pixels.astype(bool), np.moveaxis(planes, 0, -1)):
        errors.append("SEG pixels read back differ from the masks it was built from")


def _check_sr(ds: Dataset, errors: list[str]) -> None:
    report = hd.sr.MeasurementReport.from_sequence([ds])
    groups = (
        len(report.get_image_measurement_groups())
        + len(report.get_planar_roi_measurement_groups())
        + len(report.get_volumetric_roi_measurement_groups())
    )
    if groups == 0:
        errors.append("SR has no measurement group")


def _check_sc(ds: Dataset, errors: list[str]) -> None:
    pixels = ds.pixel_array
    if pixels.shape != (int(ds.Rows), int(ds.Columns), 3):
        errors.append(f"SC pixels decode to shape {pixels.shape}, expected RGB")
    if str(ds.get("BurnedInAnnotation", "")) != "YES":
        errors.append("SC BurnedInAnnotation must be YES: the overlay is burned in")

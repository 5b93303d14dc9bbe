"""Who made an output and what it is called: deterministic UIDs, series and equipment.

Every output of a job gets UIDs derived from the job's key (the study version plus the
pipeline, chosen by the worker) and from what the output is, as RFC 4122 version 5
name-based UUIDs written as "2.25." UIDs (PS3.5 B.2). A rerun of the same job makes
the same Series and SOP Instance UIDs, so a PACS replaces the earlier objects instead
of keeping duplicates; a new study version or another pipeline gets new ones.

The equipment that made an output is dicomnode running a model: Manufacturer
``dicomnode``, Manufacturer's Model Name the model name, Software Versions the
dicomnode version then the model version (General Equipment Module, PS3.3 C.7.5.1).
The algorithm is identified in SEG segments (Segmentation Algorithm Identification,
PS3.3 C.8.20.2) and SR measurement groups (TID 4019) with the family
DCM 123110 "Artificial Intelligence" (CID 7162).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from dicomnode import __version__
from dicomnode.uids import derive_uid

__all__ = [
    "ALGORITHM_FAMILY",
    "MANUFACTURER",
    "SERIES_NUMBERS",
    "Producer",
    "device_uid",
    "output_uid",
    "series_description",
]

logger = logging.getLogger(__name__)

#: Manufacturer of every output (General Equipment Module).
MANUFACTURER = "dicomnode"

#: Algorithm Family of every model: DCM 123110 "Artificial Intelligence" (CID 7162).
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence

#: First Series Number of each output kind; the n-th source series adds n.
SERIES_NUMBERS = {"seg": 9100, "sr": 9200, "sc": 9300}

_UID_NAMESPACE = "dicomnode.outputs"
# Devices get their own namespace, so no job key can make a device's UID.
_DEVICE_NAMESPACE = "dicomnode.outputs.device"
_LO_MAX = 64  # Long String (PS3.5 6.2)
_SERIES_SUFFIXES = {
    "seg": "segmentation",
    "sr": "report",
    "sc": "overlay NOT FOR DIAGNOSTIC USE",
}


def output_uid(job_key: str, kind: str, *parts: str) -> UID:
    """Return the deterministic UID of one output of a job.

    Parameters
    ----------
    job_key
        Identifies the job: the same study version and pipeline give the same key.
    kind
        What the UID names, e.g. ``seg-series``, ``seg``, ``sr``, ``sc``.
    *parts
        Further names, e.g. the source SeriesInstanceUID or a slice index.

    Returns
    -------
    pydicom.uid.UID
        A valid "2.25." UID of at most 64 characters.

    Raises
    ------
    ValueError
        If `job_key` or `kind` is empty.
    """
    if not job_key:
        raise ValueError("job_key must not be empty: it names the job the output belongs to")
    if not kind:
        raise ValueError("kind must not be empty: it names the output")
    return derive_uid(_UID_NAMESPACE, job_key, kind, *parts)


def device_uid(model_name: str, model_version: str) -> UID:
    """Return the Device Observer UID of a model (TID 1004), the same for every job.

    Parameters
    ----------
    model_name, model_version
        Identify the model.

    Returns
    -------
    pydicom.uid.UID
        A "2.25." UID derived from the model name and version only.
    """
    return derive_uid(_DEVICE_NAMESPACE, model_name, model_version)


def series_description(kind: str, model_name: str) -> str:
    """Return the Series Description of an output: the model name and what it is.

    Parameters
    ----------
    kind
        ``seg``, ``sr`` or ``sc``.
    model_name
        The model that made it.

    Returns
    -------
    str
        At most 64 characters (LO); a long model name is cut, the suffix is kept.

    Raises
    ------
    ValueError
        If `kind` is not an output kind.
    """
    if kind not in _SERIES_SUFFIXES:
        raise ValueError(f"kind must be one of {sorted(_SERIES_SUFFIXES)}, got {kind!r}")
    suffix = _SERIES_SUFFIXES[kind]
    room = _LO_MAX - len(suffix) - 1
    return f"{model_name[:room]} {suffix}"


@dataclass(frozen=True, slots=True)
class Producer:
    """The model run that produced outputs: equipment and algorithm identification.

    Attributes
    ----------
    model_name, model_version
        Identify the model (``Model.name``, ``Model.version``).
    job_key
        Identifies the job (see :func:`output_uid`).
    """

    model_name: str
    model_version: str
    job_key: str

    def __post_init__(self) -> None:
        for name in ("model_name", "model_version", "job_key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        for name in ("model_name", "model_version"):
            if len(getattr(self, name)) > _LO_MAX:
                raise ValueError(f"{name} must have at most {_LO_MAX} characters (LO)")
        if "\\" in self.model_name or "\\" in self.model_version:
            raise ValueError("model_name and model_version must not contain a backslash")

    @property
    def software_versions(self) -> tuple[str, str]:
        """Software Versions: the dicomnode version, then the model version."""
        return (__version__, self.model_version)

    def uid(self, kind: str, *parts: str) -> UID:
        """Return :func:`output_uid` for this job."""
        return output_uid(self.job_key, kind, *parts)

    def algorithm_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """Segmentation Algorithm Identification of a SEG segment (PS3.3 C.8.20.2)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.model_name, family=ALGORITHM_FAMILY, version=self.model_version
        )

    def algorithm_template(self) -> hd.sr.AlgorithmIdentification:
        """Algorithm Identification of an SR measurement group (TID 4019)."""
        return hd.sr.AlgorithmIdentification(
            name=self.model_name, version=self.model_version, family=ALGORITHM_FAMILY
        )

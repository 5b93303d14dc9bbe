"""The worker's volumes: :mod:`dicomnode.volumes`, re-exported where the worker reads them.

Building a volume from DICOM instances is a library shared with the synthetic ground
truth, so it lives at the top of the package; the worker's modules import it from
here, as they always have.
"""

from __future__ import annotations

from dicomnode.volumes import load_volume, slice_order, split_volumes, volume_from_datasets

__all__ = ["load_volume", "slice_order", "split_volumes", "volume_from_datasets"]

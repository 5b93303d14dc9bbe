"""Output building and validation for a 300-slice 512 x 512 CT: SEG + TID 1500 SR.

The masks are the phantom's own (body and lesions), so the figures measure the output
writers and the validation gate, not a model. Target (issue 5): SEG + SR built and
validated in <= 5 s.

    .venv/bin/python bench/outputs.py
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread

from dicomnode.models import codes
from dicomnode.models.api import Finding, ModelResult
from dicomnode.outputs.seg import build_segmentation, segment_number_map
from dicomnode.outputs.sr import build_measurement_report
from dicomnode.outputs.validate import validate_output
from dicomnode.synth.ct import build_ct_series, ct_phantom
from dicomnode.synth.studies import CT_TRUTH_LABELS
from dicomnode.volumes import volume_from_datasets


class _Model:
    name, version, labels, classes = "ct-lesion-seg", "1", CT_TRUTH_LABELS, ()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    datasets = list(build_ct_series(slices=args.slices, seed=1))
    volume = volume_from_datasets(datasets)
    phantom = ct_phantom(1, slices=args.slices)
    masks = np.stack([phantom.body_mask(), phantom.lesion_labels() > 0])
    headers = []
    for ds in datasets:  # the worker passes headers read without pixels
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        headers.append(dcmread(buffer, stop_before_pixels=True))
    findings = tuple(
        Finding(codes.LESION, 0.9, views=("ct",), segment_number=2,
                measurements={"volume": (4 / 3 * np.pi * lesion.radius**3, "mm3")})
        for lesion in phantom.lesions
    )  # fmt: skip
    figures = {}
    started = time.perf_counter()
    seg = build_segmentation(
        headers, volume, masks, CT_TRUTH_LABELS,
        model_name="ct-lesion-seg", model_version="1", job_key="bench",
    )  # fmt: skip
    assert seg is not None
    figures["SEG build"] = time.perf_counter() - started
    started = time.perf_counter()
    sr = build_measurement_report(
        {"ct": headers}, ModelResult(masks={"ct": masks}, findings=findings), _Model(),
        volumes={"ct": volume}, job_key="bench", segmentations={"ct": seg},
        segment_numbers={"ct": segment_number_map(masks, CT_TRUTH_LABELS)},
    )  # fmt: skip
    figures["SR build"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        for name, ds, extra in (("SEG", seg, {"masks": masks, "volume": volume}), ("SR", sr, {})):
            path = Path(tmp) / f"{name}.dcm"
            started = time.perf_counter()
            ds.save_as(path, enforce_file_format=True)
            report = validate_output(ds, path, **extra)  # type: ignore[arg-type]
            figures[f"{name} write + validate ({report.validator})"] = time.perf_counter() - started
            assert report.ok, report.errors
    print(f"# {args.slices} x 512x512 CT, {len(phantom.lesions)} lesions, "
          f"SEG {seg.NumberOfFrames} frames")  # fmt: skip
    for name, seconds in figures.items():
        print(f"{name}: {seconds:.2f} s")
    print(f"total: {sum(figures.values()):.2f} s")


if __name__ == "__main__":
    main()

"""Inference benchmark: ``ct-lesion-seg`` end to end on a 300-slice 512 x 512 CT.

Run by hand (not a pytest test)::

    .venv/bin/python bench/inference.py --threads 2 --json /tmp/bench_inference.json

A synthetic chest CT (``dicomnode.synth.ct``, seed 9001: never used in training) is
written to a temporary folder first (not timed). Then, timed:

``load``     ``dicomnode.volumes.load_volume`` on the files (read, sort, rescale);
``predict``  ``CtLesionSegModel.predict``: body crop, resampling to 1.4 mm, windows,
             slice batches under ``torch.inference_mode``, masks back on the source
             grid, lesion components and their measurements.

The baseline is the same network run the plain way: one full-resolution 512 x 512
slice at a time, no crop, no resampling, ``torch.no_grad`` and the default memory
format. It is timed on ``--baseline-slices`` slices and scaled to the whole series.
Peak RSS is this process's ``ru_maxrss`` (the high-water mark, loading included).
The lesion Dice against the phantom's truth is printed as a sanity check.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dicomnode.models.api import StudyViews, View
from dicomnode.models.ct_lesion import CtLesionSegModel
from dicomnode.synth.ct import ct_phantom, write_ct_series
from dicomnode.volumes import load_volume

SEED = 9001


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in kibibytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _baseline_seconds(
    model: CtLesionSegModel, array: np.ndarray, attention: bool, slices: int
) -> float:
    """Seconds per slice of the plain per-slice, full-resolution loop."""
    config, net = model._network(attention)  # the very network predict() runs
    device = model.device
    k, offset = config.context_slices, 1
    picked = np.linspace(0, array.shape[0] - 1, slices).round().astype(int)
    started = time.perf_counter()
    with torch.no_grad():
        for index in picked:
            neighbours = np.clip(index + offset * np.arange(-k, k + 1), 0, array.shape[0] - 1)
            channels = [
                np.clip((array[n] - (c - w / 2)) / w, 0, 1)
                for n in neighbours
                for c, w in config.windows
            ]
            x = torch.from_numpy(np.stack(channels)[np.newaxis].astype(np.float32)).to(device)
            torch.sigmoid(net(x)).cpu()
    return (time.perf_counter() - started) / slices


def _dice(mask: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((mask & truth).sum()) / max(1.0, float(mask.sum() + truth.sum()))


def run(args: argparse.Namespace) -> dict[str, object]:
    """Write the series, then time loading, predicting and the baseline loop."""
    torch.set_num_threads(args.threads)
    model = CtLesionSegModel(args.device, attention=args.attention)
    shape = dict(slices=args.slices, rows=args.size, columns=args.size)
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-inference-") as folder:
        started = time.perf_counter()
        paths = write_ct_series(Path(folder), seed=SEED, **shape)  # type: ignore[arg-type]
        written = time.perf_counter() - started
        started = time.perf_counter()
        volume = load_volume(paths)
        load = time.perf_counter() - started
    study = StudyViews("1.2.3.4", {"ct": View("ct", volume, modality="CT")})
    if args.warmup:
        model.predict(study)
    started = time.perf_counter()
    result = model.predict(study)
    predict = time.perf_counter() - started
    peak = _peak_rss_mb()
    per_slice = _baseline_seconds(model, volume.array, args.attention, args.baseline_slices)
    baseline = per_slice * args.slices
    phantom = ct_phantom(SEED, args.slices, args.size, args.size)
    truth = phantom.lesion_labels() > 0
    figures: dict[str, object] = {
        "slices": args.slices,
        "size": args.size,
        "device": args.device,
        "threads": args.threads,
        "network": result.summary["network"],
        "config": model._network(args.attention)[0].to_dict(),
        "write_s": round(written, 2),
        "load_s": round(load, 2),
        "predict_s": round(predict, 2),
        "end_to_end_s": round(load + predict, 2),
        "slices_per_s": round(args.slices / (load + predict), 1),
        "peak_rss_mb": round(peak, 0),
        "baseline_network_s": round(baseline, 2),
        "baseline_over_predict": round(baseline / predict, 2),
        "lesions": len(result.findings),
        "truth_lesions": len(phantom.lesions),
        "lesion_dice": round(_dice(result.masks["ct"][1], truth), 4),
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run once, print the figures (and save them with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--attention", action="store_true", help="the Attention U-Net")
    parser.add_argument("--baseline-slices", type=int, default=20)
    parser.add_argument("--warmup", action="store_true", help="predict once before timing")
    parser.add_argument("--json", type=Path, help="save the figures as JSON here")
    args = parser.parse_args(argv)
    figures = run(args)
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference benchmark: ``ct-lesion-seg`` end to end on a 300-slice 512 x 512 CT, two paths.

Run by hand (not a pytest test)::

    .venv/bin/python bench/inference.py --threads 2 --warmup --json /tmp/bench_inference.json

A synthetic chest CT (``dicomnode.synth.ct``, seed 9001: never used in training) is
written to a temporary folder first (not timed). Then, for each inference path of
``CtLesionSegModel`` (the ``inference`` option), timed end to end:

``load``     ``dicomnode.volumes.load_volume`` on the files (read, sort, rescale);
``predict``  ``CtLesionSegModel.predict``: body crop, resampling to 1.4 mm, windows,
             slice batches, masks back on the source grid, lesion components and
             their measurements.

``reference`` is the original path (float32, numpy between steps); ``fast`` is the
default (batch norms folded, channels-last, bfloat16 where the CPU has it, every
step in torch chunks; see ``dicomnode.models.ct_lesion_nn``). The paths run
alternately, ``--repeat`` times each (medians reported), on the same files, so
both see the same machine load. ``--warmup`` first runs each path once on another
study (seed 9002, 40 slices at 0.8 mm: other shapes), as a worker that has run
other jobs: threads are started, but the kernels for this study's shapes are not
made yet, so the first timed run (``*_first_s``) is what a worker's job costs;
later runs reuse the kernels of the same shapes. The masks of the two paths are compared (Dice of
the body and of the lesions, voxels that differ, lesions found); each path's lesion
Dice against the phantom's truth is printed as a sanity check. ``*_cpu_s`` is the
process's CPU time (all threads) of load + predict: the work done, which a busy
machine changes less than the wall-clock time (threads that wait at a barrier by
spinning count too).

With ``--baseline-slices N`` (default 0: off) the same network also runs the plain
way: one full-resolution 512 x 512 slice at a time, no crop, no resampling,
``torch.no_grad`` and the default memory format, timed on N slices and scaled to the
whole series. Peak RSS is this process's ``ru_maxrss`` (the high-water mark of the
paths run, loading included): ``--paths fast`` or ``--paths reference`` measures one alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

import numpy as np
import numpy.typing as npt
import torch

from dicomnode.models.api import ModelResult, StudyViews, View, Volume
from dicomnode.models.ct_lesion import CtLesionSegModel
from dicomnode.models.ct_lesion_nn import INFERENCE_PATHS, Precision, resolve_precision
from dicomnode.synth.ct import ct_phantom, write_ct_series
from dicomnode.volumes import load_volume

SEED = 9001
WARMUP_SEED = 9002
#: The timed order: the old path first, so a load that rises during a run hurts the new one.
PATHS: tuple[str, ...] = tuple(reversed(INFERENCE_PATHS))


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in kibibytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _baseline_seconds(
    model: CtLesionSegModel, array: npt.NDArray[np.float32], attention: bool, slices: int
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


def _dice(mask: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    return 2.0 * float((mask & truth).sum()) / max(1.0, float(mask.sum() + truth.sum()))


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _study(volume: Volume, path: str) -> StudyViews:
    views = {"ct": View("ct", volume, modality="CT")}
    return StudyViews("1.2.3.4", views, options={"inference": path})


def _timed_run(
    model: CtLesionSegModel, files: list[Path], path: str
) -> tuple[float, float, float, ModelResult]:
    """Load the files and predict with one path: (load s, predict s, CPU s, result)."""
    cpu = time.process_time()
    started = time.perf_counter()
    volume = load_volume(files)
    load = time.perf_counter() - started
    started = time.perf_counter()
    result = model.predict(_study(volume, path))
    predict = time.perf_counter() - started
    return load, predict, time.process_time() - cpu, result


def _compare(results: dict[str, ModelResult]) -> dict[str, object]:
    """Agreement of the two paths' masks."""
    fast, reference = results["fast"], results["reference"]
    a, b = fast.masks["ct"], reference.masks["ct"]
    return {
        "fast_vs_reference_body_dice": round(_dice(a[0], b[0]), 5),
        "fast_vs_reference_lesion_dice": round(_dice(a[1], b[1]), 5),
        "fast_vs_reference_voxels_differing": int((a != b).sum()),
        "fast_vs_reference_same_lesion_count": len(fast.findings) == len(reference.findings),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    """Write the series, then time both paths alternately and compare their masks."""
    torch.set_num_threads(args.threads)
    model = CtLesionSegModel(args.device, attention=args.attention, precision=args.precision)
    paths = [p for p in PATHS if p in args.paths]
    loads: dict[str, list[float]] = {p: [] for p in paths}
    predicts: dict[str, list[float]] = {p: [] for p in paths}
    cpus: dict[str, list[float]] = {p: [] for p in paths}
    results: dict[str, ModelResult] = {}
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-inference-") as folder:
        started = time.perf_counter()
        files = write_ct_series(
            Path(folder), seed=SEED, slices=args.slices, rows=args.size, columns=args.size
        )
        written = time.perf_counter() - started
        if args.warmup:  # the first call of each path pays one-off set-up (threads, kernels)
            other = write_ct_series(
                Path(folder) / "warmup", seed=WARMUP_SEED, slices=40, pixel_spacing=0.8
            )
            for path in paths:
                _timed_run(model, other, path)
        for _ in range(args.repeat):
            for path in paths:
                results.pop(path, None)  # one result of a path alive at a time, as in a worker
                load, predict, cpu, results[path] = _timed_run(model, files, path)
                loads[path].append(load)
                predicts[path].append(predict)
                cpus[path].append(cpu)
        peak = _peak_rss_mb()
        if args.baseline_slices:
            array = load_volume(files).array
            per_slice = _baseline_seconds(model, array, args.attention, args.baseline_slices)
    phantom = ct_phantom(SEED, args.slices, args.size, args.size)
    figures: dict[str, object] = {
        "slices": args.slices,
        "size": args.size,
        "device": args.device,
        "threads": args.threads,
        # libgomp's threads spin at every barrier unless told otherwise: it matters on a
        # CPU shared with other processes (see docs/benchmarks.md, Model inference).
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "fast_precision": str(resolve_precision(model.device, model.precision)),
        "network": "attention-unet" if args.attention else "unet",
        "repeat": args.repeat,
        "load_average_before": load_before,
        "write_s": round(written, 2),
    }
    medians: dict[str, float] = {}
    for path in paths:
        end_to_end = [a + b for a, b in zip(loads[path], predicts[path], strict=True)]
        medians[path] = statistics.median(end_to_end)
        figures[f"{path}_load_s"] = round(statistics.median(loads[path]), 2)
        figures[f"{path}_predict_s"] = round(statistics.median(predicts[path]), 2)
        figures[f"{path}_end_to_end_s"] = round(medians[path], 2)
        figures[f"{path}_end_to_end_all_s"] = [round(t, 2) for t in end_to_end]
        figures[f"{path}_first_s"] = round(end_to_end[0], 2)
        figures[f"{path}_cpu_s"] = round(statistics.median(cpus[path]), 2)
    truth = phantom.lesion_labels() > 0
    if len(paths) == 2:
        figures["speedup"] = round(medians["reference"] / medians["fast"], 2)
        figures.update(_compare(results))
    for path, result in results.items():
        figures[f"{path}_lesions"] = len(result.findings)
        figures[f"{path}_lesion_dice_vs_truth"] = round(_dice(result.masks["ct"][1], truth), 4)
    figures["load_average_after"] = _load_average()
    figures["peak_rss_mb"] = round(peak, 0)
    if args.baseline_slices:
        figures["plain_loop_network_s"] = round(per_slice * args.slices, 2)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print the figures (and save them with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--attention", action="store_true", help="the Attention U-Net")
    parser.add_argument(
        "--precision",
        choices=get_args(Precision),
        default="auto",
        help="the fast path's convolutions (float32: as on a CPU without bfloat16)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each path")
    parser.add_argument("--baseline-slices", type=int, default=0, help="plain loop (0: off)")
    parser.add_argument("--warmup", action="store_true", help="run each path on another study")
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(PATHS), help="inference paths to run"
    )
    parser.add_argument("--json", type=Path, help="save the figures as JSON here")
    args = parser.parse_args(argv)
    figures = run(args)
    for key, value in figures.items():
        print(f"{key:>34}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

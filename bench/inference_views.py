"""Inference time of the multi-view models: a 4-view mammogram and a chest PA + lateral.

Each study is written to disk as DICOM, then timed end to end the way the worker runs
it: load every view's file into a volume, then ``predict`` (the model is built once,
before the timer, as a worker keeps it loaded). Median of ``--repeat`` runs.
Target (issue 4): 4-view MG <= 5 s on a 2-core CPU.

    .venv/bin/python bench/inference_views.py --repeat 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dicomnode.models.api import StudyViews, View
from dicomnode.models.registry import load_model
from dicomnode.synth.cxr import build_cxr_study
from dicomnode.synth.mg import build_mg_study
from dicomnode.volumes import load_volume


def _time_study(model_name: str, images: dict[str, object], folder: Path, repeat: int) -> float:
    paths = {}
    for name, ds in images.items():
        paths[name] = folder / f"{model_name}-{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)  # type: ignore[attr-defined]
    model = load_model(model_name, "cpu")
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        views = {n: View(n, load_volume([p])) for n, p in paths.items()}
        model.predict(StudyViews("1.2.3", views))
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mg = build_mg_study(7, finding="suspicious")
        cxr = build_cxr_study(7, finding="nodule")
        figures = {
            "mg-4view (4 x 512x416)": _time_study("mg-4view", dict(mg.images), folder, args.repeat),
            "cxr-2view (2 x 512x512)": _time_study(
                "cxr-2view", dict(cxr.images), folder, args.repeat
            ),
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for name, seconds in figures.items():
        print(f"{name}: {seconds:.3f} s median of {args.repeat} (load + predict)")
    print(f"peak RSS {rss:.0f} MB, {args.threads} torch threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())

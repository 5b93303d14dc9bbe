"""Score the node's lesion SEGs against the truth that generator.py wrote.

    .venv/bin/python bench/validation_ct/evaluate.py TRUTH_DIR SEG_DIR [--json out.json]

TRUTH_DIR is a folder written by ``generator.py`` (``study-<seed>/truth.npz`` and
``truth.json``); SEG_DIR is any folder holding the DICOM SEG files the node returned,
or a node's data folder: every file below it is looked at and the SEGs whose referenced
series is one of the truth series are used (the newest per series when there are
several).

Per study it reports the Dice of all lesion voxels together, and lesion detection: a
true lesion is found when at least ``--min-overlap`` of its voxels are predicted; a
predicted lesion (a 26-connected component of the predicted mask) that touches no true
lesion is a false positive. Lesion-free studies count false positives only.

Which segments are lesions: those whose Segment Label or Segment Description contains
``--segment`` (default "lesion", case-insensitive); when no segment matches, all are.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from scipy import ndimage

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class StudyScore:
    seed: int
    series_instance_uid: str
    seg_file: str | None
    true_lesions: int
    found: int
    missed: int
    false_positives: int
    dice: float | None  # all lesion voxels together; None when both are empty
    lesion_dice: list[float] = field(default_factory=list)  # per true lesion


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def find_segs(folder: Path) -> dict[str, list[tuple[str, Path]]]:
    """Referenced SeriesInstanceUID -> [(content date+time, path)] of the SEGs below."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=None)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if str(ds.get("SOPClassUID", "")) != SEG_STORAGE:
            continue
        when = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
        for item in ds.get("ReferencedSeriesSequence", []):
            found.setdefault(str(item.SeriesInstanceUID), []).append((when, path))
    return found


def lesion_segments(seg: hd.seg.Segmentation, pattern: str) -> list[int]:
    wanted = re.compile(pattern, re.IGNORECASE)
    numbers, matching = [], []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        numbers.append(number)
        text = f"{item.get('SegmentLabel', '')} {item.get('SegmentDescription', '')}"
        if wanted.search(text):
            matching.append(number)
    return matching or numbers


def predicted_mask(path: Path, uids: Sequence[str], pattern: str) -> npt.NDArray[np.bool_]:
    """The union of the lesion segments, one slice per source instance in `uids`."""
    seg = hd.seg.segread(path)
    referenced = {
        str(ref.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for ref in series.ReferencedInstanceSequence
    }
    present = [uid for uid in uids if uid in referenced]
    rows, columns = int(seg.Rows), int(seg.Columns)
    mask = np.zeros((len(uids), rows, columns), dtype=bool)
    if not present:
        return mask
    pixels = seg.get_pixels_by_source_instance(
        present,
        segment_numbers=lesion_segments(seg, pattern),
        combine_segments=True,
        relabel=True,
        assert_missing_frames_are_empty=True,
        skip_overlap_checks=True,
    )
    index = {uid: k for k, uid in enumerate(uids)}
    for uid, plane in zip(present, pixels, strict=True):
        mask[index[uid]] = plane > 0
    return mask


def score(
    truth: npt.NDArray[np.integer[Any]],
    predicted: npt.NDArray[np.bool_],
    min_overlap: float,
) -> tuple[int, int, int, float | None, list[float]]:
    """(true lesions, found, false positives, overall Dice, Dice per true lesion)."""
    structure = ndimage.generate_binary_structure(3, 3)
    components, count = ndimage.label(predicted, structure)
    labels = [int(x) for x in np.unique(truth) if x > 0]
    found, per_lesion, touching = 0, [], set()
    for label in labels:
        lesion = truth == label
        hit = components[lesion & predicted]
        touched = set(np.unique(hit).tolist()) - {0}
        touching |= touched
        if lesion.sum() and (lesion & predicted).sum() / lesion.sum() >= min_overlap and touched:
            found += 1
        matched = np.isin(components, list(touched)) if touched else np.zeros_like(lesion)
        per_lesion.append(round(dice(lesion, matched) or 0.0, 4))
    false_positives = len(set(range(1, count + 1)) - touching)
    overall = dice(truth > 0, predicted)
    return len(labels), found, false_positives, overall, per_lesion


def evaluate(truth_dir: Path, seg_dir: Path, pattern: str, min_overlap: float) -> list[StudyScore]:
    segs = find_segs(seg_dir)
    scores = []
    for folder in sorted(truth_dir.glob("study-*"), key=lambda p: int(p.name.split("-")[1])):
        info = json.loads((folder / "truth.json").read_text())
        with np.load(folder / "truth.npz") as saved:
            truth = saved["lesion_labels"]
            uids = [str(u) for u in saved["sop_instance_uids"]]
        series = info["series_instance_uid"]
        candidates = sorted(segs.get(series, []), key=lambda item: item[0])
        if candidates:
            path = candidates[-1][1]
            predicted = predicted_mask(path, uids, pattern)
        else:
            path, predicted = None, np.zeros(truth.shape, dtype=bool)
        n, found, fp, overall, per_lesion = score(truth, predicted, min_overlap)
        scores.append(
            StudyScore(
                seed=int(info["seed"]),
                series_instance_uid=series,
                seg_file=None if path is None else str(path),
                true_lesions=n,
                found=found,
                missed=n - found,
                false_positives=fp,
                dice=None if overall is None else round(overall, 4),
                lesion_dice=per_lesion,
            )
        )
    return scores


def report(scores: Sequence[StudyScore]) -> str:
    lines = [f"{'study':>12} {'SEG':>4} {'lesions':>7} {'found':>5} {'FP':>3} {'Dice':>6}"]
    for s in scores:
        shown = "-" if s.dice is None else f"{s.dice:.3f}"
        lines.append(
            f"{'study-' + str(s.seed):>12} {'yes' if s.seg_file else 'no':>4}"
            f" {s.true_lesions:>7} {s.found:>5} {s.false_positives:>3} {shown:>6}"
        )
    total = sum(s.true_lesions for s in scores)
    found = sum(s.found for s in scores)
    fps = sum(s.false_positives for s in scores)
    dices = [s.dice for s in scores if s.dice is not None]
    mean = f"{np.mean(dices):.3f}" if dices else "-"
    sensitivity = f"{found / total:.3f}" if total else "-"
    lines.append(
        f"total: {len(scores)} studies, {total} lesions, {found} found (sensitivity"
        f" {sensitivity}), {fps} false positives, mean study Dice {mean}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truth_dir", type=Path)
    parser.add_argument("seg_dir", type=Path)
    parser.add_argument("--segment", default="lesion", help="regex for lesion segments")
    parser.add_argument("--min-overlap", type=float, default=1e-9)
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args(argv)
    scores = evaluate(args.truth_dir, args.seg_dir, args.segment, args.min_overlap)
    if not scores:
        print(f"no study-* folders in {args.truth_dir}", file=sys.stderr)
        return 2
    print(report(scores))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in scores], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

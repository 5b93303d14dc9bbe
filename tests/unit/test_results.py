"""A job's masks file: what the worker writes is what it reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicomnode.worker.results import load_masks, masks_path, save_masks


def test_masks_read_back_bit_for_bit_with_their_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    masks = {"ct": rng.random((2, 7, 13, 11)) > 0.7, "L-CC": rng.random((1, 1, 5, 3)) > 0.5}
    relative = save_masks(tmp_path, 42, masks)
    assert tmp_path / relative == masks_path(tmp_path, 42)
    back = load_masks(tmp_path, relative)
    assert back.keys() == masks.keys()
    for name, mask in masks.items():
        np.testing.assert_array_equal(back[name], mask)


def test_a_rerun_replaces_the_masks_file(tmp_path: Path) -> None:
    save_masks(tmp_path, 1, {"ct": np.ones((1, 2, 2, 2), dtype=bool)})
    relative = save_masks(tmp_path, 1, {"ct": np.zeros((1, 2, 2, 2), dtype=bool)})
    assert not load_masks(tmp_path, relative)["ct"].any()
    assert [p.name for p in (tmp_path / relative).parent.iterdir()] == ["masks.npz"]

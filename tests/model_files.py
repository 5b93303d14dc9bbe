"""Model files for tests: tiny TorchScript networks with TOML manifests.

A *threshold segmenter* labels every voxel above a Hounsfield value: a deterministic
network with a known answer, so the whole path (manifest -> worker -> SEG/SR -> peer)
can be checked voxel for voxel without a trained model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

__all__ = ["write_threshold_segmenter"]


class Threshold(torch.nn.Module):
    """Two-channel logits: background at or below 0.5, label 1 above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(0.5 - x) * 10.0, (x - 0.5) * 10.0], dim=1)


def write_threshold_segmenter(folder: Path, name: str, above_hu: float) -> Path:
    """Write ``name.pt`` + ``name.toml``: label ``dense`` where HU > ``above_hu``."""
    folder.mkdir(parents=True, exist_ok=True)
    # Sites' tools make TorchScript files; torch 2.13 deprecates making them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Threshold()).save(str(folder / f"{name}.pt"))
    manifest = folder / f"{name}.toml"
    manifest.write_text(
        f'name = "{name}"\nversion = "1.0"\ndescription = "test: voxels above {above_hu} HU"\n'
        f'file = "{name}.pt"\ntask = "segmentation"\n\n'
        '[[views]]\nname = "ct"\nmodality = ["CT"]\nimage_plane = ["AXIAL"]\n\n'
        # window centre c, width w: x = (HU - c + w/2) / w, so x > 0.5 <=> HU > c.
        f"[preprocess]\nwindow = [{above_hu}, 100.0]\n\n"
        '[[labels]]\nname = "dense"\n'
        'category = ["91723000", "SCT", "Anatomical Structure"]\n'
        'type = ["272673000", "SCT", "Bone"]\n'
    )
    return manifest

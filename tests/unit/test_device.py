"""worker.device: auto finds CUDA when present, a missing GPU is a clear error, models run on it."""

from __future__ import annotations

import pytest
import torch

from dicomnode.models.device import resolve_device


def test_cpu_is_always_cpu() -> None:
    assert resolve_device("cpu") == "cpu"


def test_auto_uses_cuda_only_when_torch_sees_it() -> None:
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_index_past_the_last_device_is_refused() -> None:
    with pytest.raises(RuntimeError, match="CUDA devices exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_ct_lesion_fast_path_on_cuda_gives_the_cpu_reference_masks() -> None:
    from dicomnode.models.api import StudyViews, View
    from dicomnode.models.ct_lesion import CtLesionSegModel, weights_path
    from dicomnode.synth.ct import build_ct_series
    from dicomnode.volumes import volume_from_datasets

    if not weights_path().exists():
        pytest.skip("the packaged ct-lesion-seg weights are missing")
    datasets = list(
        build_ct_series(
            slices=40, rows=256, columns=256, seed=4243, pixel_spacing=1.4, slice_thickness=2.0
        )
    )
    views = {"ct": View("ct", volume_from_datasets(datasets), modality="CT")}
    on_gpu = CtLesionSegModel(resolve_device("cuda")).predict(StudyViews("1.2.3", views))
    on_cpu = CtLesionSegModel("cpu", inference="reference").predict(StudyViews("1.2.3", views))
    assert on_gpu.summary["inference"] == "fast"
    gpu, cpu = on_gpu.masks["ct"], on_cpu.masks["ct"]
    for label in range(2):  # body, lesion: the bound of tests/unit/test_ct_lesion_fast.py
        overlap = 2.0 * float((gpu[label] & cpu[label]).sum())
        assert overlap / max(1.0, float(gpu[label].sum() + cpu[label].sum())) >= 0.99
    assert len(on_gpu.findings) == len(on_cpu.findings)

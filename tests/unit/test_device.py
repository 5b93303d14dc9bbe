"""worker.device: auto finds CUDA when present, a missing GPU is a clear error."""

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

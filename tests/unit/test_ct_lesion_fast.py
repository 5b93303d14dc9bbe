"""ct-lesion-seg's fast inference path: the reference path's masks, within the bound, by default."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from dicomnode.models.api import ModelResult, StudyViews, View
from dicomnode.models.ct_lesion import CtLesionSegModel, weights_path
from dicomnode.models.ct_lesion_nn import (
    NetRunner,
    Segmentation,
    SliceWorkers,
    find_lesions,
    resolve_precision,
)
from dicomnode.models.preprocess import CropBox
from dicomnode.models.unet import UNet, build_unet, fuse_batch_norm
from dicomnode.synth.ct import build_ct_series
from dicomnode.volumes import volume_from_datasets

#: The bound the fast path is held to against the reference path (issue 13).
DICE_BOUND = 0.01


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def _with_path(study: StudyViews, path: str) -> StudyViews:
    return StudyViews(study.study_instance_uid, study.views, options={"inference": path})


@pytest.fixture(scope="module")
def small_ct() -> StudyViews:
    """A 40-slice 256 x 256 CT at 1.4 mm (seed 4243, never used in training)."""
    datasets = list(
        build_ct_series(
            slices=40, rows=256, columns=256, seed=4243, pixel_spacing=1.4, slice_thickness=2.0
        )
    )
    volume = volume_from_datasets(datasets)
    return StudyViews(datasets[0].StudyInstanceUID, {"ct": View("ct", volume, modality="CT")})


@pytest.fixture(scope="module")
def shipped() -> CtLesionSegModel:
    if not weights_path().exists():
        pytest.skip("the packaged ct-lesion-seg weights are missing")
    return CtLesionSegModel("cpu")


@pytest.fixture(scope="module")
def reference(shipped: CtLesionSegModel, small_ct: StudyViews) -> ModelResult:
    return shipped.predict(_with_path(small_ct, "reference"))


# -- the fused network ---------------------------------------------------------------


def _trained_looking(net: UNet) -> UNet:
    """Give every batch norm running statistics and an affine part that are not 0 and 1."""
    generator = torch.Generator().manual_seed(5)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return net.eval()


@pytest.mark.parametrize("attention", [False, True])
def test_folding_batch_norms_keeps_the_network_s_output(attention: bool) -> None:
    net = _trained_looking(build_unet(6, 2, 4, 3, attention))
    fused = fuse_batch_norm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # not changed
    x = torch.rand(2, 6, 37, 50, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-4, atol=1e-4)


def test_folding_leaves_group_norms_alone() -> None:
    net = build_unet(1, 1, 4, 2, False, norm="group").eval()
    fused = fuse_batch_norm(net)

    def norms(n: UNet) -> int:
        return sum(isinstance(m, torch.nn.GroupNorm) for m in n.modules())

    assert norms(fused) == norms(net) == 6
    x = torch.rand(1, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), net(x))


# -- precision -------------------------------------------------------------------------


def test_precision_auto_is_float16_on_cuda_and_names_are_kept() -> None:
    # torch.device("cuda:0") is only a name: no GPU is needed to build it.
    assert resolve_precision(torch.device("cuda:0")) == torch.float16
    assert resolve_precision(torch.device("cpu")) in (torch.bfloat16, torch.float32)
    assert resolve_precision(torch.device("cpu"), "float32") == torch.float32
    assert resolve_precision(torch.device("cuda:0"), "bfloat16") == torch.bfloat16


def test_the_first_convolution_reads_the_image_in_float32() -> None:
    net = _trained_looking(build_unet(6, 2, 4, 3, False))
    encoder = NetRunner(net, torch.device("cpu"), "bfloat16").net.encoders[0]
    assert isinstance(encoder, torch.nn.Sequential)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert encoder[0](torch.rand(1, 6, 8, 8)).dtype == torch.float32
        assert encoder[3](torch.rand(1, 4, 8, 8)).dtype == torch.bfloat16  # the next one
    plain = NetRunner(net, torch.device("cpu"), "float32").net.encoders[0]
    assert isinstance(plain, torch.nn.Sequential) and isinstance(plain[0], torch.nn.Conv2d)


# -- slice workers ---------------------------------------------------------------------


def test_slice_workers_give_the_same_probabilities_and_restore_torch_s_threads() -> None:
    net = _trained_looking(build_unet(6, 2, 4, 3, False))
    runner = NetRunner(net, torch.device("cpu"), "float32", batch_size=2)
    image = torch.rand(7, 2, 24, 30, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    with SliceWorkers(runner.device, 1) as one:
        alone = runner.probabilities(image, 1, 1, one)
    with SliceWorkers(runner.device, 3) as three:
        assert torch.get_num_threads() == 1  # each worker runs single-threaded torch
        pooled = runner.probabilities(image, 1, 1, three)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(pooled, alone, rtol=1e-5, atol=1e-6)


def test_a_failing_chunk_raises_and_still_restores_torch_s_threads() -> None:
    threads = torch.get_num_threads()
    done: list[int] = []

    def chunk(start: int) -> None:
        if start == 2:
            raise RuntimeError("chunk 2 failed")
        done.append(start)

    with pytest.raises(RuntimeError, match="chunk 2"), SliceWorkers(torch.device("cpu"), 2) as w:
        w.map(chunk, range(5))
    assert torch.get_num_threads() == threads
    assert 0 in done


# -- lesion components -----------------------------------------------------------------


def test_labelling_inside_the_lesion_box_finds_what_the_whole_grid_finds() -> None:
    rng = np.random.default_rng(3)
    shape = (30, 64, 80)
    lesion = np.zeros(shape, dtype=bool)
    for _ in range(6):  # boxes of random size, some touching, one too small to keep
        z, r, c = rng.integers(2, 20), rng.integers(8, 40), rng.integers(8, 50)
        dz, dr, dc = rng.integers(1, 8, size=3)
        lesion[z : z + dz, r : r + dr, c : c + dc] = True
    lesion[25, 60, 70] = True
    box = CropBox(4, 64, 6, 80)
    probability = rng.integers(128, 256, size=(shape[0], *box.shape), dtype=np.uint8)
    seg = Segmentation(np.ones(shape, dtype=bool), lesion, probability, box)
    spacing = (1.0, 0.7, 0.7)
    whole, whole_kept = find_lesions(seg, spacing, 2.0, whole_grid=True)
    boxed, boxed_kept = find_lesions(seg, spacing, 2.0)
    assert len(whole) >= 2
    assert boxed == whole
    np.testing.assert_array_equal(boxed_kept, whole_kept)
    empty = Segmentation(np.ones(shape, dtype=bool), np.zeros(shape, dtype=bool), probability, box)
    findings, kept = find_lesions(empty, spacing, 2.0)
    assert findings == () and not kept.any()


# -- the model -------------------------------------------------------------------------


def test_predict_runs_the_fast_path_by_default(
    shipped: CtLesionSegModel, small_ct: StudyViews
) -> None:
    assert CtLesionSegModel("cpu", weights=weights_path()).inference == "fast"
    result = shipped.predict(small_ct)
    assert result.summary["inference"] == "fast"
    assert (False, "phantom") in shipped._runners  # the fused copy, kept for the next job


def test_fast_path_masks_match_the_reference_within_the_dice_bound(
    shipped: CtLesionSegModel, small_ct: StudyViews, reference: ModelResult
) -> None:
    fast = shipped.predict(_with_path(small_ct, "fast"))
    assert reference.summary["inference"] == "reference"
    a, b = fast.masks["ct"], reference.masks["ct"]
    assert a.shape == b.shape and a.dtype == b.dtype == np.bool_
    assert _dice(a[0], b[0]) >= 1.0 - DICE_BOUND
    assert _dice(a[1], b[1]) >= 1.0 - DICE_BOUND
    assert len(fast.findings) == len(reference.findings) >= 1
    for ours, theirs in zip(fast.findings, reference.findings, strict=True):
        volume, _ = ours.measurements["volume"]
        assert volume == pytest.approx(theirs.measurements["volume"][0], rel=0.02)
        assert ours.regions[0].slice_index == theirs.regions[0].slice_index


def test_fast_path_in_float32_gives_the_reference_masks(
    small_ct: StudyViews, reference: ModelResult
) -> None:
    model = CtLesionSegModel("cpu", weights=weights_path(), precision="float32")
    fast = model.predict(small_ct)
    a, b = fast.masks["ct"], reference.masks["ct"]
    # Only the folded batch norms' rounding differs from the reference arithmetic.
    assert int((a != b).sum()) <= a.size // 100_000
    assert len(fast.findings) == len(reference.findings)


def test_the_inference_path_can_be_chosen_and_a_bad_one_is_refused(
    shipped: CtLesionSegModel, small_ct: StudyViews
) -> None:
    with pytest.raises(ValueError, match="inference"):
        shipped.predict(_with_path(small_ct, "fastest"))
    with pytest.raises(ValueError, match="inference"):
        CtLesionSegModel("cpu", weights=weights_path(), inference="fastest")  # type: ignore[arg-type]
    model = CtLesionSegModel("cpu", weights=weights_path(), inference="reference")
    assert model.predict(small_ct).summary["inference"] == "reference"

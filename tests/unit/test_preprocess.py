"""Preprocessing: components, body crop, windowing, denoising and resampling round trips."""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt
import pytest

from dicomnode.models import preprocess
from dicomnode.synth.ct import build_ct_series


def _reference_labels(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Breadth-first face-connected labelling, numbered in raster order."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for axis in range(mask.ndim):
                for step in (-1, 1):
                    there = list(here)
                    there[axis] += step
                    near = tuple(there)
                    if 0 <= near[axis] < mask.shape[axis] and mask[near] and not labels[near]:
                        labels[near] = count
                        queue.append(near)
    return labels


def _disc(
    shape: tuple[int, int], centre: tuple[float, float], radius: float
) -> npt.NDArray[np.bool_]:
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    inside: npt.NDArray[np.bool_] = (rows - centre[0]) ** 2 + (
        columns - centre[1]
    ) ** 2 <= radius**2
    return inside


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("shape", [(40, 37), (6, 15, 11)])
def test_label_components_matches_breadth_first_search(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    for fill in (0.2, 0.45, 0.7):
        mask = rng.random(shape) < fill
        labels, count = preprocess.label_components(mask)
        expected = _reference_labels(mask)
        assert count == expected.max()
        np.testing.assert_array_equal(labels, expected)


def test_label_components_of_an_empty_mask_is_zero() -> None:
    labels, count = preprocess.label_components(np.zeros((3, 4, 5), dtype=bool))
    assert count == 0
    assert labels.dtype == np.int32
    assert not labels.any()


def test_largest_component_keeps_only_the_biggest_blob() -> None:
    mask = _disc((64, 64), (20, 20), 10) | _disc((64, 64), (50, 50), 4)
    largest = preprocess.largest_component(mask)
    np.testing.assert_array_equal(largest, _disc((64, 64), (20, 20), 10))
    assert not preprocess.largest_component(np.zeros((4, 4), dtype=bool)).any()


def _ct(slices: int = 6) -> tuple[npt.NDArray[np.float32], float]:
    spacing = 2.8
    datasets = list(
        build_ct_series(slices=slices, rows=128, columns=128, seed=5, pixel_spacing=spacing)
    )
    hu = np.stack([ds.pixel_array.astype(np.float32) - 1024.0 for ds in datasets])
    return hu, spacing


def test_body_box_contains_the_body_with_its_margin() -> None:
    hu, spacing = _ct()
    box = preprocess.find_body_box(hu, (spacing, spacing), margin_mm=10.0)
    body = (hu > -500).any(axis=0)
    rows, columns = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    grow = int(np.ceil(10.0 / spacing))
    assert box.row0 == max(0, rows[0] - grow) and box.row1 == min(128, rows[-1] + 1 + grow)
    assert box.column0 == max(0, columns[0] - grow)
    assert box.column1 == min(128, columns[-1] + 1 + grow)
    assert box.crop(hu).shape == (hu.shape[0], *box.shape)
    assert not ((box.crop(hu) > -500).sum() < (hu > -500).sum())


def test_body_box_ignores_a_bright_speck_outside_the_body() -> None:
    hu, spacing = _ct()
    clean = preprocess.find_body_box(hu, (spacing, spacing))
    hu[2, 1, 1] = 500.0  # a stray bright pixel in the air corner
    assert preprocess.find_body_box(hu, (spacing, spacing)) == clean


def test_body_box_of_air_is_the_whole_image() -> None:
    box = preprocess.find_body_box(np.full((2, 8, 9), -1000.0), (1.0, 1.0))
    assert box == preprocess.CropBox(0, 8, 0, 9)


def test_window_maps_the_window_to_unit_range_and_clips() -> None:
    values = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    np.testing.assert_allclose(preprocess.window(values, 40.0, 400.0), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="width"):
        preprocess.window(values, 40.0, 0.0)


def test_zscore_standardises_inside_the_mask() -> None:
    values = np.arange(20, dtype=np.float64).reshape(4, 5)
    mask = values >= 10
    out = preprocess.zscore(values, mask)
    assert abs(float(out[mask].mean())) < 1e-6
    assert abs(float(out[mask].std()) - 1.0) < 1e-5
    assert not preprocess.zscore(np.ones((3, 3))).any()


@pytest.mark.parametrize("method", ["gaussian", "median"])
def test_denoise_reduces_noise_and_keeps_the_shape(method: str) -> None:
    rng = np.random.default_rng(0)
    noisy = 40.0 + 10.0 * rng.standard_normal((3, 64, 64))
    smooth = preprocess.denoise(noisy, method, sigma=1.0)  # type: ignore[arg-type]
    assert smooth.shape == noisy.shape and smooth.dtype == np.float32
    assert float(smooth.std()) < 0.7 * float(noisy.std())
    assert abs(float(smooth.mean()) - 40.0) < 1.0


def test_denoise_rejects_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        preprocess.denoise(np.zeros((1, 4, 4)), "bilateral")  # type: ignore[arg-type]


def test_inplane_shape_keeps_the_field_of_view() -> None:
    assert preprocess.inplane_shape((512, 400), (0.7, 0.7), 1.4) == (256, 200)
    assert preprocess.inplane_shape((3, 3), (0.5, 0.5), 10.0) == (1, 1)


def test_mask_resampled_to_working_spacing_and_back_lands_on_the_source_grid() -> None:
    shape = (301, 257)  # odd sizes: the factor is not exactly 2
    mask = np.stack([_disc(shape, (150.3, 120.7), r) for r in (8.0, 14.0, 30.0)])
    working = preprocess.inplane_shape(shape, (0.7, 0.7), 1.4)
    there = preprocess.resample_mask(mask, working)
    back = preprocess.resample_mask(there, shape)
    assert back.shape == mask.shape and back.dtype == np.bool_
    for before, after in zip(mask, back, strict=True):
        assert _dice(before, after) > 0.9
    assert _dice(mask[2], back[2]) > 0.97


def test_image_resampled_there_and_back_keeps_its_values() -> None:
    image = np.stack([_disc((128, 96), (64, 48), 30).astype(np.float32) * 100.0])
    there = preprocess.resample_slices(image, (64, 48))
    back = preprocess.resample_slices(there, (128, 96))
    assert back.shape == image.shape
    assert float(np.abs(back - image).mean()) < 3.0
    same = preprocess.resample_slices(image, (128, 96))
    np.testing.assert_array_equal(same, image)


def test_nearest_mask_resampling_keeps_a_block_exactly() -> None:
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, 2:6, 4:8] = True
    up = preprocess.resample_mask(mask, (16, 16), method="nearest")
    expected = np.zeros((1, 16, 16), dtype=bool)
    expected[0, 4:12, 8:16] = True
    np.testing.assert_array_equal(up, expected)


def test_component_boxes_bound_each_label() -> None:
    labels = np.zeros((4, 10, 12), dtype=np.int32)
    labels[1:3, 2:5, 3:4] = 1
    labels[0, 9, 11] = 3
    boxes = preprocess.component_boxes(labels, 3)
    assert boxes[0] == (slice(1, 3), slice(2, 5), slice(3, 4))
    assert boxes[1] is None
    assert boxes[2] == (slice(0, 1), slice(9, 10), slice(11, 12))


def test_longest_axial_diameter_of_a_disc_is_its_diameter() -> None:
    disc = _disc((80, 80), (40, 40), 20.0)[np.newaxis]
    assert abs(preprocess.longest_axial_diameter(disc, (0.5, 0.5)) - 20.0) <= 0.3
    one = np.zeros((2, 3, 3), dtype=bool)
    one[1, 1, 1] = True
    assert preprocess.longest_axial_diameter(one, (0.7, 0.9)) == pytest.approx(0.4)
    assert preprocess.longest_axial_diameter(np.zeros((1, 2, 2), dtype=bool), (1, 1)) == 0.0

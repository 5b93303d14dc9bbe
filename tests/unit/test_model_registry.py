"""Where models come from: built-ins, entry points of third-party packages, model files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.models.api import Model, StudyViews, View, Volume
from dicomnode.models.registry import available_models, load_model, model_sources

THIRD_PARTY_MODEL = '''
from dicomnode.models.api import ModelResult, SeriesRule, ViewSpec

class BrightestSlice:
    """Third-party test model: index of the brightest slice."""
    name = "brightest-slice"
    version = "0.1"
    description = "index of the brightest slice"
    views = (ViewSpec("any", SeriesRule()),)
    labels = ()
    classes = ()

    def __init__(self, device="cpu"):
        self.device = device

    def predict(self, study):
        array = study.views["any"].volume.array
        return ModelResult(summary={"brightest": int(array.mean(axis=(1, 2)).argmax())})
'''


@pytest.fixture
def third_party_package(tmp_path: Path) -> Iterator[Path]:
    """A package with a ``dicomnode.models`` entry point, installed on sys.path."""
    package = tmp_path / "site" / "acme_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(THIRD_PARTY_MODEL)
    info = tmp_path / "site" / "acme_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[dicomnode.models]\nbrightest-slice = acme_models:BrightestSlice\n"
    )
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        yield tmp_path / "site"
    finally:
        sys.path.remove(str(tmp_path / "site"))
        sys.modules.pop("acme_models", None)


def volume(array: np.ndarray, series: str = "1.2.3") -> Volume:
    slices = array.shape[0]
    return Volume(
        array=array.astype(np.float32),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        sop_instance_uids=tuple(f"{series}.{i}" for i in range(slices)),
        frame_numbers=(1,) * slices,
        series_instance_uid=series,
    )


def test_builtin_models_are_listed_without_importing_torch() -> None:
    code = (
        "import sys; from dicomnode.models.registry import available_models; "
        "names = available_models(); "
        "assert {'ct-lesion-seg', 'mg-4view', 'cxr-2view', 'test-stats'} <= set(names), names; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entry_point_model_is_found_built_and_run(third_party_package: Path) -> None:
    assert model_sources()["brightest-slice"] == "entry point acme_models:BrightestSlice"
    model = load_model("brightest-slice")
    assert isinstance(model, Model)
    array = np.zeros((5, 4, 4))
    array[3] = 7
    view = View("any", volume(array))
    result = model.predict(StudyViews("1.2", {"any": view}))
    assert result.summary == {"brightest": 3}


def test_unknown_model_names_what_is_installed() -> None:
    with pytest.raises(KeyError, match=r"installed: .*test-stats"):
        load_model("no-such-model")


TORCHSCRIPT_MANIFEST = """
name = "bright-seg"
version = "1.0"
description = "TorchScript test segmenter: pixels above 0.5 after windowing"
file = "bright.pt"
task = "segmentation"

[[views]]
name = "ct"
modality = ["CT"]

[preprocess]
window = [50.0, 100.0]
size = [16, 16]
batch = 3

[[labels]]
name = "bright"
category = ["49755003", "SCT", "Morphologically Abnormal Structure"]
type = ["52988006", "SCT", "Lesion"]
"""


class Bright(torch.nn.Module):
    """Two-channel logits: background below 0.5, label 1 above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(0.5 - x) * 10.0, (x - 0.5) * 10.0], dim=1)


def write_torchscript_segmenter(folder: Path) -> None:
    # Users' tools make TorchScript files; torch 2.13 deprecates making them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Bright()).save(str(folder / "bright.pt"))
    (folder / "bright.toml").write_text(TORCHSCRIPT_MANIFEST)


def write_exported_segmenter(folder: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = (torch.zeros(2, 1, 16, 16),)
    program = torch.export.export(Bright(), example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "bright.pt2"))
    (folder / "bright.toml").write_text(TORCHSCRIPT_MANIFEST.replace("bright.pt", "bright.pt2"))


@pytest.mark.parametrize("write", [write_torchscript_segmenter, write_exported_segmenter])
def test_network_file_with_manifest_is_a_segmentation_model(
    tmp_path: Path, write: Callable[[Path], None]
) -> None:
    write(tmp_path)
    assert "bright-seg" in available_models([tmp_path])
    model = load_model("bright-seg", "cpu", [tmp_path])
    assert [label.name for label in model.labels] == ["bright"]
    array = np.zeros((7, 32, 32))
    array[2:5, 8:24, 4:12] = 100.0  # above the window's centre
    result = model.predict(StudyViews("1.2", {"ct": View("ct", volume(array))}))
    mask = result.masks["ct"]
    assert mask.shape == (1, 7, 32, 32)
    np.testing.assert_array_equal(mask[0], array > 50)


def write_onnx_classifier(folder: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["logits"], axes=[2, 3], keepdims=0)],
        "view-means",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / "means.onnx"))
    (folder / "means.toml").write_text(
        textwrap.dedent("""
        name = "view-means"
        version = "1"
        file = "means.onnx"
        task = "classification"
        [[views]]
        name = "PA"
        view_position = ["PA"]
        [[views]]
        name = "LAT"
        view_position = ["LL"]
        required = false
        [preprocess]
        size = [8, 8]
        [[classes]]
        name = "pa-brighter"
        code = ["263654008", "SCT", "Abnormal"]
        [[classes]]
        name = "lat-brighter"
        code = ["17621005", "SCT", "Normal"]
        """)
    )


def test_onnx_file_with_manifest_is_a_classification_model(tmp_path: Path) -> None:
    write_onnx_classifier(tmp_path)
    model = load_model("view-means", "cpu", [tmp_path])
    pa = View("PA", volume(np.full((1, 16, 16), 2.0), "1.1"))
    lat = View("LAT", volume(np.full((1, 16, 16), 1.0), "1.2"))
    both = model.predict(StudyViews("1", {"PA": pa, "LAT": lat})).probabilities
    assert both["pa-brighter"] == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-5)
    # A missing optional view is zeros.
    alone = model.predict(StudyViews("1", {"PA": pa}, missing=("LAT",))).probabilities
    assert alone["pa-brighter"] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('task = "segmentation"', 'task = "detection"'), "task"),
        (('file = "bright.pt"', 'file = "missing.pt"'), "does not exist"),
        (("[preprocess]", "[preprocess]\nbogus = 1"), "preprocess.bogus"),
    ],
)
def test_bad_manifest_names_the_file_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    write_torchscript_segmenter(tmp_path)
    manifest = tmp_path / "bright.toml"
    manifest.write_text(TORCHSCRIPT_MANIFEST.replace(*change))
    with pytest.raises(ValueError, match=message) as caught:
        load_model("bright-seg", "cpu", [tmp_path])
    assert "bright.toml" in str(caught.value)

"""One rule language: a pipeline's ``match`` table and a model's SeriesRule, one table.

Each case gives a SeriesRule, the ``match`` table that says the same, the series
they are checked on, and the answer both must give: the table is compiled by
:func:`dicomnode.rules.compile_match` and evaluated on the candidate's attributes,
the SeriesRule grouped by :func:`dicomnode.worker.views.rule_matches`. The few
places where a SeriesRule reads the language differently have their own table, with
the answer of each.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dicomnode.models.api import SeriesRule, ViewSpec
from dicomnode.models.manifest import load_manifest_model
from dicomnode.rules import compile_match
from dicomnode.worker.views import Candidate, rule_matches
from tests.model_files import write_threshold_segmenter


@dataclass(frozen=True)
class Seen:
    """The header values of one candidate (what the index recorded)."""

    modality: str | None = "CT"
    laterality: str | None = None
    view_position: str | None = None
    image_plane: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    image_type: tuple[str, ...] = ()
    frames: int = 1

    def candidate(self) -> Candidate:
        return Candidate(
            series_instance_uid="1.2.3", series_number=1, received_at=None, images=(),
            **{name: getattr(self, name) for name in self.__dataclass_fields__},
        )  # fmt: skip


@dataclass(frozen=True)
class Case:
    rule: dict[str, Any]
    table: dict[str, object]
    seen: Seen = field(default_factory=Seen)


ONE_LANGUAGE: list[tuple[Case, bool]] = [
    (Case({"modality": ("CT",)}, {"Modality": "CT"}, Seen(modality="CT")), True),
    (Case({"modality": ("ct",)}, {"Modality": "ct"}, Seen(modality="CT ")), True),  # case, padding
    (Case({"modality": ("CT",)}, {"Modality": "CT"}, Seen(modality="MR")), False),
    # A list: any of its items.
    (Case({"modality": ("MG", "CR")}, {"Modality": ["MG", "CR"]}, Seen(modality="CR")), True),
    (Case({"modality": ("MG", "CR")}, {"Modality": ["MG", "CR"]}, Seen(modality="CT")), False),
    (Case({"modality": ("re:^C",)}, {"Modality": "re:^C"}, Seen(modality="CR")), True),  # re:
    (Case({"view_position": ("re:^(LL|RL)$",)}, {"ViewPosition": "re:^(LL|RL)$"},
          Seen(view_position="LL")), True),
    (Case({"view_position": ("re:^(LL|RL)$",)}, {"ViewPosition": "re:^(LL|RL)$"},
          Seen(view_position="LLO")), False),
    # A missing attribute matches nothing but "", alone or in a list.
    (Case({"laterality": ("L",)}, {"ImageLaterality": "L"}, Seen(laterality=None)), False),
    (Case({"laterality": ("",)}, {"ImageLaterality": ""}, Seen(laterality=None)), True),
    (Case({"laterality": ("",)}, {"ImageLaterality": ""}, Seen(laterality="R")), False),
    (Case({"laterality": ("L", "")}, {"ImageLaterality": ["L", ""]}, Seen(laterality=None)), True),
    (Case({"image_plane": ("axial",)}, {"ImagePlane": "axial"}, Seen(image_plane="AXIAL")), True),
    (Case({"modality": ("CT",), "body_part": ("CHEST",)},
          {"Modality": "CT", "BodyPartExamined": "CHEST"}, Seen(modality="CT")), False),  # AND
    (Case({"image_type": ("PRIMARY",)}, {"ImageType": "PRIMARY"},
          Seen(image_type=("ORIGINAL", "PRIMARY", "AXIAL"))), True),  # any value of several
    (Case({"image_type": ("re:^DERIV",)}, {"ImageType": "re:^DERIV"},
          Seen(image_type=("ORIGINAL", "PRIMARY"))), False),
    (Case({"series_description": "re:^ax"}, {"SeriesDescription": "re:^ax"},
          Seen(series_description="AX T1 post")), True),
    (Case({"series_description": "t[12]$"}, {"SeriesDescription": "re:t[12]$"},
          Seen(series_description="cor T2")), True),
    (Case({"series_description": "t1"}, {"SeriesDescription": "re:t1"},
          Seen(series_description="AX T2")), False),
    (Case({}, {}, Seen(modality="SM")), True),  # nothing asked: anything fits
]  # fmt: skip


@pytest.mark.parametrize(("case", "matched"), ONE_LANGUAGE)
def test_a_match_table_and_a_series_rule_answer_alike(case: Case, matched: bool) -> None:
    candidate = case.seen.candidate()
    table = compile_match(case.table).evaluate(candidate.attributes)
    assert table.matched is matched, table.explain()
    assert rule_matches(SeriesRule(**case.rule), candidate) is matched


#: Where a SeriesRule reads differently (docs/models.md): (case, table's answer, rule's).
DIFFERENCES: list[tuple[Case, bool, bool]] = [
    # image_type: every value must be there; a table's list is any of them.
    (Case({"image_type": ("ORIGINAL", "PRIMARY")}, {"ImageType": ["ORIGINAL", "PRIMARY"]},
          Seen(image_type=("DERIVED", "PRIMARY"))), True, False),
    # series_description: always a regular expression, searched.
    (Case({"series_description": "t1"}, {"SeriesDescription": "t1"},
          Seen(series_description="AX T1 post")), False, True),
    # ... and a missing description is searched as empty text.
    (Case({"series_description": "^(?!.*scout)"}, {"SeriesDescription": "re:^(?!.*scout)"},
          Seen(series_description=None)), False, True),
    # min_instances counts frames, no attribute a table can name.
    (Case({"min_instances": 3}, {}, Seen(frames=2)), True, False),
]  # fmt: skip


@pytest.mark.parametrize(("case", "table_says", "rule_says"), DIFFERENCES)
def test_series_rule_differences_are_the_documented_ones(
    case: Case, table_says: bool, rule_says: bool
) -> None:
    candidate = case.seen.candidate()
    assert compile_match(case.table).evaluate(candidate.attributes).matched is table_says
    assert rule_matches(SeriesRule(**case.rule), candidate) is rule_says


def test_each_difference_is_said_in_the_language_by_its_translation() -> None:
    # image_type (all of) is one condition per value; a description that finds empty
    # text also accepts a missing one ("").
    assert SeriesRule(image_type=("ORIGINAL", "PRIMARY")).match.keys == ("ImageType",)
    assert len(SeriesRule(image_type=("ORIGINAL", "PRIMARY")).match.conditions) == 2
    assert SeriesRule(series_description="^(?!.*scout)").match == compile_match(
        {"SeriesDescription": ["re:^(?!.*scout)", ""]}
    )
    assert SeriesRule(modality=("CT",), image_plane=("AXIAL",)).match == compile_match(
        {"Modality": ["CT"], "ImagePlane": ["AXIAL"]}
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"series_description": "("}, "SeriesRule.series_description: .*bad regular expression"),
        ({"modality": ("re:(",)}, "SeriesRule.modality: .*bad regular expression"),
        ({"view_position": ("=>2",)}, "SeriesRule.view_position: .*not a valid comparison"),
        ({"modality": "CT"}, "SeriesRule.modality must be a tuple of strings"),
        ({"modality": ()}, None),
        ({"min_instances": 0}, "SeriesRule.min_instances must be >= 1"),
    ],
)
def test_series_rule_refuses_what_the_language_refuses_naming_the_field(
    fields: dict[str, Any], message: str | None
) -> None:
    if message is None:
        SeriesRule(**fields)
        return
    with pytest.raises(ValueError, match=message):
        SeriesRule(**fields)


def test_a_compiled_rule_travels_between_processes() -> None:
    spec = ViewSpec("ct", SeriesRule(modality=("re:^c",), series_description="ax", min_instances=2))
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.rule.match == spec.rule.match


def test_a_manifest_view_is_the_series_rule_a_python_model_would_declare(tmp_path: Path) -> None:
    manifest = write_threshold_segmenter(tmp_path, "dense", above_hu=300.0)
    model = load_manifest_model(manifest)
    assert model.views[0].rule == SeriesRule(modality=("CT",), image_plane=("AXIAL",))
    assert model.views[0].rule.match == compile_match({"Modality": ["CT"], "ImagePlane": ["AXIAL"]})


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('series_description = "("', "views.0: .*series_description"),
        ('modality = ["=>2"]', "views.0: .*modality"),
        ("bogus = 1", "views.0.bogus"),
        ('modality = "CT"', "views.0.modality"),
    ],
)
def test_a_bad_manifest_view_names_the_file_and_key(tmp_path: Path, line: str, key: str) -> None:
    manifest = write_threshold_segmenter(tmp_path, "dense", above_hu=300.0)
    text = manifest.read_text().replace('name = "ct"\n', f'name = "ct"\n{line}\n')
    manifest.write_text(text.replace('modality = ["CT"]\n', "") if "modality" in line else text)
    with pytest.raises(ValueError, match=key) as caught:
        load_manifest_model(manifest)
    assert "dense.toml" in str(caught.value)


def test_importing_the_settings_loads_no_pydicom() -> None:
    # The serving process hides numpy from pydicom after the settings module is
    # imported; the rule language must not have imported pydicom (and numpy) by then.
    code = "import sys, dicomnode.config, dicomnode.rules; print('pydicom' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "False"

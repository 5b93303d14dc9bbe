"""View grouping: which series fills which view of a model, and why not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dicomnode.index.instances import StudyImage
from dicomnode.models.api import NotApplicable, Preference, SeriesRule, ViewSpec
from dicomnode.worker.views import find_candidates, group_views

MG_VIEWS = tuple(
    ViewSpec(
        f"{side}-{pos}", SeriesRule(modality=("MG",), laterality=(side,), view_position=(pos,))
    )
    for side in ("L", "R")
    for pos in ("CC", "MLO")
)
CXR_VIEWS = (
    ViewSpec("PA", SeriesRule(modality=("DX", "CR"), view_position=("PA", "AP"))),
    ViewSpec("LAT", SeriesRule(modality=("DX", "CR"), view_position=("LL", "RL")), required=False),
)


def image(series: str, number: int = 1, **fields: object) -> StudyImage:
    values: dict[str, object] = {"rows": 64, "columns": 64, "modality": "MG"}
    values.update(fields)
    return StudyImage(
        series_instance_uid=series,
        sop_instance_uid=f"{series}.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        path=f"{series}/{number}.dcm",
        instance_number=number,
        **values,  # type: ignore[arg-type]
    )


def mg(series: str, side: str, pos: str, **fields: object) -> StudyImage:
    return image(series, laterality=side, view_position=pos, **fields)


def test_four_views_in_four_series_each_fill_their_view() -> None:
    images = [mg(f"1.{i}", s, p) for i, (s, p) in enumerate(
        [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")])]  # fmt: skip
    groups = group_views(MG_VIEWS, find_candidates(images))
    assert {n: c.series_instance_uid for n, c in groups.chosen.items()} == {
        "L-CC": "1.0", "L-MLO": "1.1", "R-CC": "1.2", "R-MLO": "1.3"}  # fmt: skip
    assert groups.missing == ()


def test_four_views_in_one_series_are_split_by_laterality_and_view_position() -> None:
    images = [mg("1.9", s, p, number=i) for i, (s, p) in enumerate(
        [("R", "MLO"), ("L", "CC"), ("R", "CC"), ("L", "MLO")], start=1)]  # fmt: skip
    groups = group_views(MG_VIEWS, find_candidates(images))
    chosen = {n: c.images[0].sop_instance_uid for n, c in groups.chosen.items()}
    assert chosen == {"L-CC": "1.9.2", "L-MLO": "1.9.4", "R-CC": "1.9.3", "R-MLO": "1.9.1"}


def test_missing_required_view_is_not_applicable_with_the_view_and_what_the_study_has() -> None:
    images = [mg("1.1", "L", "CC"), mg("1.2", "L", "MLO"), mg("1.3", "R", "CC")]
    with pytest.raises(NotApplicable) as caught:
        group_views(MG_VIEWS, find_candidates(images))
    message = str(caught.value)
    assert "'R-MLO'" in message
    assert "laterality R" in message and "view position MLO" in message
    assert "MG R CC" in message


def test_missing_optional_view_is_reported_as_missing() -> None:
    groups = group_views(
        CXR_VIEWS, find_candidates([image("2.1", modality="DX", view_position="PA")])
    )
    assert list(groups.chosen) == ["PA"]
    assert groups.missing == ("LAT",)


def test_duplicate_view_prefers_original_over_derived() -> None:
    images = [
        mg("1.1", "L", "CC", image_type="DERIVED\\PRIMARY", series_number=1),
        mg("1.2", "L", "CC", image_type="ORIGINAL\\PRIMARY", series_number=2),
    ]
    spec = (MG_VIEWS[0],)
    groups = group_views(spec, find_candidates(images))
    assert groups.chosen["L-CC"].series_instance_uid == "1.2"
    assert groups.matches["L-CC"] == 2


def test_duplicate_series_prefers_most_slices_then_latest() -> None:
    early = datetime(2026, 1, 1, tzinfo=UTC)
    late = datetime(2026, 1, 2, tzinfo=UTC)
    ct = {"modality": "CT", "image_plane": "AXIAL", "image_type": "ORIGINAL\\PRIMARY\\AXIAL"}
    images = [image("3.1", n, received_at=early, **ct) for n in range(1, 4)]
    images += [image("3.2", n, received_at=late, **ct) for n in range(1, 3)]
    images += [image("3.3", n, received_at=early, **ct) for n in range(1, 3)]
    spec = ViewSpec("ct", SeriesRule(modality=("CT",), image_plane=("AXIAL",)))
    assert group_views((spec,), find_candidates(images)).chosen["ct"].series_instance_uid == "3.1"
    latest_first = ViewSpec("ct", spec.rule, prefer=(Preference.LATEST,))
    groups = group_views((latest_first,), find_candidates(images))
    assert groups.chosen["ct"].series_instance_uid == "3.2"


def test_segmentations_and_reports_are_never_candidates() -> None:
    images = [
        image("4.1", modality="SEG"),
        image("4.2", modality="SR", rows=None, columns=None),
        image("4.3", modality="CT", image_plane="AXIAL"),
    ]
    assert [c.series_instance_uid for c in find_candidates(images)] == ["4.3"]


def test_one_series_fills_at_most_one_view() -> None:
    any_series = SeriesRule()
    specs = (ViewSpec("first", any_series), ViewSpec("second", any_series, required=False))
    groups = group_views(specs, find_candidates([image("5.1", modality="CT")]))
    assert list(groups.chosen) == ["first"]
    assert groups.missing == ("second",)


@pytest.mark.parametrize(
    ("rule", "fits"),
    [
        (SeriesRule(series_description="t1"), True),
        (SeriesRule(series_description="^flair"), False),
        (SeriesRule(image_type=("ORIGINAL",)), True),
        (SeriesRule(image_type=("DERIVED",)), False),
        (SeriesRule(body_part=("head",)), True),
        (SeriesRule(min_instances=3), False),
        (SeriesRule(modality=("mr",), image_plane=("sagittal",)), True),
    ],
)
def test_rule_fields_match_case_insensitively(rule: SeriesRule, fits: bool) -> None:
    images = [
        image("6.1", n, modality="MR", series_description="AX T1 post", body_part_examined="HEAD",
              image_type="ORIGINAL\\PRIMARY", image_plane="SAGITTAL")
        for n in (1, 2)
    ]  # fmt: skip
    groups_or_none = None
    try:
        groups_or_none = group_views((ViewSpec("v", rule),), find_candidates(images))
    except NotApplicable:
        pass
    assert (groups_or_none is not None) is fits


def test_series_rule_refuses_a_bad_regular_expression() -> None:
    with pytest.raises(ValueError, match="series_description"):
        SeriesRule(series_description="(")

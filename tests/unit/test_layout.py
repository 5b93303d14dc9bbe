"""The data folder's layout: where each file goes, and what a deleted study leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.index.layout import DataLayout


def test_instance_paths_are_relative_and_nested_by_study_and_series(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)

    relative = DataLayout.instance_relpath("1.2", "1.2.3", "1.2.3.4")

    assert relative == Path("instances/1.2/1.2.3/1.2.3.4.dcm")
    assert layout.path(relative.as_posix()) == tmp_path / "instances/1.2/1.2.3/1.2.3.4.dcm"
    assert layout.relative(layout.path(relative)) == "instances/1.2/1.2.3/1.2.3.4.dcm"


@pytest.mark.parametrize("uid", ["", ".", "..", "1.2/../../etc", "1.2\0"])
def test_a_name_that_could_leave_its_folder_is_refused(tmp_path: Path, uid: str) -> None:
    with pytest.raises(ValueError, match="cannot name a file under data_dir"):
        DataLayout.instance_relpath("1.2", "1.2.3", uid)
    with pytest.raises(ValueError, match="cannot name a file under data_dir"):
        DataLayout(tmp_path).superseded_path(uid, "1.2.3.4", "ab" * 32)


def test_every_folder_lies_directly_under_data_dir(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    folders = [
        layout.instances, layout.spool, layout.superseded, layout.results,
        layout.quarantine, layout.scratch, layout.models, layout.logs, layout.metrics,
    ]  # fmt: skip

    assert [f.parent for f in folders] == [tmp_path] * len(folders)
    assert len({f.name for f in folders}) == len(folders)
    assert layout.database.parent == tmp_path


def test_a_scratch_folder_is_named_by_its_task_and_removed_after_use(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)

    with layout.scratch_dir("backfill") as name:
        scratch = Path(name)
        (scratch / "inflated").write_bytes(b"x")
        assert scratch.parent == layout.scratch
        assert scratch.name.startswith("backfill-")

    assert list(layout.scratch.iterdir()) == []


def test_job_files_lie_in_the_jobs_folder(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)

    assert layout.masks_path(7).parent == layout.job_folder(7) == layout.results / "job-7"
    assert layout.output_path(7, "seg", "1.2.3").name == "seg-1.2.3.dcm"
    assert layout.output_path(7, "seg", "1.2.3").parent == layout.job_folder(7)


def test_quarantine_keeps_the_path_under_instances(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    stored = layout.path(DataLayout.instance_relpath("1.2", "1.2.3", "1.2.3.4"))

    assert layout.quarantine_path(stored) == tmp_path / "quarantine/1.2/1.2.3/1.2.3.4.dcm"


def test_superseded_copies_are_found_by_study_and_instance(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    mine = layout.superseded_path("1.2", "1.2.3.4", "a" * 64)
    other_instance = layout.superseded_path("1.2", "1.2.3.5", "b" * 64)
    other_study = layout.superseded_path("1.9", "1.2.3.4", "c" * 64)
    for path in (mine, other_instance, other_study):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    assert mine == tmp_path / "superseded/1.2" / f"1.2.3.4.{'a' * 16}.dcm"
    assert layout.superseded_copies("1.2", ["1.2.3.4"]) == [mine]
    assert layout.superseded_copies("1.3", ["1.2.3.4"]) == []


def test_removing_a_study_leaves_another_studys_files_and_the_top_folders(
    tmp_path: Path,
) -> None:
    layout = DataLayout(tmp_path)
    gone = layout.path(DataLayout.instance_relpath("1.2", "1.2.3", "1.2.3.4"))
    stays = layout.path(DataLayout.instance_relpath("1.9", "1.9.3", "1.9.3.4"))
    copy = layout.superseded_path("1.2", "1.2.3.4", "a" * 64)
    for path in (gone, stays, copy, layout.masks_path(3)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    removed = layout.remove_study_files(
        "1.2", [layout.relative(gone), "instances/1.2/1.2.3/already-gone.dcm"], ["1.2.3.4"], [3]
    )

    assert removed == 2
    assert not (layout.instances / "1.2").exists()
    assert not (layout.superseded / "1.2").exists()
    assert not layout.job_folder(3).exists()
    assert stays.is_file()
    assert layout.instances.is_dir() and layout.superseded.is_dir()

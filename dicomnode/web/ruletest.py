"""The rule tester: upload DICOM files, see which pipelines and routes match, and why.

The page saves the uploads to a temporary folder (removed when the request ends;
nothing is indexed or stored) and hands them to the node's rule tester, the one
``dicomnode rules test`` uses (``dicomnode.cli.rules.check_files``, given to
:func:`~dicomnode.web.app.create_app` by the command that serves the page): the
header walk of ingest, then each ``[[pipelines]]`` and ``[[routes]]`` rule on the
attributes the scheduler would see, with the key that failed and the value it saw.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse

from dicomnode.web.pages import page

__all__ = ["MAX_FILES", "MAX_UPLOAD_BYTES", "RuleEntry", "RuleTester", "Verdict", "router"]

router = APIRouter(tags=["rules"])

#: The most files one test takes.
MAX_FILES = 50
#: The most bytes one test takes, all files together.
MAX_UPLOAD_BYTES = 256 * 2**20
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class RuleEntry:
    """One pipeline's or route's verdict on one file."""

    kind: str  # "pipeline" or "route"
    name: str
    matched: bool
    #: Each key's check: the expected value, the value seen, pass or fail.
    explanation: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules make of one file."""

    name: str
    #: Why the node would refuse the file (None when it would take it).
    refused: str | None = None
    series_instance_uid: str = ""
    modality: str = ""
    entries: tuple[RuleEntry, ...] = ()


#: ``(files, calling AE or None) -> one verdict per file``, in order.
RuleTester = Callable[[Sequence[Path], str | None], list[Verdict]]


@router.get("/rules", response_class=HTMLResponse)
def rules_form(request: Request) -> HTMLResponse:
    """The upload form."""
    return page(request, "rules.html", "Rule tester", "Rule tester", verdicts=None, calling_ae="")


@router.post("/rules", response_class=HTMLResponse)
def rules_test(
    request: Request,
    files: Annotated[list[UploadFile], File()],
    calling_ae: str = Form(""),
) -> HTMLResponse:
    """Test the uploaded files against the node's rules."""
    if len(files) > MAX_FILES:
        raise HTTPException(413, f"at most {MAX_FILES} files per test")
    tester: RuleTester = request.app.state.rule_tester
    with tempfile.TemporaryDirectory(prefix="dicomnode-ruletest-") as folder:
        paths = _save(files, Path(folder))
        verdicts = tester(paths, calling_ae.strip() or None)
    named = [
        Verdict(upload.filename or f"file {i + 1}", v.refused, v.series_instance_uid, v.modality,
                v.entries)
        for i, (upload, v) in enumerate(zip(files, verdicts, strict=True))
    ]  # fmt: skip
    return page(
        request, "rules.html", "Rule tester", "Rule tester",
        verdicts=named, calling_ae=calling_ae,
    )  # fmt: skip


def _save(files: list[UploadFile], folder: Path) -> list[Path]:
    """Write the uploads under ``folder`` (numbered names: the client's are not trusted)."""
    total = 0
    paths = []
    for i, upload in enumerate(files):
        path = folder / f"{i:03d}.dcm"
        with path.open("wb") as out:
            while chunk := upload.file.read(_CHUNK):
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise HTTPException(413, f"at most {MAX_UPLOAD_BYTES // 2**20} MiB per test")
                out.write(chunk)
        paths.append(path)
    return paths

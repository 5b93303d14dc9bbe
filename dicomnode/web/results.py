"""What a study page shows of its results: SEG thumbnails, SR findings, regions drawn.

:class:`Results` finds an output's files through the index (the output, the series
it was made from). An SR's findings are read here (:mod:`dicomnode.web.findings`,
no numpy); a PNG is looked up in the cache under ``data_dir/previews/<study>/``
(keyed by the files' identities, so a replaced output renders afresh) and, when
missing, drawn by the renderer's child process (:mod:`dicomnode.web.render`,
:mod:`dicomnode.web.previews`). ``/outputs/{id}/preview.png`` serves them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.instances import find_instances
from dicomnode.index.layout import DataLayout
from dicomnode.index.studies import OutputSummary, find_output, series_instance_paths
from dicomnode.log import describe_error
from dicomnode.web._preview_cache import PreviewCache
from dicomnode.web.findings import FindingRow, PreviewError, sr_findings
from dicomnode.web.render import Renderer, RenderError

__all__ = ["Results", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["results"])


class Results:
    """Previews of one node's outputs, from its data folder and index."""

    def __init__(self, data_dir: Path, session_factory: sessionmaker[Session]) -> None:
        self.layout = DataLayout(data_dir)
        self.sessions = session_factory
        self.cache = PreviewCache(self.layout.previews)
        self.renderer = Renderer()

    def findings(self, output: OutputSummary) -> list[FindingRow] | None:
        """The findings table of an SR; None when the file cannot be read."""
        try:
            return sr_findings(self.layout.path(output.path))
        except (OSError, PreviewError) as exc:
            logger.warning(
                "SR not readable for its preview",
                extra={"action": "preview_failed", "output_id": output.id,
                       "error": describe_error(exc)},
            )  # fmt: skip
            return None

    def preview_png(self, output_id: int) -> bytes:
        """The PNG preview of a SEG, or of an SR's regions on its images.

        Raises
        ------
        LookupError
            The output is unknown, or has no preview (an SC, an SR without regions).
        PreviewError, RenderError, OSError
            Its files cannot be read or rendered.
        """
        with self.sessions() as session:
            found = find_output(session, output_id)
            if found is None:
                raise LookupError(f"no output {output_id}")
            study_uid, output = found
            path = self.layout.path(output.path)
            if output.kind == "seg":
                sources = [
                    self.layout.path(p)
                    for uid in _referenced_series(path)
                    for p in series_instance_paths(session, uid)
                ]
                return self.cache.get_or_render(
                    ("seg", path, *sources),
                    lambda: self.renderer.seg(path, sources),
                    study_instance_uid=study_uid,
                )
            if output.kind == "sr":
                regions = [r for row in sr_findings(path) for r in row.regions]
                if not regions:
                    raise LookupError(f"output {output_id} draws no regions")
                uids = list(dict.fromkeys(r.sop_instance_uid for r in regions))
                stored = find_instances(session.connection(), uids)
                images = [self.layout.path(stored[u][1]) for u in uids if u in stored]
                return self.cache.get_or_render(
                    ("regions", path, *images),
                    lambda: self.renderer.regions(path, images),
                    study_instance_uid=study_uid,
                )
        raise LookupError(f"output {output_id} ({output.kind}) has no preview")


def _referenced_series(seg_path: Path) -> list[str]:
    """The Series Instance UIDs a SEG was made from (its ReferencedSeriesSequence)."""
    ds = dcmread(seg_path, stop_before_pixels=True, specific_tags=["ReferencedSeriesSequence"])
    return [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]


@router.get("/outputs/{output_id}/preview.png")
def preview(request: Request, output_id: int) -> Response:
    """An output's preview as PNG (cached on disk)."""
    results: Results = request.app.state.results
    try:
        png = results.preview_png(output_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    except (OSError, PreviewError, RenderError) as exc:
        logger.warning(
            "preview not rendered",
            extra={"action": "preview_failed", "output_id": output_id,
                   "error": describe_error(exc)},
        )  # fmt: skip
        raise HTTPException(500, "the preview could not be rendered") from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

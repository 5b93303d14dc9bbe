"""The on-disk cache of rendered previews (:class:`PreviewCache`).

Private to the web stage; :mod:`dicomnode.web.previews` exports it. A preview is a
PNG under ``DataLayout.previews``, one folder per study, so retention deletes a
study's previews with it (:meth:`~dicomnode.index.layout.DataLayout.remove_study_files`)
and the whole folder may be deleted at any time.

A key names what the preview is of (labels and file paths) and which bytes it was
drawn from (each file's identity): ``<study>/<what>.<identity>.png``. Replacing a
file changes its identity, so the preview is rendered again and the one it replaces
removed; a cache of one study stays one file per key. Files are written with
:func:`~dicomnode.index.durable.atomic_write` (no reader sees half a PNG), and a file
that is not a whole PNG (a power cut after the rename) is rendered again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from dicomnode.index.durable import atomic_write

__all__ = ["PreviewCache"]

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


class PreviewCache:
    """Rendered previews kept as PNG files, one folder per study.

    Parameters
    ----------
    folder
        ``DataLayout(data_dir).previews``. A study's previews lie in
        ``<folder>/<study_instance_uid>/`` (:meth:`DataLayout.preview_dir
        <dicomnode.index.layout.DataLayout.preview_dir>`), which retention deletes
        with the study; the whole folder may be deleted at any time.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def study_folder(self, study_instance_uid: str) -> Path:
        """Where the previews of one study are kept."""
        uid = study_instance_uid
        if not uid or uid in (".", "..") or "/" in uid or "\0" in uid:
            raise ValueError(f"{uid!r} cannot name a preview folder")
        return self.folder / uid

    def get_or_render(
        self,
        key_parts: Sequence[str | os.PathLike[str]],
        render: Callable[[], bytes],
        *,
        study_instance_uid: str,
    ) -> bytes:
        """The cached PNG of `key_parts`, else ``render()``'s, kept for next time.

        Parameters
        ----------
        key_parts
            What the preview is of. A string is a label (``"seg"``); a path
            (``os.PathLike``) is a file whose identity enters the key: device,
            inode, size, mtime and ctime (ns), so replacing it (``os.replace``, a
            rewrite) renders anew. Give every file the preview is drawn from.
        render
            Makes the PNG (e.g. ``lambda: seg_thumbnail(seg, sources)``); called only
            on a miss.
        study_instance_uid
            The study the preview belongs to (its folder).

        Returns
        -------
        bytes
            The PNG.

        Raises
        ------
        FileNotFoundError
            If a file of `key_parts` is gone.
        ValueError
            If ``render()`` does not return a PNG, or `study_instance_uid` could
            leave the folder.
        """
        slot, version = _cache_key(key_parts)
        folder = self.study_folder(study_instance_uid)
        path = folder / f"{slot}.{version}.png"
        cached = _cached_png(path)
        if cached is not None:
            return cached
        data = render()
        if not data.startswith(_PNG_SIGNATURE):
            raise ValueError("render() must return a PNG")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, self.folder)
            for stale in folder.glob(f"{slot}.*.png"):
                if stale != path:  # the preview of the file this one replaced
                    stale.unlink(missing_ok=True)
        except OSError as exc:
            # A full disk, or retention removing the folder meanwhile: the page still
            # gets its preview, rendered again next time.
            logger.warning(
                "preview not cached",
                extra={"action": "preview_not_cached", "study_instance_uid": study_instance_uid,
                       "reason": type(exc).__name__},
            )  # fmt: skip
        return data


def _cache_key(key_parts: Sequence[str | os.PathLike[str]]) -> tuple[str, str]:
    """(slot, version): what the preview is of, and which bytes it was drawn from."""
    what, identity = hashlib.sha256(), hashlib.sha256()
    for part in key_parts:
        if isinstance(part, os.PathLike):
            name = os.fspath(part)
            st = os.stat(name)
            identity.update(
                f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\0".encode()
            )
            what.update(b"path\0" + os.fsencode(os.path.abspath(name)) + b"\0")
        else:
            what.update(b"text\0" + str(part).encode() + b"\0")
    return what.hexdigest()[:32], identity.hexdigest()[:16]


def _cached_png(path: Path) -> bytes | None:
    """The file's bytes if it is a whole PNG (a torn write is rendered again)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_END):
        return data
    return None

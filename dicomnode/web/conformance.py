"""``/conformance``: the node's DICOM Conformance Statement, served by the node itself.

The statement is ``docs/conformance.md`` (its tables generated from the code by
``python -m dicomnode.conformance``); the wheel ships it as
``dicomnode/_docs/conformance.md``, a checkout has it under ``docs/``. It is turned
into HTML here by :func:`markdown_to_html`, which knows the subset the document uses
(headings, paragraphs, tables, lists, fenced code, inline code, bold, links) and
escapes everything else, so the page needs no Markdown library.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

import dicomnode
from dicomnode.web.pages import page

__all__ = ["markdown_to_html", "router", "statement_path"]

router = APIRouter(tags=["conformance"])

_PACKAGE = Path(dicomnode.__file__).parent
#: Where the statement is: installed (the wheel), then a checkout.
_PLACES = (_PACKAGE / "_docs" / "conformance.md", _PACKAGE.parent / "docs" / "conformance.md")
_HEADING = re.compile(r"^(#{1,6}) (.*)$")
_LIST_ITEM = re.compile(r"^(\s*)(?:[-*]|\d+\.) (.*)$")


def statement_path() -> Path | None:
    """The conformance statement's file; None when this installation has none."""
    return next((p for p in _PLACES if p.is_file()), None)


def _inline(text: str) -> str:
    """Escape ``text``, then render inline code, bold and links."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(
            r"\[([^\]]+)\]\((#[A-Za-z0-9_-]+|https?://[^)\s]+)\)", r'<a href="\2">\1</a>', escaped
        )
        out.append(escaped)
    return "".join(out)


def _anchor(title: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    body = [r for r in cells[1:] if not all(re.fullmatch(r":?-+:?", c or "-") for c in r)]
    head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
    lines = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{head}</tr>{lines}</table>"


def markdown_to_html(text: str) -> str:
    """The document as HTML (the subset of Markdown the statement uses)."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = i + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1 : end]))}</code></pre>")
            i = end + 1
            continue
        if line.startswith("<!--"):  # the generator's markers
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2)
            out.append(f'<h{level} id="{_anchor(title)}">{_inline(title)}</h{level}>')
            i += 1
            continue
        if line.startswith("|"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            out.append(_table(lines[i:end]))
            i = end
            continue
        if _LIST_ITEM.match(line):
            items = []
            while i < len(lines) and (item := _LIST_ITEM.match(lines[i])):
                text_ = item.group(2)
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                    if _LIST_ITEM.match(lines[i]):
                        break
                    text_ += " " + lines[i].strip()
                    i += 1
                items.append(f"<li>{_inline(text_)}</li>")
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        if not line.strip():
            i += 1
            continue
        paragraph = [line]
        i += 1
        while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||```|<!--)", lines[i]):
            if _LIST_ITEM.match(lines[i]):
                break
            paragraph.append(lines[i])
            i += 1
        out.append(f"<p>{_inline(' '.join(p.strip() for p in paragraph))}</p>")
    return "\n".join(out)


@router.get("/conformance", response_class=HTMLResponse)
def conformance(request: Request) -> HTMLResponse:
    """The DICOM Conformance Statement as a page."""
    path = statement_path()
    if path is None:
        raise HTTPException(404, "this installation has no conformance statement")
    body = markdown_to_html(path.read_text(encoding="utf-8"))
    return page(request, "document.html", "Conformance statement", "Conformance", body=body)


@router.get("/conformance.md", response_class=PlainTextResponse)
def conformance_markdown() -> PlainTextResponse:
    """The statement as written (Markdown)."""
    path = statement_path()
    if path is None:
        raise HTTPException(404, "this installation has no conformance statement")
    return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown")

"""Render the report's sections as Markdown and as one self-contained HTML page.

A :class:`Section` is a title and a list of blocks: ``text`` (a paragraph with ``**bold**`` and
``` `code` ```), ``list`` (bullet points), ``heading`` (a sub-heading), ``table`` (a DataFrame),
``image`` (a PNG next to the report, embedded in the HTML) and ``code``. Both renderings come
from the same blocks, so they never disagree. Wide tables scroll inside their box and their
headers wrap, so no table runs off the page.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["Section", "to_html", "to_markdown"]


@dataclass
class Section:
    """A report section: a title and its blocks."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def text(self, value: str) -> None:
        self.blocks.append(("text", value))

    def bullets(self, values: list[str]) -> None:
        self.blocks.append(("list", list(values)))

    def heading(self, value: str) -> None:
        self.blocks.append(("heading", value))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("image", (Path(path), caption)))

    def code(self, value: str) -> None:
        self.blocks.append(("code", value))


def to_markdown(title: str, sections: list[Section], out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for kind, value in sec.blocks:
            if kind == "text":
                lines += [str(value), ""]
            elif kind == "list":
                lines += [f"- {item}" for item in value] + [""]
            elif kind == "heading":
                lines += [f"### {value}", ""]
            elif kind == "table":
                lines += [_markdown_table(value), ""]
            elif kind == "image":
                path, caption = value
                lines += [f"![{caption}]({path.relative_to(out_dir)})", ""]
            elif kind == "code":
                lines += ["```", str(value).rstrip(), "```", ""]
    return "\n".join(lines)


def _markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table with undefined values as ``-`` and text kept as written (``+0.000``)."""
    shown = frame.astype(object).where(frame.notna(), "-")
    return shown.to_markdown(index=False, disable_numparse=True)


def _md_inline(text: str) -> str:
    """Escape, then render the two inline marks the report uses: **bold** and `code`."""
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_block(kind: str, value) -> str:
    if kind == "text":
        return f"<p>{_md_inline(str(value))}</p>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{_md_inline(str(v))}</li>" for v in value) + "</ul>"
    if kind == "heading":
        return f"<h3>{_md_inline(str(value))}</h3>"
    if kind == "table":
        table = value.to_html(index=False, border=0, classes="tbl", na_rep="-")
        # long snake_case headers may wrap after an underscore, not inside a word
        table = re.sub(
            r"<th>([^<]*)</th>", lambda m: f"<th>{m[1].replace('_', '_<wbr>')}</th>", table
        )
        return f'<div class="tblwrap">{table}</div>'
    if kind == "image":
        path, caption = value
        data = base64.b64encode(path.read_bytes()).decode()
        return (
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    if kind == "code":
        return f"<pre>{html.escape(str(value))}</pre>"
    raise ValueError(f"unknown report block kind {kind!r}")


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}h3{margin-bottom:.3em}"
    ".tblwrap{max-width:100%;overflow-x:auto;margin:.4em 0 1em}"
    ".tbl{border-collapse:collapse;font-size:.85em}.tbl td,.tbl th{padding:.25em .5em;"
    "border-bottom:1px solid #eee;text-align:right;vertical-align:top}"
    ".tbl th{overflow-wrap:break-word;max-width:10em;background:#fafafa}"
    ".tbl td:first-child,.tbl th:first-child{text-align:left}"
    "pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}img{max-width:100%}"
    ".banner{background:#fff3cd;border:1px solid #e0c36a;padding:.6em;font-weight:bold}"
    "nav{margin-bottom:1em;line-height:1.6}section#s0{border:1px solid #c9d6ea;"
    "background:#f7faff;padding:0 1em .5em;border-radius:6px}"
)


def to_html(title: str, sections: list[Section], simulated: bool) -> str:
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if simulated:
        body.append('<p class="banner">SIMULATED DATA: not real measurements.</p>')
    body.append(
        "<nav>"
        + " · ".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(sections))
        + "</nav>"
    )
    for i, sec in enumerate(sections):
        body.append(f'<section id="s{i}"><h2>{html.escape(sec.title)}</h2>')
        body += [_html_block(kind, value) for kind, value in sec.blocks]
        body.append("</section>")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )

"""HTML building blocks of the report: escaped tables, sections, thumbnails as data URIs, the page shell.

No template engine: strings and ``html.escape``. Whatever this package builds itself is ``Markup`` and is never
escaped again; everything else (keys, sources, captions, details) is escaped where it is placed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from html import escape
from typing import Any

from curation.thumbnails import make_thumbnail

NO_DATA = '<p class="nodata">no data</p>'

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1400px; }
nav a { margin-right: 0.8rem; }
section { margin-bottom: 2.5rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.nodata { color: #888; font-style: italic; }
.chart { display: block; margin: 0.3rem 0 1rem; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 1rem; }
.grid figure { margin: 0; border: 1px solid #ddd; padding: 0.4rem; }
.grid figcaption { font-size: 0.8rem; max-height: 14rem; overflow: auto; overflow-wrap: anywhere; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.4rem; align-items: flex-start; }
.thumb { margin: 0; font-size: 0.7rem; max-width: 130px; overflow-wrap: anywhere; }
.placeholder { width: 128px; height: 96px; background: #eee; color: #777; display: flex; align-items: center;
  justify-content: center; text-align: center; font-size: 0.75rem; border: 1px dashed #bbb; }
.dup { display: flex; gap: 1rem; align-items: flex-start; border-bottom: 1px solid #eee; padding: 0.4rem 0; }
.kept { outline: 3px solid #3a9a4a; }
.dropped { outline: 3px solid #d04a4a; }
.warn { color: #a33; font-weight: bold; }
small { color: #666; }
"""


class Markup(str):
    """HTML this package built itself; never passed through ``escape`` again."""


def text(value: Any) -> str:
    return value if isinstance(value, Markup) else escape("" if value is None else str(value))


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> Markup:
    """Cells are escaped unless wrapped in ``Markup``; numbers are right-aligned."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return Markup(f"<table><tr>{head}</tr>{body}</table>")


def _cell(value: Any) -> str:
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{_number(value)}</td>'
    return f"<td>{text(value)}</td>"


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def section(anchor: str, title: str, *parts: str) -> Markup:
    """``<section id=anchor>`` with its heading; a section with nothing in it says ``no data``."""
    body = "".join(parts) or NO_DATA
    return Markup(f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{body}</section>')


def jpeg_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def image_tag(jpeg: bytes | None, alt: str, css: str = "", placeholder: str = "no picture") -> Markup:
    """An ``<img>`` of JPEG bytes, or a grey placeholder box saying ``placeholder``."""
    if not jpeg:
        return Markup(f'<div class="placeholder {css}">{escape(placeholder)}</div>')
    return Markup(f'<img class="{css}" src="{jpeg_uri(jpeg)}" alt="{escape(alt)}">')


def thumbnail_tag(image: bytes | None, alt: str, side: int, css: str = "") -> Markup:
    """An ``<img>`` of a thumbnail made here from a stored image (never the original), or a placeholder."""
    return image_tag(make_thumbnail(image, side) if image else None, alt, css)


def page(title: str, nav: Iterable[tuple[str, str]], sections: Iterable[str]) -> str:
    links = " ".join(f'<a href="#{escape(anchor)}">{escape(name)}</a>' for anchor, name in nav)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1><nav>{links}</nav>"
        f"{''.join(sections)}</body></html>"
    )

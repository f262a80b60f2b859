"""Small HTML helpers shared by the report page and its sections."""
from __future__ import annotations

import html

from .summary import MISSING


def esc(value: object) -> str:
    """``value`` as HTML-escaped text (quotes too)."""
    return html.escape(str(value), quote=True)


def num_cell(text: str, *classes: str) -> str:
    """A right-aligned numeric cell holding already-escaped HTML; greyed out when it is only the missing dash."""
    names = ["num", *classes] + (["missing"] if text == MISSING else [])
    return f'<td class="{" ".join(names)}">{text}</td>'


def swatch(color: str) -> str:
    """The small coloured square that identifies a variant in tables."""
    return f'<span class="swatch" style="background:{esc(color)}"></span>'


def variant_cell(label: str, color: str, details: list[str]) -> str:
    """A table's first cell: colour swatch, label and a muted second line of details (plain text, escaped here)."""
    detail = " · ".join(esc(d) for d in details if d)
    return (f'<td class="variant">{swatch(color)}{esc(label)}' + (f"<small>{detail}</small>" if detail else "")
            + "</td>")


def table(head: str, rows: list[str], classes: str = "") -> str:
    """A scrollable table from a header row (or rows) and body rows, all already HTML."""
    cls = f' class="{esc(classes)}"' if classes else ""
    return f'<div class="scroll"><table{cls}><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'

"""The report's "Where they disagree" section: test sentences the teacher and the deployed student label apart."""
from __future__ import annotations

from .markup import esc


def examples_section(metrics: dict) -> str:
    """A table of ``metrics["examples"]`` (text runs only); empty when the run has none."""
    ex = metrics.get("examples")
    if not ex:
        return ""
    n, of = ex.get("disagreements", 0), ex.get("of", 0)
    who = esc(ex.get("student_variant", "student"))
    intro = (f"<p>The teacher and {who} predict different classes on {n:,} of {of:,} test texts"
             + (f"; {len(ex['rows'])} of them, the student's mistakes first:</p>" if ex.get("rows") else ".</p>"))
    if not ex.get("rows"):
        return f"<section><h2>Where they disagree</h2>{intro}</section>"
    def cell(pred: str, label: str) -> str:  # a correct prediction is highlighted
        return f'<td class="best">{esc(pred)}</td>' if pred == label else f"<td>{esc(pred)}</td>"

    body = "".join(f"<tr><td>{esc(r['text'])}</td><td>{esc(r['label'])}</td>{cell(r['teacher'], r['label'])}"
                   f"{cell(r['student'], r['label'])}</tr>" for r in ex["rows"])
    return (f"<section><h2>Where they disagree</h2>{intro}<table><thead><tr><th>text</th><th>label</th>"
            f"<th>teacher</th><th>{who}</th></tr></thead><tbody>{body}</tbody></table></section>")

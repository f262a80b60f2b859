"""Run reports: the six figures, the self-contained report.html (with a Deployment section when the run has
compression / deployment data) and the summary table shared with the CLI."""
from __future__ import annotations

from .figures import FIGURE_KEYS, make_figures
from .page import write_report
from .summary import format_bytes, format_count, summary_rows

__all__ = ["FIGURE_KEYS", "format_bytes", "format_count", "make_figures", "summary_rows", "write_report"]

"""The run report: plots (``plots``) and one self-contained HTML page (``html``)."""

from .html import REPORT_FILE, render_report

__all__ = ["REPORT_FILE", "render_report"]

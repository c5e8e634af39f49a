"""`regsearch report`: the study's HTML page and figures (`page`), drawn from what `data`
reads of the study: `figures` (matplotlib) and `plots` (Optuna's plotly figures)."""

from search.report.page import ReportResult, write_report

__all__ = ["ReportResult", "write_report"]

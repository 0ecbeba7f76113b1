"""Reports from stored results: tables (pandas), renderers, plots. Never runs an attack."""

from robustgen_bench.report.outputs import render_table, summary_table, write_reports

__all__ = ["render_table", "summary_table", "write_reports"]

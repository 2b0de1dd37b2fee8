"""Reports: figures and tables made from run directories and benchmark records (matplotlib, lazily)."""

from lappdeploy.report.plots import keep_ratio_chart, lapp_run_figure, read_metrics

__all__ = ["keep_ratio_chart", "lapp_run_figure", "read_metrics"]

"""Reports: markdown tables and plots of pruning results."""

from sensiprune.report.markdown import sweep_table
from sensiprune.report.plots import plot_sensitivity, plot_sweep

__all__ = ["plot_sensitivity", "plot_sweep", "sweep_table"]

"""Reports: markdown tables and plots of pruning results."""

from sensiprune.report.markdown import sweep_table
from sensiprune.report.plots import plot_sensitivity, plot_sweep, plot_trajectory

__all__ = ["plot_sensitivity", "plot_sweep", "plot_trajectory", "sweep_table"]

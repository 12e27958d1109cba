"""Reports: markdown tables and plots of pruning results."""

from .markdown import sweep_table
from .plots import plot_sensitivity, plot_sweep

__all__ = ["plot_sensitivity", "plot_sweep", "sweep_table"]

"""Measuring what pruning costs: sensitivity curves, cross-validation, criteria side by side."""

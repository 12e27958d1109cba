"""Pruning applied: masks that keep weights at zero, and surgery that makes layers smaller."""

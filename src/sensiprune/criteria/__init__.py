"""Sensitivity criteria, registered by name. Importing this package registers them all."""

from . import activation, baseline, channel, gradient, heads, hessian, obs, perturbation  # noqa: F401
from .base import Criterion, ScoringContext, available, get, register

__all__ = ["Criterion", "ScoringContext", "available", "get", "register"]

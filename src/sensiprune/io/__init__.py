"""Saving and loading pruned models, and files written whole or not at all."""

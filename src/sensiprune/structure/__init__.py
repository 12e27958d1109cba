"""The dependency graph: which channels, heads and hidden units of which layers go together."""

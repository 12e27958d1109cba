"""A pruning run end to end: recipe, runner, training, checkpoints."""

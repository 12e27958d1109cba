"""One handler per module type (see base.py); importing this package registers them all."""

from sensiprune.handlers import (  # noqa: F401
    attention,
    conv,
    embedding,
    instance_norm,
    linear,
    norm,
    passthrough,
    prelu,
    recurrent,
    reshaping,
)

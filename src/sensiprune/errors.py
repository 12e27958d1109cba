"""The one error type users see for bad input."""


class SensipruneError(ValueError):
    """Bad input to a sensiprune entry point.

    The message is one line: what is wrong and how to fix it. The CLI prints it and exits
    with code 2; library callers can catch it like any ValueError.
    """


class CutRefused(SensipruneError):
    """A structured cut that the pruned model's own check refused (it did not run, or its
    output changed shape); the model was put back as it was. ``fixed`` counts the places
    whose sizes the model's code fixes and the cut followed (see graph.build_graph)."""

    def __init__(self, message: str, fixed: int = 0) -> None:
        super().__init__(message)
        self.fixed = fixed


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for a
    one-line error that names what went wrong underneath."""
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__

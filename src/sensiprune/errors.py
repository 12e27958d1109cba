"""The one error type users see for bad input."""


class SensipruneError(ValueError):
    """Bad input to a sensiprune entry point.

    The message is one line: what is wrong and how to fix it. The CLI prints it and exits
    with code 2; library callers can catch it like any ValueError.
    """

"""The ``sensiprune`` command line and its subcommands."""

"""Error types that the command line turns into exit codes."""


class UsageError(Exception):
    """Bad usage or unreadable input: the CLI prints the message on one line and exits 2."""

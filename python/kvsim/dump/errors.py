"""The one error type the CLI turns into a one-line message and exit status 1."""


class DumpError(Exception):
    """A user-facing problem: bad option, unreadable input, unsupported model."""

    def __init__(self, where, what):
        super().__init__(f"{where}: {what}" if where else what)

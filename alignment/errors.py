"""The one exception type the CLI turns into a clean message and exit code 2."""


class AlignError(Exception):
    """A user-facing error: bad config, bad data, a missing path. The message says what to change."""

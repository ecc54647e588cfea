"""The one exception type the CLI turns into a clear message instead of a traceback."""


class RecguardError(Exception):
    """A problem the user can fix (bad path, bad column, bad bundle); the message says what."""

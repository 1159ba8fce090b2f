"""The one exception type users see: a clear, one-line message about their input."""


class PrunellmError(ValueError):
    """Bad input or an unmet precondition, worded for the user.

    The CLI prints `error: <message>` and exits non-zero; no traceback.
    """

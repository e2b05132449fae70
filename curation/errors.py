"""The one exception type for the user's mistakes (bad input, bad config)."""


class CurationError(ValueError):
    """Bad input or config; the message is one line naming the file/column/field and what was
    expected. Command lines print it and exit with code 2."""

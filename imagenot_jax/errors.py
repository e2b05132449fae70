"""The user's mistakes, as one exception family: the command lines print the message (one line
naming the file, field or value and what was expected) and exit with code 2. Every other
exception is a bug or an environment failure and keeps its traceback (exit 1).

They subclass the built-in types they replace, so `except ValueError` / `FileNotFoundError`
callers keep working."""


class UserError(ValueError):
    """Bad input or config."""


class MissingInputError(UserError, FileNotFoundError):
    """An input the user named (workdir, checkpoint, dataset, file) is not there."""


class ExistingOutputError(UserError, FileExistsError):
    """An output the user named exists already and is not to be overwritten."""

"""Errors that tell a command-line user what to change.

Every class here has ``user_facing = True``. When one of them reaches the top of a
fairseq console script uncaught, the compat fix :mod:`mega_fairseq_compat.user_errors`
prints it as one line, ``<prog>: error: <message>``, instead of a traceback (the
traceback too with ``MEGA_FAIRSEQ_TRACEBACK=1``); the exit status stays 1. The fix tests
the attribute only, so other error classes can opt in the same way.

Each class also derives from the built-in exception callers already catch
(``ValueError``, ``FileNotFoundError``).
"""


class OptionError(ValueError):
    """An option (command line or YAML) holds a value the model or task cannot use; the
    message names the option as it is written on the command line (``--decoder-z-dim``)."""

    user_facing = True


class DataError(ValueError):
    """Input data the task cannot use; the message names the file (and line, where known)."""

    user_facing = True


class MissingDataError(FileNotFoundError):
    """A file the task needs is not there; the message names it and how to make it."""

    user_facing = True

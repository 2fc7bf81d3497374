"""Uncaught errors meant for the user end a console script with one line, not a traceback.

fairseq's console scripts let every exception reach the interpreter, which prints the
whole traceback; an error that already says which option or file to change is then the
last of many lines. :func:`apply` (run when ``fairseq`` is imported) installs a
``sys.excepthook`` that prints an uncaught exception whose class has
``user_facing = True`` as one line on stderr,

    <prog>: error: <message>

(the form argparse uses for bad options). fairseq sometimes wraps an error in its own
generic one (``Trainer.load_checkpoint`` turns any failure to load the model's state into
"Cannot load model parameters ...; please ensure that the architectures match"); a
user-facing error found in the exception's chain (``raise ... from`` or raised while
handling it) is then the line printed, followed by the wrapping message in brackets, which
names the file. With ``MEGA_FAIRSEQ_TRACEBACK=1`` the traceback is printed before that
line. Other exceptions go to the hook that was
installed before. The interpreter's exit status stays 1.

Only the class attribute is looked at, so this module imports nothing of the plugin
(``mega_fairseq.errors`` holds its user-facing classes).
"""

import os
import sys
import traceback

TRACEBACK_VARIABLE = "MEGA_FAIRSEQ_TRACEBACK"
_MARK = "_mega_fairseq_user_errors"


def is_user_facing(error: BaseException) -> bool:
    """Whether ``error``'s class declares ``user_facing = True``."""
    return getattr(type(error), "user_facing", False) is True


def user_facing_in_chain(error: BaseException):
    """The outermost user-facing error among ``error`` and its causes and contexts, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if is_user_facing(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def program_name() -> str:
    """The running script's file name (``fairseq-train``), else ``python``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = os.path.basename(argv0)
    return name if name and name != "-c" else "python"


def error_line(error: BaseException, prog: str) -> str:
    """``<prog>: error: <message>`` with the message's line breaks turned into spaces."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"{prog}: error: {message}"


def traceback_requested() -> bool:
    return os.environ.get(TRACEBACK_VARIABLE, "").strip() not in ("", "0")


def make_excepthook(previous):
    """A ``sys.excepthook`` printing user-facing errors as one line, others via ``previous``."""

    def excepthook(exc_type, error, tb):
        facing = None if error is None else user_facing_in_chain(error)
        if facing is None:
            previous(exc_type, error, tb)
            return
        if traceback_requested():
            traceback.print_exception(exc_type, error, tb, file=sys.stderr)
        line = error_line(facing, program_name())
        if facing is not error:
            line += " [" + " ".join(str(error).split()) + "]"
        print(line, file=sys.stderr, flush=True)

    setattr(excepthook, _MARK, True)
    return excepthook


def apply() -> None:
    """Install the hook in front of the current ``sys.excepthook`` (idempotent)."""
    if getattr(sys.excepthook, _MARK, False):
        return
    sys.excepthook = make_excepthook(sys.excepthook)

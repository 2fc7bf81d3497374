"""The errors the checkpoint fixes raise.

Both carry ``user_facing = True``: their message alone says what went wrong, which file it
concerns and what to do, so a command-line front end may print it as one line instead of
a traceback.
"""


class CheckpointLoadError(ValueError):
    """A checkpoint file cannot be loaded: empty, truncated, not a PyTorch file, refused by
    the safe loader, or not a fairseq checkpoint (no ``'model'`` entry)."""

    user_facing = True


class CheckpointSaveError(OSError):
    """Writing or copying a checkpoint file failed (a full disk, a file size limit, ...).
    The file of that name, if there was one, is left as it was before the save."""

    user_facing = True

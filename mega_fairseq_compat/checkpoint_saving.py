"""Checkpoint files appear atomically: a kill or a full disk never leaves a damaged one.

fairseq 0.12.2's ``checkpoint_utils.save_checkpoint`` writes the first checkpoint of a
save (e.g. ``checkpoint_1_500.pt``) through ``torch_persistent_save`` (to ``NAME.tmp``,
then renamed, without ``fsync``) and then *copies* it over ``checkpoint_last.pt``,
``checkpoint_best.pt``, ... in place with ``PathManager.copy``. A process killed during
such a copy leaves a truncated ``checkpoint_last.pt``: the previous good one is gone and
the next resume fails.

Here, for local paths, every checkpoint file is first written completely under a
temporary name in the same folder, flushed to disk with ``fsync`` and then renamed over
the final name with :func:`os.replace` (the folder is synced too). A reader therefore
sees either the old complete file or the new complete one. This applies to
``torch_persistent_save`` (what ``Trainer.save_checkpoint`` and
``save_ema_as_checkpoint`` call) and to the copies ``save_checkpoint`` makes. A failed
write removes its temporary file and raises
:class:`~mega_fairseq_compat.checkpoint_errors.CheckpointSaveError` naming the file.

fairseq removes old checkpoints (``--keep-interval-updates``, ``--keep-last-epochs``,
``--keep-best-checkpoints``) only after all files of the save exist, and a failed save
raises before that removal, so no good file is removed before its replacement exists.

Temporary names start with a dot and end in ``.partial``
(``.checkpoint_last.pt~HOST~PID.partial``), so none of fairseq's checkpoint patterns
(``checkpoint_\\d+_(\\d+)\\.pt`` etc., matched in full) or ``*.pt`` globs take them for
checkpoints. Files of that form left by a killed process of this host are removed by the
next save into the same folder.

Asynchronous writes (``--write-checkpoints-asynchronously``) and paths served by an
iopath handler (``s3://``, ...) keep fairseq's own code.
"""

import errno
import logging
import os
import re
import shutil
import socket
from typing import Callable, Optional

from mega_fairseq_compat.checkpoint_errors import CheckpointSaveError

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".partial"
_SEPARATOR = "~"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)~(?P<host>[^~]+)~(?P<pid>\d+)\.partial$")
_MARK = "_mega_fairseq_atomic"


def temp_path(final_path: str) -> str:
    """The temporary name this process writes ``final_path`` under (same folder)."""
    folder, name = os.path.split(os.path.abspath(final_path))
    return os.path.join(folder, f".{name}{_SEPARATOR}{socket.gethostname()}{_SEPARATOR}{os.getpid()}{TEMP_SUFFIX}")


def is_temp_name(file_name: str) -> bool:
    """Whether a file name (no folder) is one of :func:`temp_path`'s names."""
    return _TEMP_NAME.match(file_name) is not None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str) -> None:
    """Remove the temporary files in ``folder`` of processes of this host that no longer
    run (and of this process: it writes one file at a time). Files of other hosts, which
    may share the folder, are left alone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    host = socket.gethostname()
    for name in names:
        match = _TEMP_NAME.match(name)
        if match is None or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not _process_alive(pid):
            try:
                os.remove(os.path.join(folder, name))
                logger.info(f"removed {name}, left in {folder} by an interrupted checkpoint save")
            except FileNotFoundError:
                pass


def _fsync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(descriptor)


def _chain(error: BaseException):
    """``error`` and the exceptions it was raised from or during."""
    seen = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _os_error_code(error: BaseException) -> Optional[int]:
    return next((e.errno for e in _chain(error) if isinstance(e, OSError) and e.errno), None)


def _reason(error: BaseException) -> str:
    """The operating system's words for ``error`` (also when torch wrapped it)."""
    code = _os_error_code(error)
    if code is not None:
        return f"{os.strerror(code)} (errno {errno.errorcode.get(code, code)})"
    return f"{type(error).__name__}: {error}"


def atomic_write(final_path: str, write: Callable, what: str) -> None:
    """Create ``final_path`` atomically: ``write(file)`` fills a temporary file in the same
    folder, which is synced and renamed over ``final_path``. On failure the temporary file
    is removed, ``final_path`` is as before, and :class:`CheckpointSaveError` is raised."""
    folder = os.path.dirname(os.path.abspath(final_path))
    remove_stale_temp_files(folder)
    temporary = temp_path(final_path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final_path)
    except BaseException as error:
        try:
            os.remove(temporary)
        except OSError:
            pass
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit
            raise
        unchanged = "the existing file is unchanged" if os.path.exists(final_path) else "no file was written"
        failure = CheckpointSaveError(f"could not {what} {final_path}: {_reason(error)}; {unchanged}")
        failure.errno = _os_error_code(error)
        raise failure from error
    _fsync_folder(folder)


def save_atomically(obj, final_path: str) -> None:
    """``torch.save(obj)`` to ``final_path`` through :func:`atomic_write`."""
    import torch

    atomic_write(final_path, lambda handle: torch.save(obj, handle), "write checkpoint")


def copy_atomically(source: str, final_path: str) -> None:
    """Copy ``source`` to ``final_path`` through :func:`atomic_write`."""

    def write(handle) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, handle, 1 << 20)

    atomic_write(final_path, write, f"copy {source} to")


def _is_local(path: str, path_manager) -> bool:
    requires = getattr(path_manager, "path_requires_pathmanager", None)
    return not (requires is not None and requires(path))


def _make_torch_persistent_save(original: Callable, path_manager) -> Callable:
    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not _is_local(filename, path_manager):
            return original(obj, filename, async_write=async_write)
        save_atomically(obj, filename)

    setattr(torch_persistent_save, _MARK, True)
    torch_persistent_save.__doc__ = original.__doc__
    return torch_persistent_save


def _make_path_manager(base):
    """A subclass of fairseq's ``PathManager`` whose ``copy`` of local files is atomic."""

    class AtomicCopyPathManager(base):
        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if not (_is_local(src_path, base) and _is_local(dst_path, base)):
                return base.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and os.path.exists(dst_path):
                return False
            copy_atomically(src_path, dst_path)
            return True

    setattr(AtomicCopyPathManager, _MARK, True)
    return AtomicCopyPathManager


def apply(checkpoint_utils: Optional[object] = None) -> None:
    """Patch ``fairseq.checkpoint_utils`` (idempotent)."""
    if checkpoint_utils is None:
        from fairseq import checkpoint_utils
    if not getattr(checkpoint_utils.torch_persistent_save, _MARK, False):
        checkpoint_utils.torch_persistent_save = _make_torch_persistent_save(
            checkpoint_utils.torch_persistent_save, checkpoint_utils.PathManager
        )
    if not getattr(checkpoint_utils.PathManager, _MARK, False):
        checkpoint_utils.PathManager = _make_path_manager(checkpoint_utils.PathManager)

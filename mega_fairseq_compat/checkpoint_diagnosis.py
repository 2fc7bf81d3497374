"""A clear error for a checkpoint file that cannot be loaded.

fairseq 0.12.2's ``checkpoint_utils.load_checkpoint_to_cpu`` (used when ``fairseq-train``
resumes, by ``--path`` of ``fairseq-eval-lm``/``-generate``/``-validate``/``-interactive``
and by the hub's ``from_pretrained``) passes on whatever ``torch.load`` raises: a bare
``EOFError`` for an empty file, a miniz message for a truncated one, ``KeyError: 101`` for
a text file, ``KeyError: 'best_loss'`` for a PyTorch file that is not a fairseq checkpoint.

The wrapper installed here raises
:class:`~mega_fairseq_compat.checkpoint_errors.CheckpointLoadError` instead, naming the
file, saying what is wrong with it (empty, truncated, not a PyTorch checkpoint, refused by
the safe loader, no ``'model'`` entry) and naming the newest other loadable checkpoint in
the same folder, if any. Errors that are not about the file (a missing file, a failure
after the file loaded) pass through unchanged.
"""

import os
import pickle
import time
import zipfile
from collections.abc import Mapping
from typing import Callable, Optional, Tuple

from mega_fairseq_compat.checkpoint_errors import CheckpointLoadError

_MARK = "_mega_fairseq_diagnosed"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80  # what torch's legacy (pre-1.6, non-zip) format starts with


def _try_load(path: str) -> Tuple[object, Optional[BaseException]]:
    """``torch.load`` with the safe loader (memory-mapped where the format allows)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), None
    except Exception as mmap_error:
        if zipfile.is_zipfile(path):
            return None, mmap_error
    try:  # the legacy format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as error:
        return None, error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        # torch's message: a general paragraph, then the refusal itself
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = text.splitlines()[0] if text else repr(error)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def load_failure_problem(path: str, load_error: BaseException) -> str:
    """What is wrong with a file ``torch.load`` failed on (``load_error``)."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"is truncated ({size} bytes): it starts like the zip archive torch.save writes "
                    "but its end is missing (cut off while being written or copied?)")
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except Exception as error:  # noqa: BLE001 - any failure here means a damaged archive
            return f"is damaged ({size} bytes; its zip archive is unreadable: {_first_line(error)})"
        if damaged is not None:
            return f"is damaged ({size} bytes; the member {damaged} of its zip archive fails its checksum)"
    elif head[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):
        if isinstance(load_error, EOFError):
            return f"is truncated ({size} bytes of a file in torch's legacy format end too early)"
    else:
        return (f"is not a PyTorch checkpoint ({size} bytes starting with {head!r}; "
                "a file written by torch.save starts with b'PK', a zip archive)")
    if isinstance(load_error, pickle.UnpicklingError):
        return f"holds data the safe loader (weights_only=True) refuses: {_first_line(load_error)}"
    return f"cannot be read by torch.load ({_first_line(load_error)})"


def _content_problem(state) -> Optional[str]:
    """What keeps a loaded object from being a fairseq checkpoint, or None."""
    if not isinstance(state, Mapping):
        return f"is a PyTorch file but not a fairseq checkpoint: it holds a {type(state).__name__}, not a dict"
    if "model" not in state:
        keys = ", ".join(repr(k) for k in list(state)[:8]) or "none"
        return f"is a PyTorch file but not a fairseq checkpoint: it has no 'model' entry (its keys: {keys})"
    return None


def _num_updates(state) -> Optional[int]:
    try:
        return int(state["optimizer_history"][-1]["num_updates"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def newest_loadable_checkpoint(folder: str, exclude: str) -> Optional[Tuple[str, Optional[int]]]:
    """The most recently modified ``*.pt`` file in ``folder`` other than ``exclude`` that
    loads as a fairseq checkpoint, with its update count if it records one."""
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    excluded = os.path.realpath(exclude)
    candidates = []
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith(".") or not name.endswith(".pt") or os.path.realpath(path) == excluded:
            continue
        try:
            if os.path.isfile(path) and os.path.getsize(path) > 0:
                candidates.append((os.path.getmtime(path), path))
        except OSError:
            continue
    for _, path in sorted(candidates, reverse=True):
        state, error = _try_load(path)
        if error is None and _content_problem(state) is None:
            return path, _num_updates(state)
    return None


def _message(path: str, problem: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    text = f"checkpoint {path} {problem}."
    other = newest_loadable_checkpoint(folder, path)
    if other is None:
        return text + f" No other loadable checkpoint (*.pt) is in {folder}."
    other_path, updates = other
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(other_path)))
    at = f", {updates} updates" if updates is not None else ""
    return (text + f" The newest loadable checkpoint in {folder} is {other_path} (saved {when}{at}): "
            f"use it instead (fairseq-train: --restore-file {other_path}; other tools: --path {other_path}).")


def diagnose(path: str) -> Optional[str]:
    """What is wrong with the checkpoint at ``path`` (None if it loads as one)."""
    state, load_error = _try_load(path)
    if load_error is not None:
        return load_failure_problem(path, load_error)
    return _content_problem(state)


def _wrap_load_checkpoint_to_cpu(original: Callable) -> Callable:
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        try:
            state = original(path, arg_overrides=arg_overrides, load_on_all_ranks=load_on_all_ranks)
        except FileNotFoundError:
            raise
        except Exception as error:
            if not os.path.isfile(path):  # a remote path, or gone: nothing to look at here
                raise
            problem = diagnose(path)
            if problem is None:  # the file is a fine checkpoint; the failure lies elsewhere
                raise
            raise CheckpointLoadError(_message(path, problem)) from error
        problem = _content_problem(state)
        if problem is not None:
            raise CheckpointLoadError(_message(path, problem))
        return state

    load_checkpoint_to_cpu.__doc__ = original.__doc__
    setattr(load_checkpoint_to_cpu, _MARK, True)
    return load_checkpoint_to_cpu


def apply(checkpoint_utils=None) -> None:
    """Wrap ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` (idempotent)."""
    if checkpoint_utils is None:
        from fairseq import checkpoint_utils
    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, _MARK, False):
        checkpoint_utils.load_checkpoint_to_cpu = _wrap_load_checkpoint_to_cpu(
            checkpoint_utils.load_checkpoint_to_cpu
        )

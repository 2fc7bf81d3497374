"""A binarised split without a single token (``fairseq-preprocess`` given an empty
``--trainpref``, ``--validpref`` or ``--testpref`` file) makes fairseq 0.12.2's
``MMapIndexedDataset`` fail deep inside numpy with ``ValueError: cannot mmap an empty
file``, which names neither the file nor the split.

The fix checks the size of the ``.bin`` file before fairseq maps it and raises
:class:`EmptySplitError` naming the file, the split and the ``fairseq-preprocess`` option
that produced it.  The dataset's ``__del__`` also skips closing a map that was never
opened, so the failed construction leaves no "Exception ignored" message behind.  Non-empty
files are mapped exactly as before.
"""

import functools
import os

# split name (the first part of the file name) -> the fairseq-preprocess option writing it
PREPROCESS_OPTIONS = {"train": "--trainpref", "valid": "--validpref", "test": "--testpref"}


class EmptySplitError(ValueError):
    """A binarised data file that holds no tokens, reported as one line."""

    user_facing = True


def split_name(data_path: str) -> str:
    """The split a binarised file belongs to: ``train`` for ``.../train.bin`` and
    ``.../train.en-de.en.bin``, ``valid1`` for ``.../valid1.bin``."""
    return os.path.basename(data_path).split(".", 1)[0]


def empty_split_message(data_path: str) -> str:
    """What to tell the user about an empty ``data_path``."""
    split = split_name(data_path)
    option = PREPROCESS_OPTIONS.get(split.rstrip("0123456789"))
    role = "training" if split == "train" else split
    if option is None:
        advice = f"rerun fairseq-preprocess with non-empty text for the {split!r} split"
    else:
        advice = f"rerun fairseq-preprocess with a non-empty {option}"
    return f"{data_path} holds no tokens: the {role} split is empty; {advice}"


def check_not_empty(data_path: str) -> None:
    """Raise :class:`EmptySplitError` when the local file ``data_path`` has size 0."""
    if os.path.isfile(data_path) and os.path.getsize(data_path) == 0:
        raise EmptySplitError(empty_split_message(data_path))


def apply() -> None:
    """Wrap ``MMapIndexedDataset._do_init`` and ``__del__`` (once)."""
    from fairseq.data import indexed_dataset

    dataset_class = indexed_dataset.MMapIndexedDataset
    if getattr(dataset_class._do_init, "_mega_fairseq_empty_check", False):
        return
    original_init = dataset_class._do_init
    original_del = dataset_class.__del__

    @functools.wraps(original_init)
    def _do_init(self, path):
        check_not_empty(indexed_dataset.data_file_path(path))
        return original_init(self, path)

    @functools.wraps(original_del)
    def __del__(self):
        if getattr(self, "_bin_buffer_mmap", None) is None:
            return
        original_del(self)

    _do_init._mega_fairseq_empty_check = True
    dataset_class._do_init = _do_init
    dataset_class.__del__ = __del__

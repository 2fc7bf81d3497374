"""The data foundation of the plugin's tasks (token classification, span prediction, LRA
text): ``fairseq-preprocess --only-source`` output laid out as ``DATA/<key>/dict.txt`` and
``DATA/<key>/<split>.bin/.idx`` (``key``: ``input0``, ``input1``, ``label``), read with clear
errors, label dictionaries counted by one rule, and the dictionary accessors every task
exposes to fairseq.
"""

import os

from fairseq.data import Dictionary, data_utils

from mega_fairseq.errors import MissingDataError


def load_dictionary(data: str, key: str, what: str) -> Dictionary:
    """``DATA/key/dict.txt``; :class:`MissingDataError` naming the path (``what``: the
    dictionary's role, e.g. ``input`` or ``label``)."""
    path = os.path.join(data, key, "dict.txt")
    if not os.path.exists(path):
        raise MissingDataError(
            f"{what} dictionary {path} not found: binarize the data with fairseq-preprocess "
            f"--only-source --destdir {os.path.join(data, key)}"
        )
    return Dictionary.load(path)


def binarized_name(data: str, key: str, split: str) -> str:
    """The path prefix of a binarized split, e.g. ``DATA/input0/valid``."""
    return os.path.join(data, key, split)


def load_binarized(data: str, key: str, split: str, dictionary, combine: bool = False):
    """Load ``DATA/key/split.{bin,idx}``; :class:`MissingDataError` naming the path if missing."""
    prefix = binarized_name(data, key, split)
    dataset = data_utils.load_indexed_dataset(prefix, dictionary, combine=combine)
    if dataset is None:
        raise MissingDataError(
            f"no binarized data {prefix}.bin/.idx (expected the output of "
            f"fairseq-preprocess --only-source --destdir {os.path.join(data, key)})"
        )
    return dataset


def count_labels(dictionary) -> int:
    """Number of real labels of a label dictionary: its symbols after the specials, minus
    the ``madeupwordNNNN`` fillers fairseq-preprocess appends (``--padding-factor``, count
    0).  Labels are the contiguous indices ``nspecial .. nspecial + count - 1``."""
    count = 0
    for index in range(dictionary.nspecial, len(dictionary)):
        symbol = dictionary[index]
        filler = symbol.startswith("madeupword") and symbol[10:].isdigit() and dictionary.count[index] == 0
        if filler:
            break
        count += 1
    return count


class DictionaryAccessors:
    """``source_dictionary`` and ``target_dictionary`` of a task whose inputs use
    ``self.dictionary``; tasks whose targets have their own dictionary override
    ``target_dictionary``."""

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

"""Pieces shared by the ``lra-text`` and ``lra-image`` tasks: the classification head name,
label checks, batching/shuffling and the pooling warning of ``build_model`` (the length
policy is :mod:`~mega_fairseq.tasks.shortening`, the model's limit
:mod:`~mega_fairseq.tasks.model_limits`)."""

import logging
from typing import Dict

import numpy as np
from omegaconf.errors import OmegaConfBaseException

from fairseq.data import (
    FairseqDataset,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    RawLabelDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)

from mega_fairseq.errors import DataError, OptionError

logger = logging.getLogger(__name__)

DEFAULT_HEAD_NAME = "lra_classification_head"


def classification_head_name(cfg) -> str:
    """The task's ``classification_head_name`` (interpolated from the criterion's
    ``--classification-head-name``; the default when the criterion has no such option)."""
    try:
        name = getattr(cfg, "classification_head_name", None)
    except OmegaConfBaseException:
        name = None
    if name is None or (isinstance(name, str) and name.startswith("${")):
        return DEFAULT_HEAD_NAME
    return name


def check_num_classes(num_classes: int) -> None:
    if num_classes is None or num_classes <= 0:
        raise OptionError(f"--num-classes must be a positive number of classes, got {num_classes}")


class SumDataset(FairseqDataset):
    """Per-example sum of several ``NumelDataset(reduce=False)``-like size datasets,
    collated to one int (the batch's total number of tokens)."""

    def __init__(self, *datasets):
        super().__init__()
        self.datasets = datasets

    def __getitem__(self, index):
        return sum(int(d[index]) for d in self.datasets)

    def __len__(self):
        return len(self.datasets[0])

    def collater(self, samples):
        return sum(samples)


def check_targets(targets: np.ndarray, num_classes: int, what: str, unknown_lines=()) -> None:
    """Every target must be a class id 0 .. num_classes-1; ``unknown_lines`` (0-based)
    are lines whose label was not in the label dictionary."""
    unknown_lines = list(unknown_lines)
    if unknown_lines:
        lines = ", ".join(str(i + 1) for i in unknown_lines[:5])
        more = f" and {len(unknown_lines) - 5} more" if len(unknown_lines) > 5 else ""
        raise DataError(
            f"{what}: unknown label on line(s) {lines}{more}: not among the training labels "
            "(the label dictionary); every label of this split must also occur in the "
            "training data"
        )
    bad = np.nonzero((targets < 0) | (targets >= num_classes))[0]
    if len(bad):
        first = int(bad[0])
        raise DataError(
            f"{what}: unknown label {int(targets[first])} on line {first + 1} ({len(bad)} such "
            f"lines): labels must be class ids 0..{num_classes - 1} (--num-classes {num_classes})"
        )


def classification_dataset(inputs: Dict[str, FairseqDataset], sizes, targets: np.ndarray,
                           pad_idx: int, seed: int, shuffle: bool):
    """The nested sample dataset: ``inputs`` maps ``net_input``/``net_input1`` to token
    datasets (1-D LongTensors, sizes in ``sizes``, same order); ``targets``: N class ids."""
    dataset = {"id": IdDataset()}
    lengths = []
    for key, tokens in inputs.items():
        length = NumelDataset(tokens, reduce=False)
        lengths.append(length)
        dataset[key] = {
            "src_tokens": RightPadDataset(tokens, pad_idx=pad_idx),
            "src_lengths": length,
        }
    dataset["target"] = RawLabelDataset(targets.astype(np.int64).tolist())
    dataset["nsentences"] = NumSamplesDataset()
    dataset["ntokens"] = SumDataset(*lengths)
    nested = NestedDictionaryDataset(dataset, sizes=sizes)
    if not shuffle:
        return nested
    with data_utils.numpy_seed(seed):
        order = np.random.permutation(len(nested))
    return SortDataset(nested, sort_order=[order])


def warn_if_cls_pooling(model) -> None:
    """LRA inputs have no ``<s>``: with ``--sentence-rep cls`` the sentence vector is the
    final state of the first ordinary token."""
    if str(getattr(model, "sentence_rep", "")) == "cls":
        logger.warning("--sentence-rep cls pools the first input token (LRA data has no <s>); "
                       "the mega_lra_* presets use --sentence-rep mean")

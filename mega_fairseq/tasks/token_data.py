"""Data helpers shared by the token-level tasks (``token_classification``, ``span_prediction``).

Both tasks read ``fairseq-preprocess --only-source`` output (``DATA/<key>/<split>.bin/.idx``,
one item per line of the text file, each ending with ``</s>``) and build model inputs
``<s> ... </s>`` that are **right-padded** (``B x T``), the order the ``mega_encoder`` token
heads return their logits in.  Error messages name the text line (1-based) of the
binarized file, which is the item index + 1.
"""

import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import II, MISSING, OmegaConf, open_dict

from fairseq.data import FairseqDataset, data_utils
from fairseq.dataclass import FairseqDataclass

from mega_fairseq.errors import DataError, OptionError
from mega_fairseq.tasks.model_limits import check_model_accepts
from mega_fairseq.tasks.shortening import shorten_method_choices

logger = logging.getLogger(__name__)

#: target value of positions that carry no label (``<s>``, ``</s>``, padding); it is the
#: default ``ignore_index`` of torch's cross-entropy.
IGNORE_INDEX = -100


@dataclass
class TokenTaskConfig(FairseqDataclass):
    """Options both token-level tasks have; each adds its own (head name, labels)."""

    data: str = field(
        default=MISSING,
        metadata={"help": "data directory (input0/, label/; input1/ for span_prediction)"},
    )
    max_positions: int = field(
        default=512, metadata={"help": "max model positions per example (<s>, </s> included)"}
    )
    shorten_method: shorten_method_choices() = field(
        default="none",
        metadata={"help": "shorten examples longer than --max-positions (labels and spans kept "
                  "aligned); none: such examples are an error"},
    )
    shorten_data_split_list: str = field(
        default="",
        metadata={"help": "comma-separated splits to shorten, e.g. 'train,valid' (default: all)"},
    )
    no_shuffle: bool = field(default=False, metadata={"help": "do not shuffle the training data"})
    seed: int = II("common.seed")


def item_sizes(dataset) -> np.ndarray:
    """Number of tokens of every item (``</s>`` included), as int64."""
    return np.asarray(dataset.sizes, dtype=np.int64)


def concatenated_tokens(dataset) -> np.ndarray:
    """All tokens of all items, concatenated in item order (1-D integer array; for a
    memory-mapped dataset a zero-copy view of its data file, in its stored dtype)."""
    try:  # fast path: the data file of an MMapIndexedDataset holds exactly that
        flat = np.frombuffer(dataset._bin_buffer, dtype=dataset._index.dtype)
        if flat.size == int(item_sizes(dataset).sum()):
            return flat
    except (AttributeError, TypeError):
        pass
    if len(dataset) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray(dataset[i], dtype=np.int64) for i in range(len(dataset))])


def check_ends_with_eos(dataset, sizes: np.ndarray, eos: int, prefix: str) -> None:
    """Every item must end with ``</s>`` (fairseq-preprocess appends it)."""
    if len(sizes) == 0:
        return
    if (sizes < 1).any():
        line = int(np.flatnonzero(sizes < 1)[0]) + 1
        raise DataError(f"{prefix}.bin, line {line}: empty item (expected fairseq-preprocess output)")
    flat = concatenated_tokens(dataset)
    last = flat[np.cumsum(sizes) - 1]
    wrong = np.flatnonzero(last != eos)
    if wrong.size:
        raise DataError(
            f"{prefix}.bin, line {int(wrong[0]) + 1}: item does not end with </s>; "
            "binarize the text with fairseq-preprocess --only-source"
        )


def position_in_lines(flat_index: int, sizes: np.ndarray):
    """(line, token) 1-based of a position of :func:`concatenated_tokens`."""
    ends = np.cumsum(sizes)
    line = int(np.searchsorted(ends, flat_index, side="right"))
    start = int(ends[line - 1]) if line > 0 else 0
    return line + 1, flat_index - start + 1


def crop_start(seed: int, epoch: int, index: int, low: int, high: int) -> int:
    """A reproducible random integer in ``[low, high]`` for one example and epoch."""
    if high <= low:
        return low
    rng = np.random.default_rng([seed, epoch, index])
    return int(rng.integers(low, high + 1))


class TokenExampleDataset(FairseqDataset):
    """Base of the token-level datasets: fixed per-item sizes (model positions), ordering
    (a seeded shuffle, then sorted by size) and the epoch for random crops.

    Args:
        sizes: model positions of every item (``<s>`` and ``</s>`` included)
        pad: padding index of the input dictionary
        shuffle: shuffle before sorting by size (train)
        seed: seed of the shuffle and of random crops
    """

    def __init__(self, sizes: np.ndarray, pad: int, shuffle: bool, seed: int):
        super().__init__()
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self.pad = pad
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1

    @property
    def sizes(self) -> np.ndarray:
        return self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def num_tokens(self, index: int) -> int:
        return int(self._sizes[index])

    def num_tokens_vec(self, indices):
        return self._sizes[indices]

    def size(self, index: int) -> int:
        return int(self._sizes[index])

    def ordered_indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng(self.seed).permutation(len(self))
        else:
            order = np.arange(len(self))
        return order[np.argsort(self._sizes[order], kind="mergesort")]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def collate_inputs(self, samples) -> dict:
        """The common part of a batch: ``id`` [B], ``nsentences``, ``ntokens`` and
        ``net_input`` (``src_tokens`` B x T right-padded, ``src_lengths`` B)."""
        sources = [s["source"] for s in samples]
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": sum(len(s) for s in sources),
            "net_input": {
                "src_tokens": data_utils.collate_tokens(sources, pad_idx=self.pad),
                "src_lengths": torch.LongTensor([len(s) for s in sources]),
            },
        }


def log_loaded(split: str, dataset, what: str) -> None:
    logger.info(f"loaded {split} for {what}: {len(dataset)} examples")


def build_model_with_token_head(task, cfg, from_checkpoint: bool, head_name: str, num_labels: int):
    """Build the model with the task's ``--max-positions`` and register its token head."""
    from fairseq import models

    with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.ExitStack():
        cfg.max_positions = task.cfg.max_positions
    model = models.build_model(cfg, task, from_checkpoint)
    if not hasattr(model, "register_token_head"):
        raise OptionError(
            f"model {type(model).__name__} has no token heads; use a mega_encoder architecture "
            "(e.g. --arch mega_encoder_tiny)"
        )
    model.register_token_head(head_name, num_labels)
    check_model_accepts(model, task.cfg.max_positions, f"--max-positions={task.cfg.max_positions}")
    return model

"""What the tasks do with examples longer than ``--max-positions``: the one list of
``--shorten-method`` values, which split a method applies to, and the hints of the
"too long" errors."""

import logging
from typing import Optional, Sequence

import numpy as np

from fairseq.data import TruncateDataset
from fairseq.dataclass import ChoiceEnum

from mega_fairseq.errors import OptionError

logger = logging.getLogger(__name__)

#: ``none``: a too-long example is an error; ``truncate``: keep its first positions;
#: ``random_crop``: keep a reproducible random window (token-level tasks only)
SHORTEN_METHODS = ("none", "truncate", "random_crop")


def shorten_method_choices(methods: Sequence[str] = SHORTEN_METHODS):
    """The ``--shorten-method`` option type of a task supporting ``methods``."""
    unknown = set(methods) - set(SHORTEN_METHODS)
    if unknown:
        raise ValueError(f"unknown shorten methods {sorted(unknown)}; known: {list(SHORTEN_METHODS)}")
    return ChoiceEnum(list(methods))


def shorten_applies(split: str, method: str, split_list: str) -> bool:
    """Like fairseq's ``maybe_shorten_dataset``: an empty list means every split."""
    if method == "none":
        return False
    return len(split_list) == 0 or split in split_list.split(",")


def describe_shortening(max_positions: int) -> str:
    """The hint appended to the token-level tasks' 'too long' errors."""
    return (
        f"more than --max-positions={max_positions}; raise --max-positions (the model must "
        "support it) or shorten the data with --shorten-method truncate|random_crop "
        "(and --shorten-data-split-list to choose the splits)"
    )


def fit_length(dataset, sizes: np.ndarray, max_positions: Optional[int], shorten_method: str,
               what: str):
    """Return ``dataset`` unchanged when every example fits ``max_positions``; truncate
    with ``--shorten-method truncate``; otherwise raise an OptionError naming the option."""
    if max_positions is None or len(sizes) == 0:
        return dataset
    too_long = int((sizes > max_positions).sum())
    if too_long == 0:
        return dataset
    if shorten_method == "truncate":
        logger.info("%s: truncating %d of %d examples to %d tokens", what, too_long, len(sizes), max_positions)
        return TruncateDataset(dataset, max_positions)
    raise OptionError(
        f"{what}: {too_long} of {len(sizes)} examples are longer than the model's "
        f"{max_positions} positions (longest: {int(sizes.max())} tokens, </s> included); pass "
        "--shorten-method truncate to cut them to --max-positions, or raise --max-positions "
        "(within what the architecture supports)"
    )

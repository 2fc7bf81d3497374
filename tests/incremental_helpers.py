"""Beam reordering of a module used on its own, the way fairseq reorders a decoder."""

import torch.nn as nn
from torch import Tensor

from mega_fairseq.modules.incremental import IncrementalState


def reorder_all(module: nn.Module, incremental_state: IncrementalState, new_order: Tensor) -> None:
    """Reorder the cached state of ``module`` and all its children, as fairseq's
    ``FairseqIncrementalDecoder.reorder_incremental_state_scripting`` does: every module
    with a ``reorder_incremental_state`` method reorders its own tensors exactly once.
    new_order: LongTensor of batch indices (its length is the new batch size)."""
    for child in module.modules():
        if hasattr(child, "reorder_incremental_state"):
            child.reorder_incremental_state(incremental_state, new_order)

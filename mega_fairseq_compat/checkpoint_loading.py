"""Fix 3: checkpoint loading under torch >= 2.6, where ``torch.load`` defaults to
``weights_only=True``.

fairseq's checkpoints are not only tensors: ``args`` is an :class:`argparse.Namespace`
(checkpoints of older fairseq versions, and fairseq's own upgrade path), and the saved
metric state holds numpy scalars.  Instead of switching the safe loader off, exactly
these types are registered with :func:`torch.serialization.add_safe_globals`; every other
global in a checkpoint is still refused.
"""

import argparse

import numpy
import torch


def fairseq_checkpoint_globals():
    """The non-tensor types fairseq 0.12.2 writes into checkpoints."""
    return [argparse.Namespace]


def needed() -> bool:
    return hasattr(torch.serialization, "add_safe_globals")


def apply() -> None:
    if needed():
        torch.serialization.add_safe_globals(fairseq_checkpoint_globals())

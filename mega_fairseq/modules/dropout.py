"""Dropout of single elements or of whole feature channels.

Element dropout on the CPU draws its keep mask from 16-bit random integers, four per
64-bit draw of torch's generator, instead of one ``bernoulli_`` draw per element: about
3x cheaper for the same masks' distribution (a training step of a Mega language model
spends a quarter of its time drawing masks with ``bernoulli_``). A unit is dropped when
its integer falls among the lowest ``round(p * 65536)`` of the 65536 values, so the drop
probability is p rounded to a multiple of 1/65536 (within 7.7e-6 of p), and kept units
are scaled by the inverse of the exact keep probability, so that the expected output
equals the input. Other devices use ``F.dropout`` (a fused kernel on GPUs).
"""

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor

MASK_LEVELS = 1 << 16  # values of the random integers a keep mask compares


def keep_mask(shape: Tuple[int, ...], p: float, device=None) -> Tuple[Tensor, float]:
    """A random keep mask of ``shape`` (bool, True = keep) for drop probability p in
    [0, 1), and the scale of kept units: 1 / P(keep)."""
    dropped_levels = min(round(p * MASK_LEVELS), MASK_LEVELS - 1)
    count = math.prod(shape)
    # every bit of a draw over the whole int64 range is uniform; each 64-bit word holds
    # four independent 16-bit integers
    words = torch.empty(-(-count // 4), dtype=torch.int64, device=device).random_(-(1 << 63), None)
    levels = words.view(torch.int16)[:count].view(shape)  # uniform in [-32768, 32767]
    keep = levels >= dropped_levels - MASK_LEVELS // 2
    return keep, MASK_LEVELS / (MASK_LEVELS - dropped_levels)


class _MaskedScale(torch.autograd.Function):
    """y = x * keep * scale with a given bool mask; saves only the mask for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def element_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout of single elements of ``x`` (any shape) with probability p, always applied
    (the caller decides about training mode). CPU tensors use the 16-bit masks of this
    module; others ``F.dropout``."""
    if p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p=p, training=True)
    keep, scale = keep_mask(tuple(x.shape), p, x.device)
    return _MaskedScale.apply(x, keep, scale)


class ElementDropout(FairseqDropout):
    """fairseq's dropout module (the same ``p``, ``module_name`` and ``--retain-dropout``
    handling) with the cheaper CPU masks of :func:`element_dropout`."""

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        if self.p > 0 and (self.training or self.apply_during_inference):
            if inplace:
                return F.dropout(x, p=self.p, training=True, inplace=True)
            return element_dropout(x, self.p)
        return x


class FeatureDropout(nn.Module):
    """Drops whole channels of a ``T x B x C`` input.

    One keep/drop decision per sequence and channel, shared over all time steps; kept
    channels are rescaled by 1 / (1 - p). Identity in eval mode.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """x: T x B x C (any leading time dimension) -> same shape."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((1,) + x.shape[1:], dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def build_dropout(p: float, feature: bool, module_name: str) -> nn.Module:
    """:class:`FeatureDropout` when ``feature``, else :class:`ElementDropout`."""
    if feature:
        return FeatureDropout(p)
    return ElementDropout(p, module_name=module_name)

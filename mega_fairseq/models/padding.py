"""Padding masks of token batches, and the few places a model reads a value back from its
device.

Each read (``bool(mask.any())``) waits for the device to finish the work queued before it,
so a model does it at most once per forward pass, never per layer or per decoding step of
a layer. On the ``meta`` device, which holds shapes but no values, nothing can be read:
there the mask is always kept (a mask that hides nothing gives the same result as none).
"""

from typing import Optional

from torch import Tensor


def has_values(tensor: Tensor) -> bool:
    """False for tensors without data (the ``meta`` device)."""
    return tensor.device.type != "meta"


def any_true(mask: Tensor, unknown: bool = True) -> bool:
    """``bool(mask.any())`` (one read-back from the device); ``unknown`` where the mask has no
    values (meta)."""
    if not has_values(mask):
        return unknown
    return bool(mask.any())


def padding_mask_or_none(tokens: Tensor, padding_idx: int) -> Optional[Tensor]:
    """tokens: B x T -> B x T bool mask (True = pad), or None when nothing is padded."""
    mask = tokens.eq(padding_idx)
    return mask if any_true(mask) else None

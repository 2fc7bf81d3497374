"""Padding masks of token batches, moving left padding to the right and back, and the few
places a model reads a value back from its device.

Each read (``bool(mask.any())``) waits for the device to finish the work queued before it,
so a model does it at most once per forward pass, never per layer or per decoding step of
a layer. On the ``meta`` device, which holds shapes but no values, nothing can be read:
there the mask is always kept (a mask that hides nothing gives the same result as none).
"""

from typing import Optional

import torch
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


def roll_last(tensor: Tensor, shift: Tensor) -> Tensor:
    """Rotates each row b of a B x ... x S ``tensor`` by ``shift[b]`` places along its last
    dimension: out[b, ..., j] = tensor[b, ..., (j - shift[b]) mod S]."""
    length = tensor.size(-1)
    index = torch.remainder(torch.arange(length, device=tensor.device) - shift.unsqueeze(-1), length)
    index = index.view(index.size(0), *([1] * (tensor.dim() - 2)), length).expand_as(tensor)
    return tensor.gather(-1, index)


def right_align(tensor: Tensor, padding_mask: Tensor) -> Tensor:
    """Moves the left padding of a B x S ``tensor`` (any values aligned with the tokens whose
    padding is ``padding_mask``) to the right, exactly as
    ``fairseq.utils.convert_padding_direction(left_to_right=True)`` moves the tokens."""
    return roll_last(tensor, -padding_mask.long().sum(dim=1))


def left_align_columns(tensor: Tensor, left_padding: Tensor) -> Tensor:
    """Undoes :func:`right_align` on the last dimension of a B x ... x S ``tensor`` (e.g.
    attention weights over right-aligned source positions): rows with ``left_padding``
    (B) padded positions get them back at the front."""
    return roll_last(tensor, left_padding)

"""Relative positional biases added to attention scores."""

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from mega_fairseq.modules.activations import check_choice
from mega_fairseq.modules.precision import compute_dtype, full_precision

REL_POS_BIAS_TYPES = ("simple", "rotary")


class SimpleRelativePositionalBias(nn.Module):
    """One learned scalar per relative offset key_pos - query_pos in
    [-(max_positions - 1), max_positions - 1]."""

    def __init__(self, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.rel_pos_bias = nn.Parameter(torch.empty(2 * max_positions - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.rel_pos_bias, mean=0.0, std=0.02)

    def _check_positions(self, query_positions: Tensor, key_positions: Tensor,
                         largest_position: Optional[int]) -> None:
        if largest_position is None:
            # reads the positions back from their device: callers that know the largest
            # position from shapes pass it instead
            largest_position = 0
            for positions in (query_positions, key_positions):
                if positions.numel() > 0:
                    largest_position = max(largest_position, int(positions.max()))
        self._check_largest_position(largest_position)

    def _check_largest_position(self, largest: int) -> None:
        if largest >= self.max_positions:
            raise ValueError(
                f"input of length {largest + 1} exceeds max_positions={self.max_positions} of the "
                "simple relative position bias; use rel_pos_bias='rotary' or a larger max_positions"
            )

    def forward(self, query_positions: Tensor, key_positions: Tensor,
                largest_position: Optional[int] = None) -> Tensor:
        """query_positions: LongTensor[Lq]; key_positions: LongTensor[Lk], or B x Lk (one
        row per sequence); largest_position: an upper bound of every position when the
        caller knows one (else the positions are read back) -> bias Lq x Lk, or B x Lq x Lk,
        in the table's dtype."""
        self._check_positions(query_positions, key_positions, largest_position)
        offsets = key_positions.unsqueeze(-2) - query_positions.unsqueeze(-1)
        return self.rel_pos_bias[self.max_positions - 1 + offsets]

    def window_bias(self, length: int) -> Tensor:
        """forward(arange(length), arange(length)), the bias of a whole window (length x
        length), built as a flipped sliding-window view of the table instead of a gather:
        its backward sums the diagonals without a scattered index_put."""
        self._check_largest_position(length - 1)
        # offsets -(length - 1) .. length - 1
        offsets = self.rel_pos_bias[self.max_positions - length: self.max_positions + length - 1]
        # unfold: row r holds offsets -(length-1)+r .. r; query i needs row length-1-i
        return offsets.unfold(0, length, 1).flip(0)

    def extra_repr(self) -> str:
        return f"max_positions={self.max_positions}"


class RotaryRelativePositionalBias(nn.Module):
    """bias[i, j] = rot(alpha, i) . rot(beta, j) with learned alpha, beta (size zdim) and
    rot the rotary (RoPE) rotation; depends only on j - i, works for any position."""

    def __init__(self, zdim: int, max_positions: int):
        super().__init__()
        if zdim % 2 != 0:
            raise ValueError(f"rotary relative position bias needs an even zdim, got {zdim}")
        self.zdim = zdim
        self.max_positions = max_positions
        self.alpha = nn.Parameter(torch.empty(zdim))
        self.beta = nn.Parameter(torch.empty(zdim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.alpha, mean=0.0, std=0.02)
        nn.init.normal_(self.beta, mean=0.0, std=0.02)

    def rotate(self, vector: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``vector`` (zdim) to each position: L -> L x zdim (B x L -> B x L x zdim).

        With halves x1, x2 of the vector and angles p * 10000^(-k / (zdim/2)):
        [x1 cos - x2 sin, x2 cos + x1 sin].
        """
        half = self.zdim // 2
        # angles in at least float32: large positions lose precision in half precision
        dtype = compute_dtype(vector.dtype)
        inv_freq = torch.pow(10000.0, -torch.arange(half, dtype=dtype, device=vector.device) / half)
        angles = positions.to(dtype).unsqueeze(-1) * inv_freq  # L x half
        cos, sin = torch.cos(angles), torch.sin(angles)
        x1, x2 = vector.to(dtype)[:half], vector.to(dtype)[half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def forward(self, query_positions: Tensor, key_positions: Tensor,
                largest_position: Optional[int] = None) -> Tensor:
        """query_positions: LongTensor[Lq]; key_positions: LongTensor[Lk], or B x Lk (one
        row per sequence); largest_position: unused (any position works) -> bias Lq x Lk,
        or B x Lq x Lk, in float32 (float64 for float64 parameters), also under autocast."""
        with full_precision(self.alpha.device):
            rotated_alpha = self.rotate(self.alpha, query_positions)
            rotated_beta = self.rotate(self.beta, key_positions)
            return torch.matmul(rotated_alpha, rotated_beta.transpose(-1, -2))

    def window_bias(self, length: int) -> Tensor:
        """The bias of a whole window: length x length."""
        positions = torch.arange(length, device=self.alpha.device)
        return self.forward(positions, positions)

    def extra_repr(self) -> str:
        return f"zdim={self.zdim}, max_positions={self.max_positions}"


def build_relative_positional_bias(kind: str, zdim: int, max_positions: int) -> nn.Module:
    """The relative positional bias named ``kind`` (one of :data:`REL_POS_BIAS_TYPES`)."""
    check_choice("rel_pos_bias", kind, REL_POS_BIAS_TYPES)
    if kind == "simple":
        return SimpleRelativePositionalBias(max_positions)
    return RotaryRelativePositionalBias(zdim, max_positions)

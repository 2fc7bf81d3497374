"""Megalodon's timestep normalisation (Ma et al. 2024, arXiv 2404.08801, Eq. 4): group
normalisation whose statistics are cumulative over time, so that position t is normalised
by the mean and variance of its group over positions 1..t only (causal).

For channels split into G groups of d_g = C / G and the non-padded positions i <= t of a
sequence:

    mu_t      = 1 / (n_t d_g) sum_{i <= t} sum_{j in group} x_ij
    sigma^2_t = 1 / (n_t d_g) sum_{i <= t} sum_{j in group} (x_ij - mu_t)^2
    y_t       = weight * (x_t - mu_t) / sqrt(sigma^2_t + eps) + bias      (per channel)

with n_t the number of non-padded positions up to t. Padded positions add nothing to the
statistics and their outputs are zero. The statistics (count, mean and the summed squared
deviations) are the incremental state: decoding a step or a block, or training on the next
segment of a stream, continues them exactly.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from mega_fairseq.modules.incremental import IncrementalState
from mega_fairseq.modules.precision import full_precision, upcast

STATE_NAME = "timestep_norm_state"


@with_incremental_state
class TimestepNorm(nn.Module):
    """Cumulative group normalisation over ``T x B x C`` inputs, computed in float32
    (float64 for float64 inputs) and returned in the input's dtype.

    Args:
        embed_dim: channels C.
        num_groups: G, which must divide C.
        affine: a learned per-channel weight (init 1) and bias (init 0).
        eps: added to the variance.
    """

    def __init__(self, embed_dim: int, num_groups: int = 16, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups <= 0 \
                or embed_dim % num_groups != 0:
            raise ValueError(f"num_groups must be a positive divisor of embed_dim={embed_dim}, got {num_groups!r}")
        self.embed_dim = embed_dim
        self.num_groups = num_groups
        self.group_size = embed_dim // num_groups
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(embed_dim))
            self.bias = nn.Parameter(torch.zeros(embed_dim))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, num_groups={self.num_groups}, eps={self.eps}, affine={self.weight is not None}"

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[IncrementalState] = None) -> Tensor:
        """x: T x B x C; padding_mask: B x T bool (True = pad) -> T x B x C.

        With ``incremental_state`` the statistics of the positions seen before continue,
        and the statistics after x are stored back."""
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(f"expected input of shape T x B x {self.embed_dim}, got {tuple(x.shape)}")
        length, batch, _ = x.shape
        saved = None if incremental_state is None else self.get_incremental_state(incremental_state, STATE_NAME)
        with full_precision(x.device):
            values = upcast(x).view(length, batch, self.num_groups, self.group_size)
            if padding_mask is None:
                valid = values.new_ones(length, batch, 1)
            else:
                valid = (~padding_mask.to(torch.bool)).transpose(0, 1).unsqueeze(-1).to(values.dtype)
            statistics = None
            if saved is not None:
                statistics = tuple(saved[name].to(values.dtype) for name in ("count", "mean", "sum_squares"))
            mean, variance, last = cumulative_statistics(values, valid, statistics)
            y = (values - mean.unsqueeze(-1)) * torch.rsqrt(variance.unsqueeze(-1) + self.eps)
            y = y.reshape(length, batch, self.embed_dim) * valid
            if self.weight is not None:
                y = y * upcast(self.weight) + upcast(self.bias) * valid
        if incremental_state is not None:
            count, group_mean, sum_squares = last
            self.set_incremental_state(incremental_state, STATE_NAME,
                                       {"count": count, "mean": group_mean, "sum_squares": sum_squares})
        return y.type_as(x)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Select batch entries ``new_order`` of the carried statistics."""
        saved = self.get_incremental_state(incremental_state, STATE_NAME)
        if saved is None:
            return
        reordered: Dict[str, Optional[Tensor]] = {
            name: value.index_select(0, new_order.to(value.device)) for name, value in saved.items()
        }
        self.set_incremental_state(incremental_state, STATE_NAME, reordered)


def cumulative_statistics(
    values: Tensor, valid: Tensor, previous: Optional[Tuple[Tensor, Tensor, Tensor]] = None
) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor, Tensor]]:
    """Running group statistics.

    values: T x B x G x d_g; valid: T x B x 1 (1 = real position, 0 = padding);
    previous: (count B x 1, mean B x G, sum_squares B x G) of the positions before, or None.

    Returns (mean T x B x G, variance T x B x G, (count, mean, sum_squares) after the last
    position). Sums run over values centred on a shift (the previous mean, or the
    sequence's own mean, detached: the result does not depend on it) to avoid cancellation:
    with S1, S2 the running sums of c = x - shift and c^2 and m = n d_g elements,
    mean = shift + S1 / m and sum_squares = M2_prev + S2 - S1^2 / m.
    """
    group_size = values.size(-1)
    if previous is None:
        element_weight = valid.unsqueeze(-1)  # T x B x 1 x 1
        total = (element_weight.sum(0) * group_size).clamp(min=1.0)  # B x 1 x 1
        shift = ((values * element_weight).sum(dim=(0, 3)) / total.squeeze(-1)).detach()  # B x G
        prior_count = values.new_zeros(values.size(1), 1)
        prior_sum_squares = values.new_zeros(values.shape[1:3])
    else:
        prior_count, shift, prior_sum_squares = previous
    centred = (values - shift.unsqueeze(-1)) * valid.unsqueeze(-1)
    first = torch.cumsum(centred.sum(-1), dim=0)  # T x B x G
    second = torch.cumsum(torch.square(centred).sum(-1), dim=0) + prior_sum_squares
    count = torch.cumsum(valid, dim=0) + prior_count  # T x B x 1 positions
    elements = (count * group_size).clamp(min=1.0)
    mean = shift + first / elements
    sum_squares = (second - torch.square(first) / elements).clamp(min=0.0)
    variance = sum_squares / elements
    return mean, variance, (count[-1], mean[-1], sum_squares[-1])

"""Normalisation layers over ``T x B x C`` sequences, selected by name.

``timestepnorm`` (Megalodon's cumulative group norm, :mod:`mega_fairseq.modules.timestep_norm`)
is causal and carries its statistics in the incremental state; the others normalise each
position by itself (batch norms: by batch statistics)."""

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mega_fairseq.modules.activations import check_choice
from mega_fairseq.modules.incremental import IncrementalState
from mega_fairseq.modules.precision import full_precision, upcast
from mega_fairseq.modules.timestep_norm import TimestepNorm

NORM_TYPES = ("layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm", "timestepnorm")
# norms whose output at a position depends on earlier positions (and on the incremental state)
SEQUENCE_STATISTICS_NORM_TYPES = ("timestepnorm",)


def _root_mean_square(x: Tensor, eps: float) -> Tensor:
    """sqrt(mean(x^2 over the last dim) + eps), keeping the last dim (size 1)."""
    return torch.sqrt(torch.mean(torch.square(x), dim=-1, keepdim=True) + eps)


class Float32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state dict) that normalises float16/bfloat16
    inputs and weights in float32, also under autocast, and returns the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        """x: ... x C -> ... x C."""
        with full_precision(x.device):
            weight = None if self.weight is None else upcast(self.weight)
            bias = None if self.bias is None else upcast(self.bias)
            y = F.layer_norm(upcast(x), self.normalized_shape, weight, bias, self.eps)
        return y.type_as(x)


class RootMeanSquareNorm(nn.Module):
    """x / rms(x) * w over the last dimension, w of ``weight_size`` elements (init 1; no
    parameter when not affine). ``weight_size`` 1 is scalenorm, ``embed_dim`` is rmsnorm."""

    def __init__(self, embed_dim: int, weight_size: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.embed_dim = embed_dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(weight_size)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        """x: ... x C -> ... x C."""
        y = upcast(x)
        y = y / _root_mean_square(y, self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y.type_as(x)


class ScaleNorm(RootMeanSquareNorm):
    """x / rms(x) * g with one learned scalar g."""

    def __init__(self, embed_dim: int, affine: bool = True, eps: float = 1e-5):
        super().__init__(embed_dim, 1, affine=affine, eps=eps)


class RMSNorm(RootMeanSquareNorm):
    """x / rms(x) * w with a learned vector w of size C."""

    def __init__(self, embed_dim: int, affine: bool = True, eps: float = 1e-5):
        super().__init__(embed_dim, embed_dim, affine=affine, eps=eps)


class MaskedBatchNorm(nn.Module):
    """Batch normalisation of ``T x B x C`` inputs whose statistics skip padded positions.

    Training: per-channel mean and (biased) variance over the non-padded positions of the
    batch normalise the input, and update the running statistics (momentum 0.1, unbiased
    variance, as torch's BatchNorm). Eval: the running statistics normalise the input.
    With ``synchronized`` the sums are all-reduced across processes (differentiably) when
    torch.distributed is initialised with more than one process.
    """

    def __init__(self, embed_dim: int, affine: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1, synchronized: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.eps = eps
        self.momentum = momentum
        self.synchronized = synchronized
        if affine:
            self.weight = nn.Parameter(torch.ones(embed_dim))
            self.bias = nn.Parameter(torch.zeros(embed_dim))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(embed_dim))
        self.register_buffer("running_var", torch.ones(embed_dim))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _all_reduce_sum(self, t: Tensor) -> Tensor:
        if self.synchronized and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from torch.distributed.nn.functional import all_reduce

            return all_reduce(t)
        return t

    def _batch_statistics(self, x: Tensor, padding_mask: Optional[Tensor]):
        """Mean, biased variance (both C) and count of the real positions of x (T x B x C)."""
        if padding_mask is None:
            weights = x.new_ones(x.shape[:2] + (1,))
        else:
            weights = (~padding_mask).transpose(0, 1).unsqueeze(-1).to(x.dtype)  # T x B x 1
        count = self._all_reduce_sum(weights.sum()).clamp(min=1.0)
        mean = self._all_reduce_sum((x * weights).sum(dim=(0, 1))) / count
        var = self._all_reduce_sum((torch.square(x - mean) * weights).sum(dim=(0, 1))) / count
        return mean, var, count

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: T x B x C; padding_mask: B x T (True = pad) -> T x B x C."""
        y = upcast(x)
        if self.training:
            mean, var, count = self._batch_statistics(y, padding_mask)
            with torch.no_grad():
                unbiased_var = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean.to(y.dtype), self.running_var.to(y.dtype)
        y = (y - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y.type_as(x)

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.weight is not None}, synchronized={self.synchronized}")


class SequenceNorm(nn.Module):
    """The normalisation named ``norm_type`` (one of :data:`NORM_TYPES`) over the channels of
    ``T x B x C`` inputs; batch norms and the timestep norm use only non-padded positions for
    their statistics. ``num_groups``: the timestep norm's groups."""

    def __init__(self, norm_type: str, embed_dim: int, affine: bool = True, eps: float = 1e-5,
                 num_groups: int = 16):
        super().__init__()
        check_choice("norm_type", norm_type, NORM_TYPES)
        self.norm_type = norm_type
        if norm_type == "timestepnorm":
            self.norm = TimestepNorm(embed_dim, num_groups, affine=affine, eps=eps)
        elif norm_type == "layernorm":
            self.norm = Float32LayerNorm(embed_dim, eps=eps, elementwise_affine=affine)
        elif norm_type == "scalenorm":
            self.norm = ScaleNorm(embed_dim, affine=affine, eps=eps)
        elif norm_type == "rmsnorm":
            self.norm = RMSNorm(embed_dim, affine=affine, eps=eps)
        else:
            self.norm = MaskedBatchNorm(embed_dim, affine=affine, eps=eps,
                                        synchronized=norm_type == "syncbatchnorm")

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[IncrementalState] = None) -> Tensor:
        """x: T x B x C; padding_mask: B x T (True = pad), used by batch norms and the
        timestep norm; incremental_state: the timestep norm's carried statistics -> T x B x C."""
        if isinstance(self.norm, TimestepNorm):
            return self.norm(x, padding_mask, incremental_state)
        if isinstance(self.norm, MaskedBatchNorm):
            return self.norm(x, padding_mask)
        return self.norm(x)

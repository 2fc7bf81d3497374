"""Dropout of single elements or of whole feature channels."""

import torch
import torch.nn as nn
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor


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
    """:class:`FeatureDropout` when ``feature``, else fairseq's element-wise dropout."""
    if feature:
        return FeatureDropout(p)
    return FairseqDropout(p, module_name=module_name)

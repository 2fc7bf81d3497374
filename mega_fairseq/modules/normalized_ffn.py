"""Normalized feed-forward network of a Mega block."""

from typing import Optional

import torch.nn as nn
from torch import Tensor

from mega_fairseq.modules.activations import get_activation_fn
from mega_fairseq.modules.dropout import build_dropout
from mega_fairseq.modules.layer_settings import MegaLayerSettings
from mega_fairseq.modules.sequence_norm import SequenceNorm


class NormalizedFeedForwardNetwork(nn.Module):
    """Residual two-layer feed-forward network with a pre- or post-normalisation:
    out = x + dropout(fc2(hidden_dropout(act(fc1(norm(x))))))  (pre-norm), or
    out = norm(x + dropout(fc2(hidden_dropout(act(fc1(x))))))  (post-norm)."""

    def __init__(self, embed_dim: int, ffn_hidden_dim: int, dropout: float = 0.0,
                 hidden_dropout: float = 0.0, activation: str = "silu",
                 norm_type: str = "layernorm", prenorm: bool = True, norm_affine: bool = True,
                 feature_dropout: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.ffn_hidden_dim = ffn_hidden_dim
        self.prenorm = prenorm
        self.activation = get_activation_fn(activation)
        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine)
        self.fc1 = nn.Linear(embed_dim, ffn_hidden_dim)
        self.fc2 = nn.Linear(ffn_hidden_dim, embed_dim)
        self.hidden_dropout = build_dropout(hidden_dropout, feature_dropout, self.__class__.__name__)
        self.dropout = build_dropout(dropout, feature_dropout, self.__class__.__name__)
        self.reset_parameters()

    @classmethod
    def from_settings(cls, s: MegaLayerSettings) -> "NormalizedFeedForwardNetwork":
        """The FFN sublayer of a block with settings ``s``."""
        return cls(
            s.embed_dim, s.ffn_hidden_dim, dropout=s.dropout, hidden_dropout=s.activation_dropout,
            activation=s.activation, norm_type=s.norm_type, prenorm=s.prenorm,
            norm_affine=s.norm_affine, feature_dropout=s.feature_dropout,
        )

    def reset_parameters(self, std: float = 0.02) -> None:
        for linear in (self.fc1, self.fc2):
            nn.init.normal_(linear.weight, mean=0.0, std=std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: T x B x C; padding_mask: B x T (True = pad) -> T x B x C."""
        residual = x
        if self.prenorm:
            x = self.norm(x, padding_mask)
        x = self.hidden_dropout(self.activation(self.fc1(x)))
        x = self.dropout(self.fc2(x))
        x = residual + x
        if not self.prenorm:
            x = self.norm(x, padding_mask)
        return x

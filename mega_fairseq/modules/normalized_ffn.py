"""Normalized feed-forward network of a Mega block."""

from typing import Optional

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mega_fairseq.modules.activations import get_activation_fn
from mega_fairseq.modules.dropout import build_dropout
from mega_fairseq.modules.layer_settings import MegaLayerSettings
from mega_fairseq.modules.sequence_norm import SequenceNorm


class NormalizedFeedForwardNetwork(nn.Module):
    """Residual feed-forward network with a pre- or post-normalisation:
    out = residual + dropout(fc2(hidden_dropout(f(norm(x)))))  (pre-norm), or
    out = norm(x + dropout(fc2(hidden_dropout(f(x)))))         (post-norm),
    with f(x) = act(fc1 x) ('mlp') or silu(fc1 x) * fc3 x ('swiglu', no biases), and
    residual = x unless the caller passes another (Megalodon's two-hop residual)."""

    def __init__(self, embed_dim: int, ffn_hidden_dim: int, dropout: float = 0.0,
                 hidden_dropout: float = 0.0, activation: str = "silu",
                 norm_type: str = "layernorm", prenorm: bool = True, norm_affine: bool = True,
                 feature_dropout: bool = False, ffn_type: str = "mlp"):
        super().__init__()
        if ffn_type not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_type must be 'mlp' or 'swiglu', got {ffn_type!r}")
        self.embed_dim = embed_dim
        self.ffn_hidden_dim = ffn_hidden_dim
        self.prenorm = prenorm
        self.ffn_type = ffn_type
        self.activation = get_activation_fn(activation)
        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine)
        bias = ffn_type == "mlp"
        self.fc1 = nn.Linear(embed_dim, ffn_hidden_dim, bias=bias)
        self.fc3 = nn.Linear(embed_dim, ffn_hidden_dim, bias=False) if ffn_type == "swiglu" else None
        self.fc2 = nn.Linear(ffn_hidden_dim, embed_dim, bias=bias)
        self.hidden_dropout = build_dropout(hidden_dropout, feature_dropout, self.__class__.__name__)
        self.dropout = build_dropout(dropout, feature_dropout, self.__class__.__name__)
        self.reset_parameters()

    @classmethod
    def from_settings(cls, s: MegaLayerSettings) -> "NormalizedFeedForwardNetwork":
        """The FFN sublayer of a block with settings ``s``."""
        return cls(
            s.embed_dim, s.ffn_hidden_dim, dropout=s.dropout, hidden_dropout=s.activation_dropout,
            activation=s.activation, norm_type=s.positionwise_norm_type, prenorm=s.prenorm,
            norm_affine=s.norm_affine, feature_dropout=s.feature_dropout, ffn_type=s.ffn_type,
        )

    def reset_parameters(self, std: float = 0.02) -> None:
        for linear in (self.fc1, self.fc2, self.fc3):
            if linear is not None:
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                residual: Optional[Tensor] = None) -> Tensor:
        """x: T x B x C; padding_mask: B x T (True = pad); residual: T x B x C added to the
        output instead of x (pre-norm only) -> T x B x C."""
        if residual is None:
            residual = x
        elif not self.prenorm:
            raise ValueError("a separate residual (two-hop residual) needs a pre-norm FFN")
        if self.prenorm:
            x = self.norm(x, padding_mask)
        if self.fc3 is None:
            x = self.activation(self.fc1(x))
        else:
            x = F.silu(self.fc1(x)) * self.fc3(x)
        x = self.dropout(self.fc2(self.hidden_dropout(x)))
        x = residual + x
        if not self.prenorm:
            x = self.norm(x, padding_mask)
        return x

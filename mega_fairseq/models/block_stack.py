"""What the Mega encoder and decoder stacks have in common: scaled token embeddings, an
optional embedding norm, embedding dropout, the blocks, and a final norm for pre-norm
stacks."""

import math
from typing import Optional

import torch.nn as nn
from torch import Tensor

from fairseq.modules import FairseqDropout

from mega_fairseq.modules.mega_layer import MegaLayer, MegaLayerSettings
from mega_fairseq.modules.sequence_norm import SequenceNorm


class MegaBlockStack:
    """Mixin for fairseq encoder/decoder modules; call :meth:`build_stack` in ``__init__``
    after ``super().__init__``."""

    def build_stack(self, settings: MegaLayerSettings, num_layers: int, side: str,
                    scale_embedding: bool, normalize_embedding: bool,
                    affine_final_norm: bool) -> None:
        if num_layers <= 0:
            raise ValueError(f"{side}_layers must be a positive integer, got {num_layers}")
        embed_dim = settings.embed_dim
        self.embed_scale = math.sqrt(embed_dim) if scale_embedding else 1.0
        self.embedding_norm = (
            SequenceNorm(settings.norm_type, embed_dim, affine=settings.norm_affine)
            if normalize_embedding
            else None
        )
        self.embedding_dropout = FairseqDropout(settings.dropout, module_name=type(self).__name__)
        self.layers = nn.ModuleList([MegaLayer(settings) for _ in range(num_layers)])
        self.final_norm = (
            SequenceNorm(settings.norm_type, embed_dim, affine=affine_final_norm)
            if settings.prenorm
            else None
        )

    def block_input(self, embedding: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        """Scaled embeddings B x T x C -> the first block's input T x B x C (embedding
        norm, dropout, zeros at padding; ``padding_mask`` B x T or None)."""
        x = embedding.transpose(0, 1)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x, padding_mask)
        x = self.embedding_dropout(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.transpose(0, 1).unsqueeze(-1), 0.0)
        return x

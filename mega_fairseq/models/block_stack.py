"""What the Mega encoder and decoder stacks have in common: scaled token embeddings, an
optional embedding norm, embedding dropout, the blocks, and a final norm for pre-norm
stacks (unless ``StackSettings.final_norm`` is off)."""

import math
from typing import List, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from mega_fairseq.models.mega_options import StackSettings
from mega_fairseq.modules.dropout import ElementDropout
from mega_fairseq.modules.mega_layer import MegaLayer
from mega_fairseq.modules.sequence_norm import SequenceNorm


class MegaBlockStack:
    """Mixin for fairseq encoder/decoder modules; call :meth:`build_stack` in ``__init__``
    after ``super().__init__``. ``settings`` (:class:`StackSettings`) is the stack's one
    description: block settings, depth, embedding options and length limit."""

    def build_stack(self, settings: StackSettings) -> None:
        layer = settings.layer
        embed_dim = layer.embed_dim
        self.settings = settings
        self.embed_scale = math.sqrt(embed_dim) if settings.scale_embedding else 1.0
        self.embedding_norm = (
            SequenceNorm(layer.positionwise_norm_type, embed_dim, affine=layer.norm_affine)
            if settings.normalize_embedding
            else None
        )
        self.embedding_dropout = ElementDropout(layer.dropout, module_name=type(self).__name__)
        self.layers = nn.ModuleList([MegaLayer(layer) for _ in range(settings.num_layers)])
        self.final_norm = (
            SequenceNorm(layer.norm_type, embed_dim, affine=settings.affine_final_norm,
                         num_groups=layer.timestep_norm_groups)
            if layer.prenorm and settings.final_norm
            else None
        )

    def max_positions(self) -> int:
        """The longest input (``settings.max_positions``; 1e6 when unlimited, fairseq's
        convention for "no limit")."""
        limit = self.settings.max_positions
        return int(1e6) if limit is None else limit

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

    def run_blocks(self, x: Tensor, padding_mask: Optional[Tensor],
                   return_all_hiddens: bool = False) -> Tuple[Tensor, List[Tensor]]:
        """The blocks and the final norm of a non-causal stack over x (T x B x C;
        ``padding_mask`` B x T or None), zeros at padding -> (T x B x C, [T x B x C after
        each block] with ``return_all_hiddens``, else [])."""
        states: List[Tensor] = []
        for layer in self.layers:
            x, _ = layer(x, padding_mask=padding_mask)
            if return_all_hiddens:
                states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.transpose(0, 1).unsqueeze(-1), 0.0)
        return x, states

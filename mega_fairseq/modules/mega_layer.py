"""One Mega block: moving-average gated attention, optional gated cross-attention, and a
normalized feed-forward network.

Encoders use ``causal=False`` (bidirectional EMA, full attention); decoders and language
models use ``causal=True`` (unidirectional EMA, causal attention, incremental decoding);
translation decoders add ``cross_attention=True``.
"""

from typing import Optional, Tuple

import torch.nn as nn
from torch import Tensor

from mega_fairseq.modules.gated_attention import MovingAverageGatedAttention
from mega_fairseq.modules.gated_cross_attention import GatedCrossAttention
from mega_fairseq.modules.incremental import IncrementalState
from mega_fairseq.modules.layer_settings import MegaLayerSettings
from mega_fairseq.modules.normalized_ffn import NormalizedFeedForwardNetwork


class MegaLayer(nn.Module):
    """A Mega block over ``T x B x C`` inputs."""

    def __init__(self, settings: MegaLayerSettings):
        super().__init__()
        self.settings = settings
        self.self_attn = MovingAverageGatedAttention.from_settings(settings)
        self.cross_attn = (
            GatedCrossAttention.from_settings(settings) if settings.cross_attention else None
        )
        self.ffn = NormalizedFeedForwardNetwork.from_settings(settings)

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        need_attn: bool = False,
        start_position: Optional[int] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """x: T x B x C; padding_mask: B x T; encoder_out: S x B x C; encoder_padding_mask: B x S;
        start_position: the position of x's first token in its sequence, counted by the
        decoder (needed by cross-attention when decoding incrementally).

        Returns the block output (T x B x C) and, with ``need_attn``, the cross-attention
        weights (B x T x S) of decoders or the self-attention weights of other blocks.
        With ``two_hop_residual`` the FFN adds its output to the block input x (Megalodon).
        """
        block_input = x
        x, attn = self.self_attn(
            x, padding_mask=padding_mask, incremental_state=incremental_state,
            need_weights=need_attn and self.cross_attn is None,
        )
        if self.cross_attn is not None:
            if encoder_out is None:
                raise ValueError("a Mega block with cross-attention needs encoder_out")
            x, attn = self.cross_attn(
                x,
                encoder_out,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
                need_weights=need_attn,
                query_padding_mask=padding_mask,
                start_position=start_position,
            )
        x = self.ffn(x, padding_mask=padding_mask,
                     residual=block_input if self.settings.two_hop_residual else None)
        return x, attn

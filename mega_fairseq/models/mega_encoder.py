"""The bidirectional Mega encoder stack of the ``mega`` translation model."""

from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from fairseq import utils
from fairseq.models import FairseqEncoder

from mega_fairseq.models.block_stack import MegaBlockStack
from mega_fairseq.models.dictionary_fingerprint import attach_dictionary_fingerprint
from mega_fairseq.models.mega_options import StackSettings
from mega_fairseq.models.model_building import check_checkpoint_vocabulary
from mega_fairseq.models.padding import any_true, has_values, roll_last


class MegaEncoder(MegaBlockStack, FairseqEncoder):
    """Mega blocks with bidirectional EMA and full (or chunked) attention over source tokens.

    Args:
        settings: the stack's settings (non-causal blocks; ``max_positions``: the longest
            source it accepts)
        dictionary: source dictionary
        embed_tokens: the token embedding, ``nn.Embedding`` or a module with the same call
            (B x S ids -> B x S x C) and a ``weight`` giving the model's device and dtype
        embed_token_types: optional ``nn.Embedding`` over token types (segments), summed
            with the token embeddings; ``forward(..., token_types=B x S)`` (default: type 0)

    Left-padded batches (fairseq's translation default) are re-aligned to the right before
    the blocks run, so chunk boundaries fall at the same tokens whatever the padding; the
    outputs and ``encoder_padding_mask`` are right-padded.
    """

    def __init__(
        self,
        settings: StackSettings,
        dictionary,
        embed_tokens: nn.Module,
        embed_token_types: Optional[nn.Embedding] = None,
    ):
        super().__init__(dictionary)
        if settings.layer.causal:
            raise ValueError("the Mega encoder needs non-causal block settings")
        self.padding_idx = dictionary.pad()
        attach_dictionary_fingerprint(self, dictionary, "source")
        self.embed_tokens = embed_tokens
        self.embed_token_types = embed_token_types
        self.build_stack(settings)

    def replace_token_embedding(self, embed_tokens: nn.Module) -> None:
        """Use ``embed_tokens`` (same call as ``nn.Embedding``: B x S ids -> B x S x C) as
        the token embedding, e.g. a projection of pixel values; a tied masked-LM head keeps
        the old table."""
        self.embed_tokens = embed_tokens

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_types: Optional[Tensor] = None,
        **unused,
    ) -> Dict[str, List[Tensor]]:
        """src_tokens: B x S (left or right padded); src_lengths: B; token_types: B x S
        token type ids, aligned with ``src_tokens`` (used only with ``embed_token_types``).

        Returns fairseq's encoder output dictionary: ``encoder_out`` [S x B x C],
        ``encoder_padding_mask`` [B x S] (True at padding), ``encoder_embedding``
        [B x S x C], ``encoder_states`` (S x B x C after each block with
        ``return_all_hiddens``), ``src_tokens`` [], ``src_lengths`` [B x 1], and
        ``encoder_left_padding`` [B]: the padding a left-padded row had before it was
        right-aligned (all outputs are right-aligned; 0 for right-padded rows), with which
        the decoder maps its attention back onto the columns of ``src_tokens``.
        """
        padding_mask = src_tokens.eq(self.padding_idx)
        if self.embed_token_types is None:
            token_types = None
        elif token_types is not None:
            self._check_token_types(token_types, src_tokens)
        # left-padded batches (fairseq's translation default) are right-aligned first; on
        # the meta device (no values) the batch is taken as right-padded
        left_padding = torch.zeros(src_tokens.size(0), dtype=torch.long, device=src_tokens.device)
        if any_true(padding_mask[:, 0], unknown=False):
            left_padding = padding_mask.long().sum(dim=1)  # the shift of right_align
            if token_types is not None:
                token_types = roll_last(token_types, -left_padding)  # right_align(token_types)
            src_tokens = utils.convert_padding_direction(
                src_tokens, self.padding_idx, left_to_right=True
            )
            padding_mask = src_tokens.eq(self.padding_idx)
        has_padding = any_true(padding_mask)
        layer_padding_mask = padding_mask if has_padding else None

        embedding = self.embed_tokens(src_tokens)
        if self.embed_token_types is not None:
            if token_types is None:
                token_types = torch.zeros_like(src_tokens)
            embedding = embedding + self.embed_token_types(token_types)
        embedding = self.embed_scale * embedding
        x = self.block_input(embedding, layer_padding_mask)  # S x B x C

        x, states = self.run_blocks(x, layer_padding_mask, return_all_hiddens)

        if src_lengths is None:
            src_lengths = (~padding_mask).sum(dim=1)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding_mask],
            "encoder_embedding": [embedding],
            "encoder_states": states,
            "src_tokens": [],
            "src_lengths": [src_lengths.reshape(-1, 1)],
            "encoder_left_padding": [left_padding],
        }

    def _check_token_types(self, token_types: Tensor, src_tokens: Tensor) -> None:
        if token_types.shape != src_tokens.shape:
            raise ValueError(
                f"token_types must have the shape of src_tokens {tuple(src_tokens.shape)}, "
                f"got {tuple(token_types.shape)}"
            )
        if token_types.dtype.is_floating_point or token_types.dtype == torch.bool:
            raise ValueError(f"token_types must be integer ids, got dtype {token_types.dtype}")
        num_types = self.embed_token_types.num_embeddings
        if token_types.numel() > 0 and has_values(token_types):
            low, high = int(token_types.min()), int(token_types.max())
            if low < 0 or high >= num_types:
                raise ValueError(
                    f"token type ids must lie in [0, {num_types - 1}] (--type-vocab-size "
                    f"{num_types}), got ids from {low} to {high}"
                )

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        """Select batch entries ``new_order`` (beam expansion / finished sentences)."""

        def select(name: str, dim: int) -> List[Tensor]:
            return [t.index_select(dim, new_order) for t in encoder_out.get(name, [])]

        return {
            "encoder_out": select("encoder_out", 1),
            "encoder_padding_mask": select("encoder_padding_mask", 0),
            "encoder_embedding": select("encoder_embedding", 0),
            "encoder_states": select("encoder_states", 1),
            "src_tokens": select("src_tokens", 0),
            "src_lengths": select("src_lengths", 0),
            "encoder_left_padding": select("encoder_left_padding", 0),
        }

    def upgrade_state_dict_named(self, state_dict, name):
        prefix = f"{name}." if name else ""
        check_checkpoint_vocabulary(state_dict, prefix, self.embed_tokens, self.dictionary, "source")
        return state_dict

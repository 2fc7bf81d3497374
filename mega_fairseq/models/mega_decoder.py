"""The Mega decoder stack shared by ``mega_lm`` (no encoder) and the ``mega`` translation
model (with gated cross-attention)."""

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import AdaptiveSoftmax

from mega_fairseq.models.block_stack import MegaBlockStack
from mega_fairseq.models.dictionary_fingerprint import attach_dictionary_fingerprint
from mega_fairseq.models.mega_options import StackSettings
from mega_fairseq.models.model_building import check_checkpoint_vocabulary
from mega_fairseq.models.padding import left_align_columns, padding_mask_or_none
from mega_fairseq.models.segment_state import SegmentStates
from mega_fairseq.modules.incremental import IncrementalState

_STEPS_KEY = "decoded"
# what runs before the output projection: nothing, or Linear(C, C) -> tanh
DECODER_LM_HEAD_TYPES = ("linear", "dense_tanh")


class MegaDecoder(MegaBlockStack, FairseqIncrementalDecoder):
    """Causal Mega blocks over target tokens.

    Args:
        settings: the stack's settings (causal blocks, with cross-attention for
            translation; ``max_positions``: the longest target, None for any length)
        dictionary: target dictionary
        embed_tokens: ``nn.Embedding`` or fairseq ``AdaptiveInput``
        share_input_output_embed: tie the output projection to ``embed_tokens``
        adaptive_softmax: optional fairseq ``AdaptiveSoftmax`` (replaces the projection)
        lm_head_type: 'linear' (features -> output projection) or 'dense_tanh' (features ->
            Linear(C, C) -> tanh -> output projection, the Hugging Face port's
            ``add_lm_hidden_dense_layer``); not with ``adaptive_softmax``
        output_projection_bias: a bias on the output projection (not with
            ``adaptive_softmax``)
    """

    def __init__(
        self,
        settings: StackSettings,
        dictionary,
        embed_tokens: nn.Module,
        share_input_output_embed: bool = False,
        adaptive_softmax: Optional[AdaptiveSoftmax] = None,
        lm_head_type: str = "linear",
        output_projection_bias: bool = False,
    ):
        super().__init__(dictionary)
        if lm_head_type not in DECODER_LM_HEAD_TYPES:
            raise ValueError(f"lm_head_type must be one of {list(DECODER_LM_HEAD_TYPES)}, got {lm_head_type!r}")
        if adaptive_softmax is not None and (lm_head_type != "linear" or output_projection_bias):
            raise ValueError("an adaptive softmax replaces the output projection: it takes neither "
                             "lm_head_type='dense_tanh' nor output_projection_bias")
        if not settings.layer.causal:
            raise ValueError("the Mega decoder needs causal block settings")
        embed_dim = settings.layer.embed_dim
        self.padding_idx = dictionary.pad()
        # the fingerprint names the target dictionary of a translation model
        attach_dictionary_fingerprint(self, dictionary,
                                      "target" if settings.layer.cross_attention else "lm")
        self.embed_tokens = embed_tokens
        self.build_stack(settings)
        # segment-recurrent training (net_input["segment"]; see models.segment_state)
        self.segment_states = SegmentStates()
        self.adaptive_softmax = adaptive_softmax
        self.output_dense = nn.Linear(embed_dim, embed_dim) if lm_head_type == "dense_tanh" else None
        self.output_projection = None
        if adaptive_softmax is None:
            self.output_projection = nn.Linear(embed_dim, len(dictionary), bias=output_projection_bias)
            if share_input_output_embed:
                self.output_projection.weight = embed_tokens.weight
            else:
                nn.init.normal_(self.output_projection.weight, mean=0.0, std=embed_dim ** -0.5)
            if output_projection_bias:
                nn.init.zeros_(self.output_projection.bias)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[IncrementalState] = None,
        features_only: bool = False,
        src_lengths: Optional[Any] = None,
        return_all_hiddens: bool = False,
        **unused,
    ):
        """prev_output_tokens: B x T.  Returns (B x T x V logits (or B x T x C features),
        {"attn": [B x T x S or None], "inner_states": [T x B x C, ...]}).

        ``attn`` holds the cross-attention weights of the alignment layer (``alignment_layer``,
        default the last block, as fairseq's transformer) over the columns of the source
        tokens as the caller passed them (left padding included), which fairseq's
        ``--print-alignment`` reads. They are returned in eval mode, or in training when
        ``alignment_layer`` is given; None for decoders without cross-attention.

        With ``incremental_state``, ``prev_output_tokens`` may hold the whole prefix (as
        fairseq's SequenceGenerator passes it): only the columns not decoded yet are run
        (usually the last one, or a block of several), the prefix is never recomputed, and
        the outputs cover just those new columns.

        ``segment`` (from the ``segment_language_modeling`` task, training mode only):
        ``prev_output_tokens`` is the next segment of the streams of a stream group, run
        from the state the group's previous segment left (see
        :mod:`mega_fairseq.models.segment_state`).
        """
        segment = unused.get("segment")
        if segment is not None and self.training and incremental_state is None:
            incremental_state = self.segment_states.begin(segment, prev_output_tokens.size(0))
            x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state,
                                             alignment_layer=unused.get("alignment_layer"))
            self.segment_states.end(segment, incremental_state,
                                    skip_key=self._get_full_incremental_state_key(_STEPS_KEY))
        else:
            x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state,
                                             alignment_layer=unused.get("alignment_layer"))
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[IncrementalState] = None,
        alignment_layer: Optional[int] = None,
        **unused,
    ):
        """The decoder's features (B x T x C) and the ``extra`` dict of :meth:`forward`."""
        tokens = prev_output_tokens
        # the one count of decoded positions: the layers get it as start_position
        decoded = 0
        if incremental_state is not None:
            decoded = self._decoded_positions(incremental_state)
            tokens = tokens[:, decoded:]
            self._set_decoded_positions(incremental_state, decoded + tokens.size(1))
        padding_mask = padding_mask_or_none(tokens, self.padding_idx)

        enc, enc_padding_mask, enc_left_padding = None, None, None
        if encoder_out is not None and len(encoder_out.get("encoder_out", [])) > 0:
            enc = encoder_out["encoder_out"][0]
            masks = encoder_out.get("encoder_padding_mask", [])
            enc_padding_mask = masks[0] if len(masks) > 0 else None
            shifts = encoder_out.get("encoder_left_padding", [])
            enc_left_padding = shifts[0] if len(shifts) > 0 else None
        want_attn = enc is not None and (not self.training or alignment_layer is not None)
        if alignment_layer is None:
            alignment_layer = len(self.layers) - 1

        x = self.block_input(self.embed_scale * self.embed_tokens(tokens), padding_mask)  # T x B x C

        inner_states: List[Optional[Tensor]] = [x]
        attn: Optional[Tensor] = None
        for index, layer in enumerate(self.layers):
            x, layer_attn = layer(
                x,
                padding_mask=padding_mask,
                encoder_out=enc,
                encoder_padding_mask=enc_padding_mask,
                incremental_state=incremental_state,
                need_attn=want_attn and index == alignment_layer,
                start_position=decoded,
            )
            inner_states.append(x)
            if layer_attn is not None:
                attn = layer_attn.float()
        if attn is not None and enc_left_padding is not None:
            attn = left_align_columns(attn, enc_left_padding)
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask, incremental_state)
        return x.transpose(0, 1), {"attn": [attn], "inner_states": inner_states}

    def output_layer(self, features: Tensor) -> Tensor:
        """features B x T x C -> logits B x T x V (the features themselves with an adaptive
        softmax, which the criterion applies)."""
        if self.adaptive_softmax is None:
            if self.output_dense is not None:
                features = torch.tanh(self.output_dense(features))
            return self.output_projection(features)
        return features

    # ------------------------------------------------------------- incremental
    def _decoded_positions(self, incremental_state: IncrementalState) -> int:
        state = self.get_incremental_state(incremental_state, _STEPS_KEY)
        if state is None:
            return 0
        return int(state["count"].item())

    def _set_decoded_positions(self, incremental_state: IncrementalState, count: int) -> None:
        self.set_incremental_state(
            incremental_state, _STEPS_KEY, {"count": torch.tensor(count, dtype=torch.long)}
        )

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.get_normalized_probs_scriptable(net_output, log_probs, sample)

    # ------------------------------------------------------------- checkpoints
    def upgrade_state_dict_named(self, state_dict, name):
        """Called by fairseq's ``load_state_dict`` before the tensors are copied: a
        checkpoint trained with another dictionary fails with both vocabulary sizes."""
        prefix = f"{name}." if name else ""
        check_checkpoint_vocabulary(state_dict, prefix, self.embed_tokens, self.dictionary)
        return state_dict

"""Moving average equipped gated attention, the sequence-mixing sublayer of a Mega block
(Ma et al. 2022, "Mega: Moving Average Equipped Gated Attention", arXiv 2209.10655).

With residual = x (T x B x C) and x normalised first when pre-norm:

    v        = act(W_v x)                                            T x B x hdim
    mx       = dropout(EMA(x))          (EMA output already silu-activated)
    u, zr, hx = split(W_mx mx, [C, zdim + hdim, C])
    u        = sigmoid(u);  z, r = split(silu(zr), [zdim, hdim])
    q, k     = z * gamma[0] + beta[0],  z * gamma[1] + beta[1]       T x B x zdim
    attn     = attention(q, k, v) per sequence, or per chunk          T x B x hdim
    h        = dropout(act(hx + W_h(hidden_dropout(attn * r))))
    out      = residual + u * (h - residual)     (then normalised when post-norm)

attention(q, k, v) is :class:`~mega_fairseq.modules.attention_kernel.SingleHeadAttention`
(softmax, laplace or relu^2 weights) with a relative positional bias over positions inside
the attention window (the chunk when chunked).

Megalodon's variants (Ma et al. 2024, arXiv 2404.08801), each a switch:

* ``ema_type='cema'``: the complex EMA (:mod:`mega_fairseq.modules.complex_ema`);
* ``normalized_attention``: z is not activated but L2-normalised over its zdim channels,
  q, k = z / |z| * gamma + beta (gamma starts at 1), and softmax scores are not scaled by
  zdim ** -0.5 (Eqs. 5-9);
* ``update_gate=False``: no u; out = residual + h;
* ``norm_type='timestepnorm'``: the input norm is cumulative over time, and carries its
  statistics in the incremental state.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from mega_fairseq.modules.activations import get_activation_fn
from mega_fairseq.modules.attention_kernel import SingleHeadAttention
from mega_fairseq.modules.complex_ema import ComplexMultiDimensionalDampedEMA
from mega_fairseq.modules.dropout import build_dropout
from mega_fairseq.modules.ema import MultiDimensionalDampedEMA
from mega_fairseq.modules.incremental import IncrementalState
from mega_fairseq.modules.layer_settings import MegaLayerSettings
from mega_fairseq.modules.length_options import optional_length
from mega_fairseq.modules.relative_position import build_relative_positional_bias
from mega_fairseq.modules.sequence_norm import SequenceNorm

# names of the cached tensors of incremental decoding, read and written only through these
ATTENTION_STATE = "attention_state"
PREV_KEY = "prev_key"
PREV_VALUE = "prev_value"
PREV_KEY_PADDING_MASK = "prev_key_padding_mask"

EMA_CLASSES = {"ema": MultiDimensionalDampedEMA, "cema": ComplexMultiDimensionalDampedEMA}
# |z| below this is treated as this (normalized attention)
_MIN_Z_NORM = 1e-6


def _check_positive(option: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")


def _check_probability(option: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{option} must be in [0, 1), got {value!r}")


def _concat_padding_masks(previous: Optional[Tensor], new: Optional[Tensor], batch: int,
                          previous_length: int, new_length: int) -> Optional[Tensor]:
    """Key padding masks of cached keys (B x Lp) and new keys (B x Ln), either None when
    nothing there is padded -> B x (Lp + Ln), or None when neither hides a key. Decided
    from which masks exist, so that decoding never reads a mask back from its device."""
    if previous is None and new is None:
        return None
    reference = previous if previous is not None else new
    if previous is None:
        previous = reference.new_zeros(batch, previous_length)
    if new is None:
        new = reference.new_zeros(batch, new_length)
    return torch.cat([previous, new], dim=1)


@with_incremental_state
class MovingAverageGatedAttention(nn.Module):
    """Mega's gated attention with a multi-dimensional damped EMA, over ``T x B x C``.

    Args:
        embed_dim: C, the model dimension.
        zdim: dimension of the shared query/key representation z.
        hdim: dimension of the values and of the reset gate r.
        ndim: EMA dimensions per channel.
        dropout: dropout on the EMA output and on the sublayer output h.
        attention_dropout: dropout on the attention weights.
        hidden_dropout: dropout on attn * r before W_h.
        activation: activation of v and h (see ``activations.ACTIVATIONS``).
        attention_activation: ``softmax``, ``laplace`` or ``relu2``.
        causal: queries see only keys at their own or earlier positions; allows
            incremental decoding.
        bidirectional: EMA in both directions; ``None`` means ``not causal``. Must be
            False when causal.
        chunk_size: > 0 restricts attention to consecutive chunks of that many positions
            (linear cost); -1 or 0 (or None) attends over the whole sequence.
        truncation: EMA kernel truncation (None, 0 or -1: full length).
        norm_type, prenorm, norm_affine: normalisation of the sublayer (``SequenceNorm``),
            before (pre-norm) or after (post-norm) the residual connection.
        feature_dropout: dropouts other than the attention dropout drop whole channels.
        rel_pos_bias: ``simple`` or ``rotary`` relative positional bias.
        max_positions: the largest attention window (sequence or chunk) the simple bias
            supports.
        ema_type, timestep_norm_groups, normalized_attention, update_gate: Megalodon's
            variants (see the module docstring; ``timestep_norm_groups`` is used by the
            timestep norm only).
    """

    def __init__(
        self,
        embed_dim: int,
        zdim: int,
        hdim: int,
        ndim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        activation: str = "silu",
        attention_activation: str = "softmax",
        causal: bool = False,
        bidirectional: Optional[bool] = None,
        chunk_size: Optional[int] = -1,
        truncation: Optional[int] = None,
        norm_type: str = "layernorm",
        prenorm: bool = True,
        norm_affine: bool = True,
        feature_dropout: bool = False,
        rel_pos_bias: str = "simple",
        max_positions: int = 1024,
        ema_type: str = "ema",
        timestep_norm_groups: int = 16,
        normalized_attention: bool = False,
        update_gate: bool = True,
    ):
        super().__init__()
        if ema_type not in EMA_CLASSES:
            raise ValueError(f"ema_type must be one of {list(EMA_CLASSES)}, got {ema_type!r}")
        for option, value in (("embed_dim", embed_dim), ("zdim", zdim), ("hdim", hdim),
                              ("ndim", ndim), ("max_positions", max_positions)):
            _check_positive(option, value)
        for option, value in (("dropout", dropout), ("attention_dropout", attention_dropout),
                              ("hidden_dropout", hidden_dropout)):
            _check_probability(option, value)
        if bidirectional is None:
            bidirectional = not causal
        if causal and bidirectional:
            raise ValueError(
                "bidirectional must be False (or None) when causal=True: a bidirectional "
                "moving average would see future tokens"
            )
        chunk_size = optional_length("chunk_size", chunk_size) or -1
        truncation = optional_length("truncation", truncation)

        self.embed_dim = embed_dim
        self.zdim = zdim
        self.hdim = hdim
        self.ndim = ndim
        self.causal = causal
        self.bidirectional = bidirectional
        self.chunk_size = chunk_size
        self.truncation = truncation
        self.prenorm = prenorm
        self.attention_activation = attention_activation
        self.max_positions = max_positions
        self.ema_type = ema_type
        self.normalized_attention = normalized_attention
        self.update_gate = update_gate

        self.activation = get_activation_fn(activation)
        self.dropout = build_dropout(dropout, feature_dropout, self.__class__.__name__)
        self.hidden_dropout = build_dropout(hidden_dropout, feature_dropout, self.__class__.__name__)
        self.attention = SingleHeadAttention(zdim, attention_activation, attention_dropout, causal,
                                             module_name=self.__class__.__name__,
                                             scaling=1.0 if normalized_attention else None)

        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine, num_groups=timestep_norm_groups)
        self.ema = EMA_CLASSES[ema_type](embed_dim, ndim=ndim, bidirectional=bidirectional,
                                         truncation=truncation)
        self.v_proj = nn.Linear(embed_dim, hdim)
        # -> [u (update gate),] z, r, hx
        self.gate_dim = embed_dim if update_gate else 0
        self.mx_proj = nn.Linear(embed_dim, self.gate_dim + zdim + hdim + embed_dim)
        self.h_proj = nn.Linear(hdim, embed_dim)
        # row 0 turns z into queries, row 1 into keys
        self.gamma = nn.Parameter(torch.empty(2, zdim))
        self.beta = nn.Parameter(torch.empty(2, zdim))
        self.rel_pos_bias = build_relative_positional_bias(rel_pos_bias, zdim, max_positions)
        self.reset_parameters()

    @classmethod
    def from_settings(cls, s: MegaLayerSettings) -> "MovingAverageGatedAttention":
        """The self-attention sublayer of a block with settings ``s``."""
        return cls(
            s.embed_dim, s.zdim, s.hdim, s.ndim, dropout=s.dropout,
            attention_dropout=s.attention_dropout, hidden_dropout=s.hidden_dropout,
            activation=s.activation, attention_activation=s.attention_activation,
            causal=s.causal, bidirectional=s.bidirectional, chunk_size=s.chunk_size,
            truncation=s.truncation, norm_type=s.norm_type, prenorm=s.prenorm,
            norm_affine=s.norm_affine, feature_dropout=s.feature_dropout,
            rel_pos_bias=s.rel_pos_bias, max_positions=s.max_positions, ema_type=s.ema_type,
            timestep_norm_groups=s.timestep_norm_groups,
            normalized_attention=s.normalized_attention, update_gate=s.update_gate,
        )

    def reset_parameters(self, std: float = 0.02) -> None:
        for linear in (self.v_proj, self.mx_proj, self.h_proj):
            nn.init.normal_(linear.weight, mean=0.0, std=std)
            nn.init.zeros_(linear.bias)
        if self.normalized_attention:
            # z / |z| has unit length: gamma starts as the identity scale
            nn.init.ones_(self.gamma)
        else:
            nn.init.normal_(self.gamma, mean=0.0, std=std)
        nn.init.zeros_(self.beta)

    @property
    def chunked(self) -> bool:
        return self.chunk_size > 0

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        need_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """x: T x B x C; padding_mask: B x T bool (True = pad).

        With ``incremental_state`` (causal layers only) x holds the L >= 1 tokens that follow
        the ones already decoded, and padding_mask (B x L) covers only them.

        Returns the output (T x B x C) and, with ``need_weights``, the attention weights
        B x T x W: weights[b, i, j] is the weight of query i on the key at position j of
        its attention window (the sequence, or the query's chunk when chunked, W =
        chunk_size); otherwise None. Outputs at padded positions are finite but
        meaningless.
        """
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(f"expected input of shape T x B x {self.embed_dim}, got {tuple(x.shape)}")
        if padding_mask is not None:
            if padding_mask.shape != (x.size(1), x.size(0)):
                raise ValueError(
                    f"padding_mask must be B x T = {(x.size(1), x.size(0))}, got {tuple(padding_mask.shape)}"
                )
            padding_mask = padding_mask.to(torch.bool)
        if incremental_state is not None and not self.causal:
            raise ValueError("incremental decoding needs a causal layer (causal=True)")

        residual = x
        if self.prenorm:
            x = self.norm(x, padding_mask, incremental_state)

        v = self.activation(self.v_proj(x))  # T x B x hdim
        mx = self.ema(x, padding_mask, incremental_state)  # T x B x C
        mx = self.dropout(mx)
        u, zr, hx = torch.split(self.mx_proj(mx), [self.gate_dim, self.zdim + self.hdim, self.embed_dim], dim=-1)
        if self.normalized_attention:
            z, r = torch.split(zr, [self.zdim, self.hdim], dim=-1)
            r = F.silu(r)
            z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp(min=_MIN_Z_NORM)
        else:
            z, r = torch.split(F.silu(zr), [self.zdim, self.hdim], dim=-1)
        # queries and keys in one pass: T x B x 2 x zdim
        qk = torch.addcmul(self.beta, z.unsqueeze(-2), self.gamma)

        # attention works batch first: B x T x dim (views; the products read them strided)
        q, k, v = qk[..., 0, :].transpose(0, 1), qk[..., 1, :].transpose(0, 1), v.transpose(0, 1)
        if incremental_state is not None:
            attn, weights = self._incremental_attention(q, k, v, padding_mask, incremental_state, need_weights)
        else:
            attn, weights = self._full_attention(q, k, v, padding_mask, need_weights)

        # gate and project batch first, where attn is contiguous: B x T x C, viewed T x B x C
        gated = self.h_proj(self.hidden_dropout(attn * r.transpose(0, 1))).transpose(0, 1)
        h = self.activation(hx + gated)
        h = self.dropout(h)
        if self.update_gate:
            out = torch.addcmul(residual, torch.sigmoid(u), h - residual)  # residual + u * (h - residual)
        else:
            out = residual + h
        if not self.prenorm:
            out = self.norm(out, padding_mask, incremental_state)
        return out, weights

    # ---------------------------------------------------------------- attention
    def _full_attention(
        self, q: Tensor, k: Tensor, v: Tensor, padding_mask: Optional[Tensor], need_weights: bool
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """q, k: B x T x zdim; v: B x T x hdim; padding_mask: B x T or None.

        Returns (B x T x hdim, B x T x W weights or None)."""
        batch, length = q.size(0), q.size(1)
        key_padding_mask = padding_mask
        if self.chunked and length > self.chunk_size:
            window = self.chunk_size
            num_chunks = math.ceil(length / window)
            extra = num_chunks * window - length
            if extra > 0:
                # pad the time dim to a whole number of chunks; the added keys are masked
                q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
                if key_padding_mask is None:
                    key_padding_mask = q.new_zeros(batch, length, dtype=torch.bool)
                key_padding_mask = F.pad(key_padding_mask, (0, extra), value=True)
        else:
            window, num_chunks = length, 1
        q = q.reshape(batch * num_chunks, window, self.zdim)
        k = k.reshape(batch * num_chunks, window, self.zdim)
        v = v.reshape(batch * num_chunks, window, self.hdim)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.reshape(batch * num_chunks, window)
        output, weights = self.attention(q, k, v, self.rel_pos_bias.window_bias(window),
                                         key_padding_mask, need_weights=need_weights)
        output = output.reshape(batch, num_chunks * window, self.hdim)[:, :length]
        if not need_weights:
            return output, None
        weights = weights.reshape(batch, num_chunks * window, window)[:, :length]
        if self.chunked and window < self.chunk_size:
            weights = F.pad(weights, (0, self.chunk_size - window))
        return output, weights

    def _incremental_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        padding_mask: Optional[Tensor],
        incremental_state: IncrementalState,
        need_weights: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Causal attention of L new tokens on the cached keys of the current chunk (or of
        the whole prefix when not chunked) and on themselves.

        q, k: B x L x zdim; v: B x L x hdim; padding_mask: B x L or None.
        Returns (B x L x hdim, B x L x W weights or None)."""
        batch, new_length = q.size(0), q.size(1)
        cache = self._get_attention_cache(incremental_state)
        prev_mask: Optional[Tensor] = None  # None: no cached key is padded
        if cache is None:
            prev_key = k.new_zeros(batch, 0, self.zdim)
            prev_value = v.new_zeros(batch, 0, self.hdim)
        else:
            prev_key, prev_value, prev_mask = cache[PREV_KEY], cache[PREV_VALUE], cache[PREV_KEY_PADDING_MASK]
            assert prev_key is not None and prev_value is not None

        outputs: List[Tensor] = []
        all_weights: List[Tensor] = []
        start = 0
        while start < new_length:
            if self.chunked and prev_key.size(1) >= self.chunk_size:
                raise ValueError(
                    f"cached chunk of {prev_key.size(1)} tokens does not fit chunk_size={self.chunk_size}: "
                    "the incremental state belongs to a different layer configuration"
                )
            decoded_in_window = prev_key.size(1)
            # a block of new tokens may run past the end of the current chunk: split it there
            room = self.chunk_size - decoded_in_window if self.chunked else new_length - start
            end = start + min(room, new_length - start)
            keys = torch.cat([prev_key, k[:, start:end]], dim=1)
            values = torch.cat([prev_value, v[:, start:end]], dim=1)
            key_padding_mask = _concat_padding_masks(
                prev_mask, None if padding_mask is None else padding_mask[:, start:end], batch,
                decoded_in_window, end - start)
            # the new queries are the last of the window's keys
            query_positions = torch.arange(decoded_in_window, keys.size(1), device=q.device)
            key_positions = torch.arange(keys.size(1), device=q.device)
            bias = self.rel_pos_bias(query_positions, key_positions, largest_position=keys.size(1) - 1)
            output, weights = self.attention(q[:, start:end], keys, values, bias, key_padding_mask,
                                             need_weights=need_weights)
            outputs.append(output)
            if need_weights:
                if self.chunked:
                    weights = F.pad(weights, (0, self.chunk_size - weights.size(-1)))
                all_weights.append(weights)
            if self.chunked and keys.size(1) == self.chunk_size:
                # the chunk is complete: the next token starts a new, empty one
                keys, values, key_padding_mask = keys[:, :0], values[:, :0], None
            prev_key, prev_value, prev_mask = keys, values, key_padding_mask
            start = end

        self._set_attention_cache(incremental_state, {
            PREV_KEY: prev_key,
            PREV_VALUE: prev_value,
            PREV_KEY_PADDING_MASK: prev_mask,
        })
        output = torch.cat(outputs, dim=1)
        return output, (torch.cat(all_weights, dim=1) if need_weights else None)

    # ------------------------------------------------------- incremental state
    def _get_attention_cache(self, incremental_state: Optional[IncrementalState]) -> Optional[Dict[str, Optional[Tensor]]]:
        return self.get_incremental_state(incremental_state, ATTENTION_STATE)

    def _set_attention_cache(self, incremental_state: IncrementalState, cache: Dict[str, Optional[Tensor]]) -> None:
        self.set_incremental_state(incremental_state, ATTENTION_STATE, cache)

    @torch.jit.export
    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Reorder (or select) the batch entries of the cached keys, values and key padding
        mask. The EMA reorders its own state (fairseq calls every module's method)."""
        cache = self._get_attention_cache(incremental_state)
        if cache is None:
            return
        for name, tensor in cache.items():
            if tensor is not None:
                cache[name] = tensor.index_select(0, new_order.to(tensor.device))
        self._set_attention_cache(incremental_state, cache)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, zdim={self.zdim}, hdim={self.hdim}, ndim={self.ndim}, "
                f"attention_activation={self.attention_activation}, causal={self.causal}, "
                f"bidirectional={self.bidirectional}, chunk_size={self.chunk_size}, "
                f"truncation={self.truncation}, prenorm={self.prenorm}, ema_type={self.ema_type}, "
                f"normalized_attention={self.normalized_attention}, update_gate={self.update_gate}")

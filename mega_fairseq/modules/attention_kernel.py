"""The single-head attention of Mega's gated self- and cross-attention: scores, relative
bias, masking, normalisation, attention dropout and the weighted sum of values.

For a query i and the keys j it may see (not padded; not in the future when causal):

    softmax:         w_ij = softmax_j(q_i . k_j / sqrt(zdim) + bias_ij)
    laplace / relu2: w_ij = act(q_i . k_j / n_i + bias_ij),   n_i = number of keys i sees

and w_ij = 0 for every other key. Keys a query may not see get a score of -inf, which each
activation maps to a weight of exactly 0 with a zero gradient (exp(-inf) = 0,
erf(-inf) = -1, relu(-inf) = 0); a query that sees no key at all gets zero weights.
Scores, bias, masks and the activation compute in float32 (float64 for float64 inputs),
also with half-precision inputs or under autocast.

Keys sit at positions 0 .. Lk - 1 of their window and the Lq queries are the last Lq of
them (a whole window: Lq = Lk; a decoding step: the newest positions), which is all the
causal mask needs.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mega_fairseq.modules.activations import ATTENTION_ACTIVATIONS, check_choice, laplace, relu2
from mega_fairseq.modules.dropout import ElementDropout
from mega_fairseq.modules.precision import full_precision, upcast

# queries per block of a long causal window (see SingleHeadAttention.forward)
CAUSAL_BLOCK_SIZE = 256  # the smallest block
MAX_CAUSAL_BLOCKS = 8


class SingleHeadAttention(nn.Module):
    """Attention of N windows of queries on their keys (no parameters).

    Args:
        zdim: dimension of queries and keys (the softmax scale is zdim ** -0.5 unless
            ``scaling`` is given).
        activation: ``softmax``, ``laplace`` or ``relu2``.
        dropout: dropout on the attention weights.
        causal: a query sees only keys at its own or earlier positions.
        module_name: the name fairseq's ``--retain-dropout-modules`` knows the dropout by.
    """

    def __init__(self, zdim: int, activation: str = "softmax", dropout: float = 0.0,
                 causal: bool = False, module_name: Optional[str] = None,
                 scaling: Optional[float] = None):
        super().__init__()
        check_choice("attention_activation", activation, ATTENTION_ACTIVATIONS)
        self.activation = activation
        self.causal = causal
        self.scaling = zdim ** -0.5 if scaling is None else scaling
        self.dropout = ElementDropout(dropout, module_name=module_name or self.__class__.__name__)
        # causal windows of at least four times this many queries attend block by block
        self.causal_block_size = CAUSAL_BLOCK_SIZE

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
        """q: N x Lq x zdim; k: N x Lk x zdim; v: N x Lk x dv; bias: Lq x Lk, or N x Lq x Lk;
        key_padding_mask: N x Lk bool (True = hidden) or None.

        Returns (N x Lq x dv output, N x Lq x Lk weights before dropout, or None without
        ``need_weights``). A long causal window is split into blocks of at least
        ``causal_block_size`` queries (at most MAX_CAUSAL_BLOCKS blocks), each attending
        only to the keys up to its own end: this skips the scores, weights and dropout of
        the all-future upper blocks (close to half the work of a long window)."""
        num_queries = q.size(1)
        # at most MAX_CAUSAL_BLOCKS blocks: each block's key slice costs a pass over the keys
        # in the backward, so very many small blocks would lose what they save
        block = max(self.causal_block_size, -(-num_queries // MAX_CAUSAL_BLOCKS))
        # below four blocks the saving is too small to pay for the extra operations
        if not self.causal or self.causal_block_size <= 0 or num_queries < 4 * block:
            return self.attend_window(q, k, v, bias, key_padding_mask)
        first_query = k.size(1) - num_queries
        outputs, weights = [], []
        for start in range(0, num_queries, block):
            end = min(start + block, num_queries)
            keys_end = first_query + end  # keys beyond the block's last query are all future
            output, block_weights = self.attend_window(
                q[:, start:end], k[:, :keys_end], v[:, :keys_end], bias[..., start:end, :keys_end],
                None if key_padding_mask is None else key_padding_mask[:, :keys_end])
            outputs.append(output)
            if need_weights:
                weights.append(F.pad(block_weights, (0, k.size(1) - keys_end)))
        return torch.cat(outputs, dim=1), (torch.cat(weights, dim=1) if need_weights else None)

    def attend_window(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                      key_padding_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Every query on every key of one window (the arguments of :meth:`forward`) ->
        (N x Lq x dv output, N x Lq x Lk weights)."""
        weights = self.weights(q, k, bias, key_padding_mask).to(v.dtype)
        return torch.bmm(self.dropout(weights), v), weights

    def weights(self, q: Tensor, k: Tensor, bias: Tensor,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """The attention weights (N x Lq x Lk) in float32 (float64 for float64 inputs)."""
        with full_precision(q.device):
            return self._weights(upcast(q), upcast(k), bias, key_padding_mask)

    def _weights(self, q: Tensor, k: Tensor, bias: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
        num_queries, num_keys = q.size(1), k.size(1)
        query_positions = None  # only causal masks and counts need them
        if self.causal:
            query_positions = torch.arange(num_keys - num_queries, num_keys, device=q.device)
        # a single query (a decoding step) has no future key to hide; the future mask is
        # folded into the bias, so no N x Lq x Lk mask is ever built
        if self.causal and num_queries > 1:
            key_positions = torch.arange(num_keys, device=q.device)
            future = key_positions.unsqueeze(0) > query_positions.unsqueeze(1)  # Lq x Lk
            bias = bias.masked_fill(future, float("-inf"))
        bias = bias.to(q.dtype)
        if bias.dim() == 2:
            bias = bias.unsqueeze(0)
        visible: object = None
        if self.activation != "softmax" or key_padding_mask is not None:
            visible = self._visible_key_counts(query_positions, num_keys, key_padding_mask)
        if self.activation == "softmax":
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.scaling)
        elif isinstance(visible, int):
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1.0 / max(visible, 1))
        else:
            # n: the number of keys each query may see (at least 1 to keep hidden queries finite)
            scores = torch.bmm(q, k.transpose(1, 2)).div_(visible.clamp(min=1).to(q.dtype)).add_(bias)
        if key_padding_mask is not None:
            scores = scores.masked_fill_(key_padding_mask.unsqueeze(1), float("-inf"))
        if self.activation != "softmax":
            return laplace(scores) if self.activation == "laplace" else relu2(scores)
        if key_padding_mask is None:
            return F.softmax(scores, dim=-1)
        # only padding hides every key of a query: finite scores there, then zero weights
        no_visible_key = visible == 0  # N x Lq x 1 (or N x 1 x 1)
        scores = scores.masked_fill_(no_visible_key, 0.0)
        return F.softmax(scores, dim=-1).masked_fill(no_visible_key, 0.0)

    def _visible_key_counts(self, query_positions: Optional[Tensor], num_keys: int,
                            key_padding_mask: Optional[Tensor]):
        """How many keys each query may see: an int when it is the same for all (no padding,
        not causal), else a tensor broadcastable to N x Lq x 1 (Lq x 1 without padding);
        ``query_positions`` (Lq) is given for causal attention."""
        if key_padding_mask is None:
            if not self.causal:
                return num_keys
            # keys are at positions 0 .. Lk - 1: query i sees keys 0 .. i
            return (query_positions + 1).clamp(max=num_keys).unsqueeze(-1)
        real_keys = (~key_padding_mask).to(torch.long)  # N x Lk
        if not self.causal:
            return real_keys.sum(dim=-1).view(-1, 1, 1)
        seen_up_to = real_keys.cumsum(dim=-1)  # N x Lk: real keys at positions <= j
        return seen_up_to.index_select(1, query_positions).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"activation={self.activation}, causal={self.causal}"

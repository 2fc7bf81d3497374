"""An independent float64 forward of whole Mega models, written from the Mega paper's
formulas (Ma et al. 2022, arXiv 2209.10655) and the meaning of the models' options.

Nothing here calls mega_fairseq code: the functions read only the models' parameters (a
state dict, by name) and a plain dict of the options the model was built with, and work on
one sequence at a time (T x C tensors, no batch, no padding). A padded batch of the product
must give, at its real positions, what these functions give for each sequence alone.

Pieces and the formulas they implement:

* embeddings: ``scale * E[tokens]`` with scale sqrt(C) unless ``no_scale_embedding``, plus
  token-type embeddings when present, then the optional embedding norm (no positional
  embeddings: positions enter only through the relative attention bias);
* EMA (per channel d and EMA dimension n, p = sigmoid(delta), a = sigmoid(alpha)):
  h_t = (1 - p a) h_{t-1} + p beta x_t,  y_t = sum_n gamma / sqrt(N) h_t,  computed as an
  explicit time-step loop; bidirectional EMAs add the same recurrence run from the last
  step backwards with the second half of the parameter rows; a truncated EMA is an explicit
  convolution with the kernel k[s] = sum_n gamma / sqrt(N) p beta (1 - p a)^s, s < W;
  the sublayer uses silu(y + omega x);
* gated attention: v = act(W_v x), [u, z, r, hx] = W_mx EMA(x) split by rows (C, zdim,
  hdim, C), u = sigmoid, z = r = silu, q/k = z * kappa + mu; attention weights per query
  over the keys it may see (same chunk when chunked, not later when causal):
  softmax(q.k / sqrt(zdim) + bias) or f(q.k / n + bias) with f laplace or relu^2 and n the
  number of keys the query sees; h = act(hx + W_h((A v) * r)); out = u h + (1 - u) x;
* relative bias: simple, a table value per offset j - i (the table's middle entry is
  offset 0); rotary, Re[(a1 + i a2)(b1 - i b2) exp(i theta_k (i - j))] summed over k with
  theta_k = 10000^(-k / (zdim / 2)) and a, b the learned vectors' halves;
* gated cross-attention: [u, r, q] = W_q x (rows C, C, zdim), u = sigmoid, r = silu,
  k = W_k enc, v = act(W_v enc), weights of every target position on every source position
  (relative positions counted from each sequence's first token), h = act(W_h((A v) * r)),
  out = u h + (1 - u) x;
* normalized FFN: x + W_2 act(W_1 x);
* each sublayer normalises its input (pre-norm) or its output (post-norm); pre-norm stacks
  end with a final norm; layernorm, rmsnorm x / sqrt(mean x^2 + eps) w, scalenorm (one
  scalar), batchnorm with the running statistics (eval mode);
* outputs: logits x W_out^T (W_out the token embeddings when tied), log-softmax; the
  masked-LM head LayerNorm(act(W x + b)) E^T + bias; the classification head
  W_2 tanh(W_1 pooled + b_1) + b_2 over the first token's state (cls) or the mean state.
"""

import math
from typing import Dict, Optional

import torch
from torch import Tensor

EPS = 1e-5  # every norm of the models uses this epsilon

# laplace attention function (Mega paper): Gaussian CDF with mean sqrt(1/2), std sqrt(1/(4 pi))
LAPLACE_MEAN = math.sqrt(0.5)
LAPLACE_STD = math.sqrt(1.0 / (4.0 * math.pi))


# --------------------------------------------------------------------------- elementwise
def sigmoid(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-x))


def activation(name: str, x: Tensor) -> Tensor:
    if name == "silu":
        return x * sigmoid(x)
    if name == "relu":
        return torch.where(x > 0, x, torch.zeros_like(x))
    if name == "linear":
        return x
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "gelu_accurate":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "tanh":
        return torch.tanh(x)
    raise ValueError(f"unknown activation {name}")


def linear(x: Tensor, params: Dict[str, Tensor], prefix: str, bias: bool = True) -> Tensor:
    y = x @ params[prefix + ".weight"].T
    return y + params[prefix + ".bias"] if bias else y


def log_softmax(x: Tensor) -> Tensor:
    shifted = x - x.max(dim=-1, keepdim=True).values
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


# --------------------------------------------------------------------------------- norms
def norm(x: Tensor, params: Dict[str, Tensor], prefix: str, norm_type: str) -> Tensor:
    """x: T x C. ``prefix`` names the norm module; its parameters (if affine) live under
    ``prefix + '.norm.'`` (SequenceNorm wraps the actual norm as ``.norm``)."""
    weight = params.get(prefix + ".norm.weight")
    bias = params.get(prefix + ".norm.bias")
    if norm_type == "layernorm":
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        y = (x - mean) / torch.sqrt(var + EPS)
        if weight is not None:
            y = y * weight + bias
        return y
    if norm_type in ("rmsnorm", "scalenorm"):
        y = x / torch.sqrt((x ** 2).mean(dim=-1, keepdim=True) + EPS)
        if weight is not None:
            if norm_type == "scalenorm":
                assert weight.numel() == 1
            else:
                assert weight.numel() == x.size(-1)
            y = y * weight
        return y
    if norm_type in ("batchnorm", "syncbatchnorm"):
        mean = params[prefix + ".norm.running_mean"]
        var = params[prefix + ".norm.running_var"]
        y = (x - mean) / torch.sqrt(var + EPS)
        if weight is not None:
            y = y * weight + bias
        return y
    raise ValueError(f"unknown norm {norm_type}")


# ----------------------------------------------------------------------------------- EMA
def ema(x: Tensor, params: Dict[str, Tensor], prefix: str, bidirectional: bool,
        truncation: Optional[int]) -> Tensor:
    """silu(EMA(x) + omega * x) for x: T x C, from the parameters under ``prefix``."""
    length, channels = x.shape
    delta = params[prefix + ".delta"].squeeze(-1)  # D' x N
    alpha = params[prefix + ".alpha"].squeeze(-1)
    beta = params[prefix + ".beta"].squeeze(-1)
    gamma = params[prefix + ".gamma"]
    omega = params[prefix + ".omega"]
    rows, ndim = gamma.shape
    assert rows == (2 * channels if bidirectional else channels)
    p = sigmoid(delta)
    decay = 1.0 - p * sigmoid(alpha)
    in_weight = p * beta
    out_weight = gamma / math.sqrt(ndim)

    def one_direction(signal: Tensor, rows_slice: slice) -> Tensor:
        """signal: T x C in the order the recurrence runs -> T x C outputs in that order."""
        q, b, g = decay[rows_slice], in_weight[rows_slice], out_weight[rows_slice]  # C x N
        if truncation is None or truncation >= length:
            state = torch.zeros(channels, ndim, dtype=x.dtype)
            outputs = []
            for t in range(length):
                state = q * state + b * signal[t].unsqueeze(-1)
                outputs.append((g * state).sum(-1))
            return torch.stack(outputs)
        # truncated: only lags 0 .. W-1 of the kernel
        lags = torch.arange(truncation, dtype=x.dtype)
        kernel = (g * b).unsqueeze(-1) * q.unsqueeze(-1) ** lags  # C x N x W
        kernel = kernel.sum(1)  # C x W
        out = torch.zeros(length, channels, dtype=x.dtype)
        for t in range(length):
            for s in range(min(truncation, t + 1)):
                out[t] += kernel[:, s] * signal[t - s]
        return out

    y = one_direction(x, slice(0, channels))
    if bidirectional:
        y = y + one_direction(x.flip(0), slice(channels, 2 * channels)).flip(0)
    return activation("silu", y + omega * x)


# ------------------------------------------------------------------------ relative bias
def relative_bias(params: Dict[str, Tensor], prefix: str, kind: str, query_positions: Tensor,
                  key_positions: Tensor) -> Tensor:
    """Lq x Lk bias for integer positions."""
    offsets = key_positions.unsqueeze(0) - query_positions.unsqueeze(1)
    if kind == "simple":
        table = params[prefix + ".rel_pos_bias"]
        middle = (table.numel() - 1) // 2  # offset 0
        assert int(offsets.abs().max()) <= middle
        return table[middle + offsets]
    a, b = params[prefix + ".alpha"], params[prefix + ".beta"]
    half = a.numel() // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=a.dtype) / half)
    a_complex = torch.complex(a[:half], a[half:])
    b_complex = torch.complex(b[:half], b[half:])
    angle = (-offsets).to(a.dtype).unsqueeze(-1) * theta  # (i - j) theta_k
    rotation = torch.complex(torch.cos(angle), torch.sin(angle))
    return (a_complex * b_complex.conj() * rotation).real.sum(-1)


def attention_weights(scores_raw: Tensor, bias: Tensor, allowed: Tensor, kind: str,
                      zdim: int) -> Tensor:
    """Weights from raw q.k products (Lq x Lk), the bias and a bool mask of allowed keys."""
    weights = torch.zeros_like(scores_raw)
    for i in range(scores_raw.size(0)):
        keys = allowed[i].nonzero().flatten()
        if keys.numel() == 0:
            continue
        if kind == "softmax":
            s = scores_raw[i, keys] / math.sqrt(zdim) + bias[i, keys]
            e = torch.exp(s - s.max())
            weights[i, keys] = e / e.sum()
        else:
            s = scores_raw[i, keys] / keys.numel() + bias[i, keys]
            if kind == "laplace":
                weights[i, keys] = 0.5 * (1.0 + torch.erf((s - LAPLACE_MEAN) / (LAPLACE_STD * math.sqrt(2.0))))
            elif kind == "relu2":
                weights[i, keys] = torch.clamp(s, min=0.0) ** 2
            else:
                raise ValueError(kind)
    return weights


# ------------------------------------------------------------------------------- blocks
def gated_attention(x: Tensor, params: Dict[str, Tensor], prefix: str, opts: Dict,
                    causal: bool, chunk_size: Optional[int]) -> Tensor:
    channels = x.size(-1)
    zdim = params[prefix + ".gamma"].size(1)
    hdim = params[prefix + ".v_proj.weight"].size(0)
    act = opts["activation_fn"]
    residual = x
    if opts["normalize_before"]:
        x = norm(x, params, prefix + ".norm", opts["normalization_type"])
    v = activation(act, linear(x, params, prefix + ".v_proj"))
    mx = ema(x, params, prefix + ".ema", bidirectional=not causal, truncation=opts.get("truncation_length"))
    projected = linear(mx, params, prefix + ".mx_proj")
    assert projected.size(-1) == 2 * channels + zdim + hdim
    u = sigmoid(projected[:, :channels])
    z = activation("silu", projected[:, channels:channels + zdim])
    r = activation("silu", projected[:, channels + zdim:channels + zdim + hdim])
    hx = projected[:, channels + zdim + hdim:]
    kappa, mu = params[prefix + ".gamma"], params[prefix + ".beta"]
    q = z * kappa[0] + mu[0]
    k = z * kappa[1] + mu[1]

    length = x.size(0)
    positions = torch.arange(length)
    if chunk_size is not None and chunk_size > 0:
        chunk_of = positions // chunk_size
        window_positions = positions % chunk_size
        allowed = chunk_of.unsqueeze(1) == chunk_of.unsqueeze(0)
    else:
        window_positions = positions
        allowed = torch.ones(length, length, dtype=torch.bool)
    if causal:
        allowed &= positions.unsqueeze(0) <= positions.unsqueeze(1)
    bias = relative_bias(params, prefix + ".rel_pos_bias", opts["rel_pos_bias"],
                         window_positions, window_positions)
    weights = attention_weights(q @ k.T, bias, allowed, opts["attention_activation_fn"], zdim)
    attended = weights @ v
    h = activation(act, hx + linear(attended * r, params, prefix + ".h_proj"))
    out = u * h + (1.0 - u) * residual
    if not opts["normalize_before"]:
        out = norm(out, params, prefix + ".norm", opts["normalization_type"])
    return out


def cross_attention(x: Tensor, enc: Tensor, params: Dict[str, Tensor], prefix: str,
                    opts: Dict) -> Tensor:
    channels = x.size(-1)
    zdim = params[prefix + ".k_proj.weight"].size(0)
    act = opts["activation_fn"]
    residual = x
    if opts["normalize_before"]:
        x = norm(x, params, prefix + ".norm", opts["normalization_type"])
    projected = linear(x, params, prefix + ".q_proj")
    assert projected.size(-1) == 2 * channels + zdim
    u = sigmoid(projected[:, :channels])
    r = activation("silu", projected[:, channels:2 * channels])
    q = projected[:, 2 * channels:]
    k = linear(enc, params, prefix + ".k_proj")
    v = activation(act, linear(enc, params, prefix + ".v_proj"))
    bias = relative_bias(params, prefix + ".rel_pos_bias", opts["rel_pos_bias"],
                         torch.arange(x.size(0)), torch.arange(enc.size(0)))
    allowed = torch.ones(x.size(0), enc.size(0), dtype=torch.bool)
    weights = attention_weights(q @ k.T, bias, allowed, opts["attention_activation_fn"], zdim)
    h = activation(act, linear((weights @ v) * r, params, prefix + ".h_proj"))
    out = u * h + (1.0 - u) * residual
    if not opts["normalize_before"]:
        out = norm(out, params, prefix + ".norm", opts["normalization_type"])
    return out


def ffn(x: Tensor, params: Dict[str, Tensor], prefix: str, opts: Dict) -> Tensor:
    residual = x
    if opts["normalize_before"]:
        x = norm(x, params, prefix + ".norm", opts["normalization_type"])
    out = residual + linear(activation(opts["activation_fn"], linear(x, params, prefix + ".fc1")),
                            params, prefix + ".fc2")
    if not opts["normalize_before"]:
        out = norm(out, params, prefix + ".norm", opts["normalization_type"])
    return out


# ------------------------------------------------------------------------------- stacks
def _chunk(opts: Dict, side: str) -> Optional[int]:
    chunk = opts.get(f"{side}_chunk_size", -1)
    return chunk if chunk is not None and chunk > 0 else None


def embed(tokens: Tensor, params: Dict[str, Tensor], prefix: str, opts: Dict,
          token_types: Optional[Tensor] = None) -> Tensor:
    """Scaled token embeddings (+ token types) and the optional embedding norm: T x C."""
    table = params[prefix + ".embed_tokens.weight"]
    x = table[tokens]
    if token_types is not None:
        x = x + params[prefix + ".embed_token_types.weight"][token_types]
    if not opts.get("no_scale_embedding", False):
        x = x * math.sqrt(table.size(1))
    if opts.get("normalize_embedding", False):
        x = norm(x, params, prefix + ".embedding_norm", opts["normalization_type"])
    return x


def stack(x: Tensor, params: Dict[str, Tensor], prefix: str, opts: Dict, side: str,
          causal: bool, enc: Optional[Tensor] = None) -> Tensor:
    """The blocks of ``prefix`` (an encoder or decoder) and the final norm of pre-norm
    stacks: T x C -> T x C."""
    for i in range(opts[f"{side}_layers"]):
        layer = f"{prefix}.layers.{i}"
        x = gated_attention(x, params, layer + ".self_attn", opts, causal, _chunk(opts, side))
        if enc is not None:
            x = cross_attention(x, enc, params, layer + ".cross_attn", opts)
        x = ffn(x, params, layer + ".ffn", opts)
    assert f"{prefix}.layers.{opts[f'{side}_layers']}.ffn.fc1.weight" not in params
    if opts["normalize_before"]:
        x = norm(x, params, prefix + ".final_norm", opts["normalization_type"])
        has_affine = prefix + ".final_norm.norm.weight" in params
        assert has_affine == (not opts.get("no_affine_final_norm", False))
    else:
        assert not any(k.startswith(prefix + ".final_norm.") for k in params)
    return x


def _decoder_logits(x: Tensor, params: Dict[str, Tensor], prefix: str, tied: bool) -> Tensor:
    weight = params[prefix + (".embed_tokens.weight" if tied else ".output_projection.weight")]
    return x @ weight.T


def language_model(tokens: Tensor, params: Dict[str, Tensor], opts: Dict) -> Dict[str, Tensor]:
    """``mega_lm`` over one unpadded sequence (1-D tokens): features, logits, log-probs."""
    x = embed(tokens, params, "decoder", opts)
    features = stack(x, params, "decoder", opts, "decoder", causal=True)
    logits = _decoder_logits(features, params, "decoder", opts.get("share_decoder_input_output_embed", False))
    return {"features": features, "logits": logits, "log_probs": log_softmax(logits)}


def encoder(tokens: Tensor, params: Dict[str, Tensor], opts: Dict, prefix: str = "encoder",
            token_types: Optional[Tensor] = None) -> Tensor:
    """A bidirectional Mega encoder over one unpadded sequence: T x C."""
    x = embed(tokens, params, prefix, opts, token_types)
    return stack(x, params, prefix, opts, "encoder", causal=False)


def translation_model(src_tokens: Tensor, prev_output_tokens: Tensor, params: Dict[str, Tensor],
                      opts: Dict) -> Dict[str, Tensor]:
    """``mega`` over one unpadded source and target prefix (1-D tokens)."""
    enc = encoder(src_tokens, params, opts)
    x = embed(prev_output_tokens, params, "decoder", opts)
    features = stack(x, params, "decoder", opts, "decoder", causal=True, enc=enc)
    tied = opts.get("share_decoder_input_output_embed", False) or opts.get("share_all_embeddings", False)
    logits = _decoder_logits(features, params, "decoder", tied)
    if opts.get("share_all_embeddings", False):
        assert torch.equal(params["encoder.embed_tokens.weight"], params["decoder.embed_tokens.weight"])
    return {"encoder_out": enc, "logits": logits, "log_probs": log_softmax(logits)}


def encoder_model(tokens: Tensor, params: Dict[str, Tensor], opts: Dict,
                  head: Optional[str] = None, token_types: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """``mega_encoder`` over one unpadded sequence: features, masked-LM logits and (with
    ``head``) the classification head's logits."""
    features = encoder(tokens, params, opts, "encoder", token_types)
    hidden = linear(features, params, "lm_head.dense")
    hidden = activation(opts["activation_fn"], hidden)
    mean = hidden.mean(-1, keepdim=True)
    var = ((hidden - mean) ** 2).mean(-1, keepdim=True)
    hidden = (hidden - mean) / torch.sqrt(var + EPS) * params["lm_head.layer_norm.weight"] \
        + params["lm_head.layer_norm.bias"]
    out_weight = params["lm_head.weight" if opts.get("untie_lm_head", False) else "encoder.embed_tokens.weight"]
    result = {"features": features, "lm_logits": hidden @ out_weight.T + params["lm_head.bias"]}
    if head is not None:
        pooled = features[0] if opts.get("sentence_rep", "cls") == "cls" else features.mean(0)
        prefix = f"classification_heads.{head}"
        inner = activation(opts.get("pooler_activation_fn", "tanh"), linear(pooled, params, prefix + ".dense"))
        result["class_logits"] = linear(inner, params, prefix + ".out_proj")
    return result

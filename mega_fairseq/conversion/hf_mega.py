"""Weight mapping between the Hugging Face port of Mega (``transformers==4.40.2``,
``transformers.models.mega.modeling_mega.MegaBlock``) and :class:`MegaLayer`.

Used to compare both implementations on identical weights (equivalence tests, speed
benchmarks) and as the basis of a checkpoint importer. ``transformers`` is imported only
by :func:`build_hf_block`; the state-dict functions need nothing but torch.

State-dict names (HF ``MegaBlock`` -> ``MegaLayer``)::

    mega_layer.ema_gate.damping_factor            self_attn.ema.delta        D' x N x 1
    mega_layer.ema_gate.decay_factor              self_attn.ema.alpha        D' x N x 1
    mega_layer.ema_gate.ema_expansion_matrix      self_attn.ema.beta         D' x N x 1
    mega_layer.ema_gate.kernel_projection_matrix  self_attn.ema.gamma        D' x N
    mega_layer.ema_gate.residual_weight           self_attn.ema.omega        C
    mega_layer.qk_weight                          self_attn.gamma            2 x zdim
    mega_layer.qk_bias                            self_attn.beta             2 x zdim
    mega_layer.{v,mx,h}_proj.{weight,bias}        self_attn.{v,mx,h}_proj.{weight,bias}
    mega_layer.rel_pos_bias.rel_pos_bias          self_attn.rel_pos_bias.rel_pos_bias
                                                  (2 max_positions - 1; same orientation:
                                                  entry max_positions - 1 + key - query)
    mega_layer.rel_pos_bias.alpha     1 x zdim    self_attn.rel_pos_bias.alpha   zdim
    mega_layer.rel_pos_bias.b_param   1 x zdim    self_attn.rel_pos_bias.beta    zdim
    mega_layer.rel_pos_bias._float_tensor         (dropped; a dtype carrier, recreated as
                                                  zeros(1) in the other direction)
    mega_layer.norm.norm.<name>                   self_attn.norm.norm.<name>
    nffn.norm.norm.<name>                         ffn.norm.norm.<name>
        <name>: weight, bias (layernorm, rmsnorm, batchnorm); running_mean, running_var,
        num_batches_tracked (batchnorm); scale norm's ``scalar`` (1) <-> ``weight`` (1)
    nffn.fc1.{weight,bias}, nffn.fc2.{weight,bias}  ffn.fc1.*, ffn.fc2.*

D' is 2C for a bidirectional EMA (rows C..2C-1: the backward direction), else C. The
EMA recurrences agree: p = sigmoid(delta), q = 1 - p sigmoid(alpha), kernel
gamma / sqrt(N) * p * beta * q^t in both.

Known defects of the port and what this helper does about them:

1. ``rmsnorm`` does not normalise (``MegaRMSNorm`` discards ``x * rsqrt(ms + eps)`` and
   returns ``x * weight``). :func:`hf_config_kwargs` refuses ``norm_type='rmsnorm'``
   unless ``allow_known_defects=True`` (e.g. for timing only).
2. Incremental decoding: laplace/relu2 single-token steps and chunked decoding compute
   wrong results. Nothing here uses the port's incremental decoding: :func:`run_hf_block`
   runs full-sequence forwards only (``use_cache=False``).
3. The simple relative bias of a chunked layer has 2 max_positions - 1 entries but is
   read around entry chunk_size - 1 (instead of max_positions - 1).
   :func:`hf_config_kwargs` refuses ``rel_pos_bias='simple'`` with chunking unless
   ``max_positions == chunk_size`` (which is what the model options build).
4. ``MegaBlock`` does not build the causal mask (``MegaModel`` does, and for a chunked
   decoder builds a chunk_size x chunk_size mask even for shorter inputs, which then
   fails). :func:`run_hf_block` builds a min(T, chunk_size) square mask itself.
5. Chunked attention needs T <= chunk_size or T a multiple of chunk_size (ours pads the
   last chunk). :func:`run_hf_block` raises ``ValueError`` for other lengths.
6. Float64 blocks are only float32-accurate (differences of order 1e-7): the EMA
   convolution always runs in float32 (``fft_convolution`` calls ``.float()``) and the
   rotary sin/cos tables are computed in float32. Left as is.
7. The laplace attention function uses mu = 0.707107 and sigma = 0.282095 (sqrt(1/2) and
   sqrt(1/(4 pi)) rounded to six digits): differences of order 1e-7. Left as is.
8. In eval mode the EMA kernel is cached on the module and never invalidated: it goes
   stale when weights change in place, and a kernel cached with autograd on cannot be
   backpropagated through twice. :func:`run_hf_block` drops the cache before and after
   every call with autograd enabled; after changing the weights of an eval-mode block
   otherwise, call :func:`reset_hf_ema_cache`.
9. Training mode differs (equality holds in eval mode only): the port's batch norm
   statistics include padded positions, its hidden dropout drops the values v instead
   of attn * r, and its feature dropout goes through ``dropout2d`` on 3-D tensors.
   Left as is.
10. Padding. Outputs at padded positions differ (the port adds omega * x of the
    unmasked input to the EMA output there); both call them meaningless, and outputs at
    real positions agree for right padding. Left padding of causal layers differs: with
    softmax the port's padded queries see only masked keys and give NaN, which the next
    block's EMA (input * mask) spreads to every later token; with laplace/relu2 the port
    divides by position + 1, counting padded keys. Left as is (use right padding).
11. Cross-attention blocks (``add_cross_attention``) are not mapped:
    :func:`hf_config_kwargs` refuses ``cross_attention=True``.
12. ``MegaModel`` cannot be built with non-affine layer norms (its weight initialiser
    zeroes ``LayerNorm.bias``, which is then None). :func:`build_hf_block` builds the
    model with affine norms and swaps in the port's own non-affine ``MegaSequenceNorm``.
"""

from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from mega_fairseq.modules.length_options import optional_length
from mega_fairseq.modules.mega_layer import MegaLayer, MegaLayerSettings

TRANSFORMERS_REQUIREMENT = "transformers==4.40.2"

# ----------------------------------------------------------------------- names
_HF_ATTENTION, _OUR_ATTENTION = "mega_layer.", "self_attn."
_HF_FFN, _OUR_FFN = "nffn.", "ffn."

# parameters every block has: HF name -> our name
_CORE_NAMES: Dict[str, str] = {
    "mega_layer.ema_gate.damping_factor": "self_attn.ema.delta",
    "mega_layer.ema_gate.decay_factor": "self_attn.ema.alpha",
    "mega_layer.ema_gate.ema_expansion_matrix": "self_attn.ema.beta",
    "mega_layer.ema_gate.kernel_projection_matrix": "self_attn.ema.gamma",
    "mega_layer.ema_gate.residual_weight": "self_attn.ema.omega",
    "mega_layer.qk_weight": "self_attn.gamma",
    "mega_layer.qk_bias": "self_attn.beta",
    **{
        f"{hf_prefix}{linear}.{kind}": f"{our_prefix}{linear}.{kind}"
        for hf_prefix, our_prefix, linears in (
            (_HF_ATTENTION, _OUR_ATTENTION, ("v_proj", "mx_proj", "h_proj")),
            (_HF_FFN, _OUR_FFN, ("fc1", "fc2")),
        )
        for linear in linears
        for kind in ("weight", "bias")
    },
}
_SIMPLE_BIAS_NAMES: Dict[str, str] = {
    "mega_layer.rel_pos_bias.rel_pos_bias": "self_attn.rel_pos_bias.rel_pos_bias",
}
# rotary bias vectors: 1 x zdim in the port, zdim here
_ROTARY_BIAS_NAMES: Dict[str, str] = {
    "mega_layer.rel_pos_bias.alpha": "self_attn.rel_pos_bias.alpha",
    "mega_layer.rel_pos_bias.b_param": "self_attn.rel_pos_bias.beta",
}
_HF_ROTARY_DTYPE_BUFFER = "mega_layer.rel_pos_bias._float_tensor"

# normalisation layers: (HF prefix, our prefix) of the two sublayers
_NORM_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("mega_layer.norm.norm.", "self_attn.norm.norm."),
    ("nffn.norm.norm.", "ffn.norm.norm."),
)
_HF_SCALE_NORM_WEIGHT = "scalar"
_BATCH_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_SHARED_NORM_NAMES = ("weight", "bias") + _BATCH_NORM_BUFFERS
# the names a norm may own, by norm type and affinity (our side; the port's scale norm
# owns "scalar" instead of "weight")
_VALID_NORM_NAME_SETS: Tuple[frozenset, ...] = (
    frozenset(),  # not affine: layernorm, scalenorm, rmsnorm
    frozenset({"weight", "bias"}),  # layernorm
    frozenset({"weight"}),  # scalenorm (1 element), rmsnorm (C elements)
    frozenset(_BATCH_NORM_BUFFERS),  # batchnorm, not affine
    frozenset({"weight", "bias"} | set(_BATCH_NORM_BUFFERS)),  # batchnorm
)


# -------------------------------------------------------------------- config
def _refusals(settings: MegaLayerSettings, allow_known_defects: bool) -> List[str]:
    """Why the port cannot reproduce ``MegaLayer(settings)`` (empty list: it can)."""
    s = settings
    chunk = optional_length("chunk_size", s.chunk_size)
    reasons = []
    if s.cross_attention:
        reasons.append("cross_attention=True: cross-attention blocks are not mapped")
    if s.rel_pos_bias == "simple" and chunk is not None and s.max_positions != chunk:
        reasons.append(
            f"rel_pos_bias='simple' with chunk_size={chunk} needs max_positions == chunk_size "
            f"(got {s.max_positions}): the port reads its bias table around entry chunk_size - 1"
        )
    if s.rel_pos_bias == "rotary" and s.embed_dim % 2 != 0:
        reasons.append(f"rel_pos_bias='rotary' needs an even embed_dim in the port, got {s.embed_dim}")
    if s.norm_type == "rmsnorm" and not allow_known_defects:
        reasons.append(
            "norm_type='rmsnorm': the port's MegaRMSNorm does not normalise "
            "(pass allow_known_defects=True to build it anyway, e.g. for timing)"
        )
    return reasons


def hf_config_kwargs(settings: MegaLayerSettings, vocab_size: int = 16,
                     allow_known_defects: bool = False) -> dict:
    """Keyword arguments of ``transformers.MegaConfig`` for a one-layer model whose block
    is configured like ``MegaLayer(settings)``.

    Raises ``ValueError`` naming the setting when the port cannot compute the same
    function (cross-attention; a chunked simple bias with max_positions != chunk_size;
    rotary bias with an odd embed_dim) or, unless ``allow_known_defects``, computes it
    wrongly (rmsnorm).
    """
    reasons = _refusals(settings, allow_known_defects)
    if reasons:
        raise ValueError("the Hugging Face Mega port cannot express these settings: " + "; ".join(reasons))
    s = settings
    chunk = optional_length("chunk_size", s.chunk_size)
    bidirectional = (not s.causal) if s.bidirectional is None else bool(s.bidirectional)
    return dict(
        vocab_size=vocab_size,
        num_hidden_layers=1,
        hidden_size=s.embed_dim,
        intermediate_size=s.hdim,
        shared_representation_size=s.zdim,
        ema_projection_size=s.ndim,
        nffn_hidden_size=s.ffn_hidden_dim,
        bidirectional=bidirectional,
        is_decoder=s.causal,
        add_cross_attention=False,
        use_chunking=chunk is not None,
        chunk_size=-1 if chunk is None else chunk,
        truncation=s.truncation,
        normalize_before_mega=s.prenorm,
        normalize_before_ffn=s.prenorm,
        normalization_type=s.norm_type,
        norm_affine=s.norm_affine,
        activation=s.activation,
        attention_activation=s.attention_activation,
        relative_positional_bias=s.rel_pos_bias,
        max_positions=s.max_positions,
        dropout_prob=s.dropout,
        attention_probs_dropout_prob=s.attention_dropout,
        hidden_dropout_prob=s.hidden_dropout,
        nffn_activation_dropout_prob=s.activation_dropout,
        use_feature_dropout=s.feature_dropout,
        use_normalized_ffn=True,
        add_token_type_embeddings=False,
    )


# --------------------------------------------------------------- state dicts
def _raise_for_bad_keys(direction: str, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    missing, unexpected = sorted(set(missing)), sorted(set(unexpected))
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {missing}")
    if unexpected:
        parts.append(f"unexpected keys: {unexpected}")
    raise ValueError(f"cannot map {direction} state dict; " + "; ".join(parts))


def _relative_bias_names(present: Set[str], simple: Iterable[str], rotary: Iterable[str]) -> Tuple[Set[str], Set[str]]:
    """(missing, unexpected) names of the relative bias: exactly one kind, complete."""
    simple, rotary = set(simple), set(rotary)
    has_simple, has_rotary = bool(present & simple), bool(present & rotary)
    if has_simple and has_rotary:
        return set(), present & rotary
    if has_rotary:
        return rotary - present, set()
    return simple - present, set()


def _norm_names(state_names: Set[str], prefixes: Iterable[str], scale_name: str) -> Tuple[Set[str], Set[str]]:
    """(missing, unexpected) names of the two sublayer norms. Both must own the same
    names, and those must form a valid set for some norm type."""
    owned = [{name[len(prefix):] for name in state_names if name.startswith(prefix)} for prefix in prefixes]
    missing: Set[str] = set()
    unexpected: Set[str] = set()
    union = set().union(*owned)
    for prefix, names in zip(prefixes, owned):
        missing |= {prefix + name for name in union - names}
    canonical = {"weight" if name == scale_name else name for name in union}
    scale_norm_with_others = scale_name in union and len(union) > 1
    if not missing and (scale_norm_with_others or frozenset(canonical) not in _VALID_NORM_NAME_SETS):
        unexpected |= {prefix + name for prefix in prefixes for name in union}
    return missing, unexpected


def _is_norm_key(key: str, prefixes: Iterable[str], names: Iterable[str]) -> bool:
    return any(key.startswith(prefix) and key[len(prefix):] in names for prefix in prefixes)


def _hf_key_problems(present: Set[str]) -> Tuple[Set[str], Set[str]]:
    """(missing, unexpected) keys of a Hugging Face MegaBlock state dict."""
    hf_prefixes = [hf for hf, _ in _NORM_PREFIXES]
    known = set(_CORE_NAMES) | set(_SIMPLE_BIAS_NAMES) | set(_ROTARY_BIAS_NAMES)
    if present & set(_ROTARY_BIAS_NAMES):
        known.add(_HF_ROTARY_DTYPE_BUFFER)
    norm_names = _SHARED_NORM_NAMES + (_HF_SCALE_NORM_WEIGHT,)
    unexpected = {key for key in present if key not in known and not _is_norm_key(key, hf_prefixes, norm_names)}
    bias_missing, bias_unexpected = _relative_bias_names(present, _SIMPLE_BIAS_NAMES, _ROTARY_BIAS_NAMES)
    norm_missing, norm_unexpected = _norm_names(present - unexpected, hf_prefixes, _HF_SCALE_NORM_WEIGHT)
    missing = (set(_CORE_NAMES) - present) | bias_missing | norm_missing
    return missing, unexpected | bias_unexpected | norm_unexpected


def _our_key_problems(present: Set[str]) -> Tuple[Set[str], Set[str]]:
    """(missing, unexpected) keys of a MegaLayer state dict."""
    our_prefixes = [ours for _, ours in _NORM_PREFIXES]
    known = set(_CORE_NAMES.values()) | set(_SIMPLE_BIAS_NAMES.values()) | set(_ROTARY_BIAS_NAMES.values())
    unexpected = {key for key in present
                  if key not in known and not _is_norm_key(key, our_prefixes, _SHARED_NORM_NAMES)}
    bias_missing, bias_unexpected = _relative_bias_names(
        present, _SIMPLE_BIAS_NAMES.values(), _ROTARY_BIAS_NAMES.values())
    norm_missing, norm_unexpected = _norm_names(present - unexpected, our_prefixes, _HF_SCALE_NORM_WEIGHT)
    missing = (set(_CORE_NAMES.values()) - present) | bias_missing | norm_missing
    return missing, unexpected | bias_unexpected | norm_unexpected


def hf_block_state_to_mega_layer_state(hf_state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """State dict of a Hugging Face ``MegaBlock`` (without cross-attention) -> state dict
    of the equivalent :class:`MegaLayer`: names changed, the rotary bias vectors reshaped
    from 1 x zdim to zdim, the rotary dtype buffer dropped. Tensors are not copied.

    Raises ``ValueError`` listing missing and unexpected keys.
    """
    _raise_for_bad_keys("Hugging Face MegaBlock", *_hf_key_problems(set(hf_state)))
    renames = {**_CORE_NAMES, **_SIMPLE_BIAS_NAMES}
    ours: Dict[str, Tensor] = {}
    for key, value in hf_state.items():
        if key == _HF_ROTARY_DTYPE_BUFFER:
            continue
        if key in _ROTARY_BIAS_NAMES:
            ours[_ROTARY_BIAS_NAMES[key]] = value.reshape(-1)  # 1 x zdim -> zdim
        elif key in renames:
            ours[renames[key]] = value
        else:
            ours[_our_norm_key(key)] = value
    return ours


def _our_norm_key(hf_key: str) -> str:
    for hf_prefix, our_prefix in _NORM_PREFIXES:
        if hf_key.startswith(hf_prefix):
            name = hf_key[len(hf_prefix):]
            return our_prefix + ("weight" if name == _HF_SCALE_NORM_WEIGHT else name)
    raise KeyError(hf_key)


def _hf_norm_key(our_key: str, our_state: Mapping[str, Tensor]) -> str:
    """HF name of a norm entry; a norm owning only a one-element weight is a scale norm
    (with embed_dim 1 scale and RMS norm compute the same function)."""
    for hf_prefix, our_prefix in _NORM_PREFIXES:
        if our_key.startswith(our_prefix):
            name = our_key[len(our_prefix):]
            owned = {key for key in our_state if key.startswith(our_prefix)}
            is_scale_norm = owned == {our_prefix + "weight"} and our_state[our_key].numel() == 1
            return hf_prefix + (_HF_SCALE_NORM_WEIGHT if is_scale_norm else name)
    raise KeyError(our_key)


def mega_layer_state_to_hf_block_state(our_state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """State dict of a :class:`MegaLayer` without cross-attention -> state dict of the
    equivalent Hugging Face ``MegaBlock`` (inverse of
    :func:`hf_block_state_to_mega_layer_state`; the rotary bias vectors become 1 x zdim and
    the port's rotary dtype buffer is added as zeros(1)). Tensors are not copied.

    Raises ``ValueError`` listing missing and unexpected keys.
    """
    _raise_for_bad_keys("MegaLayer", *_our_key_problems(set(our_state)))
    to_hf = {ours: hf for hf, ours in {**_CORE_NAMES, **_SIMPLE_BIAS_NAMES}.items()}
    rotary_names = {ours: hf for hf, ours in _ROTARY_BIAS_NAMES.items()}
    hf_state: Dict[str, Tensor] = {}
    for key, value in our_state.items():
        if key in rotary_names:
            hf_state[rotary_names[key]] = value.reshape(1, -1)  # zdim -> 1 x zdim
        elif key in to_hf:
            hf_state[to_hf[key]] = value
        else:
            hf_state[_hf_norm_key(key, our_state)] = value
    if set(our_state) & set(rotary_names):
        alpha = our_state[_ROTARY_BIAS_NAMES["mega_layer.rel_pos_bias.alpha"]]
        hf_state[_HF_ROTARY_DTYPE_BUFFER] = alpha.new_zeros(1)
    return hf_state


# ------------------------------------------------------------------- modules
def _import_transformers_mega():
    try:
        from transformers import MegaConfig, MegaModel
    except ImportError as error:
        raise ImportError(
            "the Hugging Face Mega port needs transformers 4.40.2, the last release with Mega: "
            f'pip install "{TRANSFORMERS_REQUIREMENT}" (or the "benchmark" extra of mega-fairseq)'
        ) from error
    return MegaConfig, MegaModel


def build_hf_block(settings: MegaLayerSettings, seed: int = 0, allow_known_defects: bool = False) -> nn.Module:
    """A Hugging Face ``MegaBlock`` configured like ``MegaLayer(settings)``, in eval mode.

    Built as the only layer of a ``transformers.MegaModel`` (a bare ``MegaBlock`` leaves its
    parameters uninitialised) from parameters drawn under ``torch.manual_seed(seed)``; the
    global random state is left untouched. ``allow_known_defects``: see
    :func:`hf_config_kwargs`.
    """
    MegaConfig, MegaModel = _import_transformers_mega()
    kwargs = hf_config_kwargs(settings, allow_known_defects=allow_known_defects)
    plain_layer_norms = kwargs["normalization_type"] == "layernorm" and not kwargs["norm_affine"]
    if plain_layer_norms:
        kwargs["norm_affine"] = True  # defect 12: swapped for plain norms below
    config = MegaConfig(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MegaModel(config, add_pooling_layer=False)
    block = model.layers[0]
    if plain_layer_norms:
        _use_plain_layer_norms(block)
    return block.eval()


def _use_plain_layer_norms(hf_block: nn.Module) -> None:
    """Replace both norms of an (affine) layer-norm block by the port's own non-affine
    ones, which its constructor would have built with ``norm_affine=False``."""
    config = hf_block.mega_layer.config
    config.norm_affine = False
    for sublayer in (hf_block.mega_layer, hf_block.nffn):
        norm_class = type(sublayer.norm)
        sublayer.norm = norm_class(config.normalization_type, config.hidden_size, affine=False)


def _check_block_matches(hf_block: nn.Module, settings: MegaLayerSettings) -> None:
    expected = hf_config_kwargs(settings, allow_known_defects=True)
    config = hf_block.mega_layer.config
    mismatched = [
        f"{name}: block has {getattr(config, name, None)!r}, settings need {value!r}"
        for name, value in expected.items()
        if name not in ("vocab_size", "num_hidden_layers") and getattr(config, name, None) != value
    ]
    if mismatched:
        raise ValueError("the Hugging Face block is configured differently: " + "; ".join(mismatched))


def mega_layer_from_hf_block(hf_block: nn.Module, settings: MegaLayerSettings) -> MegaLayer:
    """``MegaLayer(settings)`` holding the weights (and batch-norm statistics) of
    ``hf_block``, with its dtype, device and train/eval mode. The block's configuration
    must match ``settings`` (``ValueError`` otherwise); the state is loaded strictly."""
    _check_block_matches(hf_block, settings)
    reference = next(hf_block.parameters())
    layer = MegaLayer(settings).to(device=reference.device, dtype=reference.dtype)
    layer.load_state_dict(hf_block_state_to_mega_layer_state(hf_block.state_dict()), strict=True)
    return layer.train(hf_block.training)


def reset_hf_ema_cache(hf_block: nn.Module) -> None:
    """Drop the EMA kernel and coefficients the port caches in eval mode (it never
    invalidates them itself): needed after changing the weights of an eval-mode block."""
    ema = hf_block.mega_layer.ema_gate
    ema._kernel = None
    ema._coeffs = None


def _attention_window(config, length: int) -> int:
    """Length of the attention windows of a T = ``length`` input (chunk or sequence)."""
    if not config.use_chunking or length <= config.chunk_size:
        return length
    if length % config.chunk_size != 0:
        raise ValueError(
            f"the Hugging Face Mega port needs an input length <= chunk_size or a multiple of "
            f"it; got length {length} with chunk_size {config.chunk_size}"
        )
    return config.chunk_size


def run_hf_block(hf_block: nn.Module, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
    """Full-sequence forward of a Hugging Face ``MegaBlock`` in our conventions.

    x: T x B x C; padding_mask: B x T bool, True = pad (the port's attention_mask is
    the opposite: 1 = real token). Causal blocks (``is_decoder``) get the square causal
    mask of their attention window. Returns the block output, T x B x C. Differentiable:
    with autograd enabled the port's eval-mode EMA kernel cache is dropped before and
    after the call (defect 8); without, the port's caching is left as it is.
    """
    if x.dim() != 3:
        raise ValueError(f"expected input of shape T x B x C, got {tuple(x.shape)}")
    length, batch = x.size(0), x.size(1)
    config = hf_block.mega_layer.config
    window = _attention_window(config, length)
    attention_mask = None
    if padding_mask is not None:
        if padding_mask.shape != (batch, length):
            raise ValueError(f"padding_mask must be B x T = {(batch, length)}, got {tuple(padding_mask.shape)}")
        attention_mask = (~padding_mask.to(torch.bool)).to(x.dtype)
    causal_mask = None
    if config.is_decoder:
        causal_mask = torch.tril(torch.ones(window, window, dtype=x.dtype, device=x.device))
    if not torch.is_grad_enabled():
        return hf_block(x, attention_mask=attention_mask, causal_mask=causal_mask, use_cache=False)[0]
    # a kernel cached with autograd on belongs to one graph and to the current weights
    reset_hf_ema_cache(hf_block)
    try:
        return hf_block(x, attention_mask=attention_mask, causal_mask=causal_mask, use_cache=False)[0]
    finally:
        reset_hf_ema_cache(hf_block)

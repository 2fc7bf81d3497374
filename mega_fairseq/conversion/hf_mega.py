"""Weight mapping between the Hugging Face port of Mega (``transformers==4.40.2``,
``transformers.models.mega.modeling_mega.MegaBlock``) and :class:`MegaLayer`.

What converting weights needs: the state-dict mapping in both directions
(:func:`hf_block_state_to_mega_layer_state`, :func:`mega_layer_state_to_hf_block_state`)
with its key checks, and the port's config for a block's settings
(:func:`hf_config_kwargs`), which refuses the settings the port cannot reproduce. Nothing
here imports ``transformers``.

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

Defects of the port that make a setting inexpressible or wrong, refused by
:func:`hf_config_kwargs`:

1. ``rmsnorm`` does not normalise (``MegaRMSNorm`` discards ``x * rsqrt(ms + eps)`` and
   returns ``x * weight``): ``norm_type='rmsnorm'`` is refused unless
   ``allow_known_defects=True`` (e.g. for timing only).
2. The simple relative bias of a chunked layer has 2 max_positions - 1 entries but is
   read around entry chunk_size - 1 (instead of max_positions - 1):
   ``rel_pos_bias='simple'`` with chunking is refused unless
   ``max_positions == chunk_size`` (which is what the model options build).
3. The rotary bias needs an even embed_dim in the port: refused otherwise.
4. Cross-attention blocks (``add_cross_attention``) are not mapped (the state-dict
   functions reject their keys): ``cross_attention=True`` is refused.

Building and running a port block next to a :class:`MegaLayer` (equivalence tests,
benchmark) is done by ``scripts/benchmarking/hf_harness.py``, whose docstring lists the
port's defects met when running it.
"""

from typing import Dict, Iterable, List, Mapping, Set, Tuple

from torch import Tensor

from mega_fairseq.modules.length_options import optional_length
from mega_fairseq.modules.mega_layer import MegaLayerSettings

# the release whose MegaBlock the mapping and the config are for (the last with Mega)
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

    Raises ``ValueError`` naming every setting the port cannot express or computes wrongly
    (the module docstring's list); ``allow_known_defects=True`` lets through the ones it
    computes wrongly (rmsnorm).
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

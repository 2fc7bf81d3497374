"""The validated settings of one Mega block: every option is normalised and checked once,
here, and the questions other code asks about a block (is it chunked, how long may its
input be, which EMA truncation applies) are answered here.

Model options reach this class through one builder
(:func:`mega_fairseq.models.mega_options.stack_settings`), which turns an
:class:`InvalidSetting` into an error naming the command-line option; Python callers get
the error under the field's own name (``zdim must be a positive integer, got 0``).
"""

from dataclasses import dataclass
from typing import Callable, Optional

from mega_fairseq.modules.activations import ACTIVATIONS, ATTENTION_ACTIVATIONS
from mega_fairseq.modules.length_options import optional_length
from mega_fairseq.modules.relative_position import REL_POS_BIAS_TYPES
from mega_fairseq.modules.sequence_norm import NORM_TYPES, SEQUENCE_STATISTICS_NORM_TYPES

# Mega's real EMA, Megalodon's complex EMA
EMA_TYPES = ("ema", "cema")
# the normalized FFN: two linear layers with the block activation, or SwiGLU
FFN_TYPES = ("mlp", "swiglu")

POSITIVE_FIELDS = ("embed_dim", "zdim", "hdim", "ndim", "ffn_hidden_dim", "max_positions",
                   "timestep_norm_groups")
PROBABILITY_FIELDS = ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout")
CHOICE_FIELDS = {
    "activation": ACTIVATIONS,
    "attention_activation": ATTENTION_ACTIVATIONS,
    "norm_type": NORM_TYPES,
    "rel_pos_bias": REL_POS_BIAS_TYPES,
    "ema_type": EMA_TYPES,
    "ffn_type": FFN_TYPES,
}
LENGTH_FIELDS = ("chunk_size", "truncation")


class InvalidSetting(ValueError):
    """A :class:`MegaLayerSettings` field holds a value no block can be built with.

    ``template`` is the message with each field it mentions written ``{field}``; ``str()``
    fills in the field names, :meth:`naming` any other names (command-line options)."""

    def __init__(self, template: str, **values):
        self.template = template
        self.values = values
        super().__init__(self.naming(lambda field_name: field_name))

    def naming(self, name_of: Callable[[str], str]) -> str:
        fields = {f: name_of(f) for f in MegaLayerSettings.__dataclass_fields__}
        return self.template.format(**fields, **self.values)


@dataclass
class MegaLayerSettings:
    """Everything one Mega block needs, validated on construction.

    ``max_positions`` is the number of positions the relative bias covers: the longest
    attention window (the whole sequence, or one chunk when chunked).
    ``cross_max_positions``: positions the cross-attention bias covers (queries: target,
    keys: source); None: ``max_positions``. ``chunk_size`` and ``truncation`` are stored
    normalised: None when off (given as None, 0 or -1), else the length.

    Megalodon's parts (Ma et al. 2024): ``ema_type`` 'cema' (complex EMA),
    ``norm_type`` 'timestepnorm' (with ``timestep_norm_groups``; it normalises the inputs of
    the sequence-mixing sublayer and the stack's output, while the position-wise sublayers
    use layernorm, see :attr:`positionwise_norm_type`), ``normalized_attention`` (queries
    and keys from the L2-normalised shared representation, unscaled scores),
    ``update_gate`` False (the sublayer output is residual + h), ``two_hop_residual``
    (the FFN's residual is the block input; needs pre-norm) and ``ffn_type`` 'swiglu'.
    """

    embed_dim: int
    zdim: int
    hdim: int
    ndim: int
    ffn_hidden_dim: int
    causal: bool
    cross_attention: bool = False
    bidirectional: Optional[bool] = None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    activation_dropout: float = 0.0
    feature_dropout: bool = False
    activation: str = "silu"
    attention_activation: str = "softmax"
    norm_type: str = "layernorm"
    prenorm: bool = True
    norm_affine: bool = True
    rel_pos_bias: str = "simple"
    max_positions: int = 1024
    cross_max_positions: Optional[int] = None
    chunk_size: Optional[int] = None
    truncation: Optional[int] = None
    ema_type: str = "ema"
    timestep_norm_groups: int = 16
    normalized_attention: bool = False
    update_gate: bool = True
    two_hop_residual: bool = False
    ffn_type: str = "mlp"

    def __post_init__(self):
        for name in LENGTH_FIELDS:
            try:
                setattr(self, name, optional_length(name, getattr(self, name)))
            except ValueError:
                raise InvalidSetting(
                    f"{{{name}}} must be a positive integer, or -1 or 0 (off); got {{value!r}}",
                    value=getattr(self, name),
                ) from None
        for name in POSITIVE_FIELDS:
            _check_positive(name, getattr(self, name))
        if self.cross_attention:
            self.cross_max_positions = self.cross_max_positions or self.max_positions
            _check_positive("cross_max_positions", self.cross_max_positions)
        else:
            self.cross_max_positions = None
        for name in PROBABILITY_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise InvalidSetting(f"{{{name}}} must be a probability in [0, 1), got {{value!r}}",
                                     value=value)
        for name, choices in CHOICE_FIELDS.items():
            self_value = str(getattr(self, name))
            if self_value not in choices:
                raise InvalidSetting(f"{{{name}}} must be one of {list(choices)}, got {{value!r}}",
                                     value=self_value)
            setattr(self, name, self_value)
        if self.rel_pos_bias == "rotary" and self.zdim % 2 != 0:
            raise InvalidSetting("{rel_pos_bias} rotary needs an even {zdim}, got {value}",
                                 value=self.zdim)
        if self.norm_type == "timestepnorm" and self.embed_dim % self.timestep_norm_groups != 0:
            raise InvalidSetting("{timestep_norm_groups} must divide {embed_dim} ({value}), got {groups}",
                                 value=self.embed_dim, groups=self.timestep_norm_groups)
        if self.two_hop_residual and not self.prenorm:
            raise InvalidSetting("{two_hop_residual} needs pre-norm blocks ({prenorm})")
        if self.bidirectional is None:
            self.bidirectional = not self.causal
        if self.causal and self.bidirectional:
            raise InvalidSetting("{bidirectional} must be False for a causal block: a "
                                 "bidirectional moving average would see future tokens")

    @property
    def positionwise_norm_type(self) -> str:
        """The norm of the sublayers that mix no positions (FFN, cross-attention queries,
        embedding norm): layernorm where ``norm_type`` is a sequence-statistics norm."""
        return "layernorm" if self.norm_type in SEQUENCE_STATISTICS_NORM_TYPES else self.norm_type

    @property
    def chunked(self) -> bool:
        return self.chunk_size is not None

    @property
    def length_limit(self) -> Optional[int]:
        """The longest sequence the block accepts: the bias positions for an unchunked
        block with the 'simple' bias (and its cross-attention's, with cross-attention);
        None when nothing limits it (chunked or rotary)."""
        if self.rel_pos_bias != "simple":
            return None
        limits = [] if self.chunked else [self.max_positions]
        if self.cross_attention:
            limits.append(self.cross_max_positions)
        return min(limits) if limits else None


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidSetting(f"{{{name}}} must be a positive integer, got {{value!r}}", value=value)

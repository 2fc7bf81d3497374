"""Typed fairseq options shared by all Mega models, and the one place that turns them into
block settings (:class:`~mega_fairseq.modules.layer_settings.MegaLayerSettings`).

Models compose their dataclass config from these groups (``MegaCommonConfig`` plus
``MegaDecoderConfig`` and/or ``MegaEncoderConfig``), so the LM, translation and encoder
models share option names, defaults and help texts; :func:`stack_settings` turns a
config into each side's validated :class:`StackSettings`.  No default is derived by
interpolation from another option: sizes that depend on others are computed in code, so
the command line and YAML configs always agree.
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from mega_fairseq.errors import OptionError
from mega_fairseq.models.option_names import option_attribute, option_name
from mega_fairseq.modules.activations import ACTIVATIONS, ATTENTION_ACTIVATIONS
from mega_fairseq.modules.layer_settings import EMA_TYPES, FFN_TYPES, InvalidSetting, MegaLayerSettings
from mega_fairseq.modules.length_options import optional_length
from mega_fairseq.modules.relative_position import REL_POS_BIAS_TYPES
from mega_fairseq.modules.sequence_norm import NORM_TYPES


@dataclass
class MegaCommonConfig(FairseqDataclass):
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(
        default=0.0, metadata={"help": "dropout probability for attention weights"}
    )
    hidden_dropout: float = field(
        default=0.0,
        metadata={"help": "dropout probability for the gated attention's hidden units"},
    )
    activation_dropout: float = field(
        default=0.0, metadata={"help": "dropout probability after activation in the FFN"}
    )
    feature_dropout: bool = field(
        default=False,
        metadata={"help": "drop whole channels (feature dropout) instead of elements"},
    )
    activation_fn: ChoiceEnum(ACTIVATIONS) = field(
        default="silu", metadata={"help": "activation function of the Mega blocks"}
    )
    attention_activation_fn: ChoiceEnum(ATTENTION_ACTIVATIONS) = field(
        default="softmax", metadata={"help": "attention activation function"}
    )
    normalization_type: ChoiceEnum(NORM_TYPES) = field(
        default="layernorm", metadata={"help": "normalization layer of the Mega blocks"}
    )
    normalize_before: bool = field(
        default=False, metadata={"help": "pre-norm blocks (default: post-norm)"}
    )
    no_affine_norm: bool = field(
        default=False, metadata={"help": "no learned affine parameters in the blocks' norms"}
    )
    no_affine_final_norm: bool = field(
        default=False,
        metadata={"help": "no learned affine parameters in the final norm of pre-norm models"},
    )
    no_final_norm: bool = field(
        default=False,
        metadata={"help": "no norm after the last block of pre-norm models (the Hugging Face "
                  "port's models have none); post-norm models never have one"},
    )
    rel_pos_bias: ChoiceEnum(REL_POS_BIAS_TYPES) = field(
        default="simple",
        metadata={
            "help": "relative position bias: 'simple' (one scalar per offset, inputs limited "
            "to the max positions) or 'rotary' (extrapolates to any length)"
        },
    )
    truncation_length: Optional[int] = field(
        default=None,
        metadata={"help": "truncate the EMA kernel to this many steps (unset, 0 or -1: no truncation)"},
    )
    no_scale_embedding: bool = field(
        default=False, metadata={"help": "do not scale embeddings by sqrt(embed dim)"}
    )
    normalize_embedding: bool = field(
        default=False, metadata={"help": "normalize the (scaled) embeddings"}
    )
    # Megalodon's parts (Ma et al. 2024), each composable with the Mega blocks
    ema_type: ChoiceEnum(EMA_TYPES) = field(
        default="ema",
        metadata={"help": "moving average: 'ema' (Mega's damped EMA) or 'cema' (Megalodon's "
                  "complex EMA)"},
    )
    timestep_norm_groups: int = field(
        default=16,
        metadata={"help": "groups of --normalization-type timestepnorm (must divide the "
                  "embedding dimension)"},
    )
    normalized_attention: bool = field(
        default=False,
        metadata={"help": "Megalodon's normalized attention: queries and keys from the "
                  "L2-normalised shared representation (no SiLU), scores not scaled"},
    )
    no_update_gate: bool = field(
        default=False,
        metadata={"help": "no update gate: the gated attention returns residual + h "
                  "(Megalodon) instead of residual + u * (h - residual)"},
    )
    two_hop_residual: bool = field(
        default=False,
        metadata={"help": "the FFN's residual connection is the block input (Megalodon's "
                  "two-hop residual); needs pre-norm"},
    )
    ffn_type: ChoiceEnum(FFN_TYPES) = field(
        default="mlp",
        metadata={"help": "normalized FFN: 'mlp' (two linear layers with --activation-fn) or "
                  "'swiglu' (silu(W1 x) * W3 x, then W2; no biases)"},
    )


@dataclass
class MegaDecoderConfig(FairseqDataclass):
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension"})
    decoder_hidden_dim: int = field(
        default=1024, metadata={"help": "decoder gated attention value/hidden dimension"}
    )
    decoder_z_dim: int = field(
        default=128, metadata={"help": "decoder shared query/key representation dimension"}
    )
    decoder_n_dim: int = field(default=16, metadata={"help": "decoder EMA dimension per channel"})
    decoder_ffn_embed_dim: int = field(
        default=1024, metadata={"help": "decoder normalized FFN hidden dimension"}
    )
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    decoder_chunk_size: int = field(
        default=-1,
        metadata={"help": "decoder attention chunk size for linear cost (-1 or 0: no chunking)"},
    )
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "share decoder input and output embeddings"}
    )
    max_target_positions: Optional[int] = field(
        default=None, metadata={"help": "maximum target length (LM default: --tokens-per-sample)"}
    )


@dataclass
class MegaEncoderConfig(FairseqDataclass):
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension"})
    encoder_hidden_dim: int = field(
        default=1024, metadata={"help": "encoder gated attention value/hidden dimension"}
    )
    encoder_z_dim: int = field(
        default=128, metadata={"help": "encoder shared query/key representation dimension"}
    )
    encoder_n_dim: int = field(default=16, metadata={"help": "encoder EMA dimension per channel"})
    encoder_ffn_embed_dim: int = field(
        default=1024, metadata={"help": "encoder normalized FFN hidden dimension"}
    )
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    encoder_chunk_size: int = field(
        default=-1,
        metadata={"help": "encoder attention chunk size for linear cost (-1 or 0: no chunking)"},
    )
    max_source_positions: Optional[int] = field(
        default=1024, metadata={"help": "maximum source length"}
    )


@dataclass(frozen=True)
class StackSettings:
    """One encoder or decoder stack: its validated block settings, depth and embedding
    options, and ``max_positions``, the longest input it accepts (None: any length)."""

    layer: MegaLayerSettings
    num_layers: int
    max_positions: Optional[int]
    scale_embedding: bool = True
    normalize_embedding: bool = False
    affine_final_norm: bool = True
    final_norm: bool = True  # a norm after the last block (pre-norm stacks only)

    def __post_init__(self):
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers <= 0:
            raise ValueError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        if self.max_positions is not None and self.max_positions <= 0:
            raise ValueError(f"max_positions must be positive or None, got {self.max_positions!r}")


def side_option(cfg, setting: str, side: str):
    """The value of ``side``'s own option for ``setting`` (see ``option_names.SIDE_SETTINGS``)."""
    return getattr(cfg, option_attribute(setting, side))


def stack_settings(
    cfg,
    side: str,
    max_positions: int,
    cross_max_positions: Optional[int] = None,
    limited_by_blocks: bool = False,
) -> StackSettings:
    """The settings of ``side`` ('encoder': bidirectional blocks; 'decoder': causal ones)
    of a model config, validated once; the one builder of Mega blocks for every model.

    ``max_positions``: the longest input of that side (``--max-{source,target}-positions``);
    ``cross_max_positions``: the positions the cross-attention bias covers (decoders of
    encoder-decoder models; cross-attention is never chunked). ``limited_by_blocks``: the
    stack accepts whatever its blocks accept (language models: any length when chunked or
    rotary) instead of ``max_positions``.

    Bad option values raise :class:`~mega_fairseq.errors.OptionError` naming the
    command-line option."""
    if side not in ("encoder", "decoder"):
        raise ValueError(f"side must be 'encoder' or 'decoder', got {side!r}")
    for setting, value in (("num_layers", side_option(cfg, "num_layers", side)),
                           ("max_positions", max_positions)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise OptionError(f"{option_name(setting, side)} must be a positive integer, got {value!r}")
    try:
        chunk = optional_length(option_name("chunk_size", side), side_option(cfg, "chunk_size", side))
    except ValueError as error:
        raise OptionError(str(error)) from None
    try:
        layer = MegaLayerSettings(
            embed_dim=side_option(cfg, "embed_dim", side),
            zdim=side_option(cfg, "zdim", side),
            hdim=side_option(cfg, "hdim", side),
            ndim=side_option(cfg, "ndim", side),
            ffn_hidden_dim=side_option(cfg, "ffn_hidden_dim", side),
            causal=side == "decoder",
            cross_attention=cross_max_positions is not None,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            hidden_dropout=cfg.hidden_dropout,
            activation_dropout=cfg.activation_dropout,
            feature_dropout=cfg.feature_dropout,
            activation=cfg.activation_fn,
            attention_activation=cfg.attention_activation_fn,
            norm_type=cfg.normalization_type,
            prenorm=cfg.normalize_before,
            norm_affine=not cfg.no_affine_norm,
            rel_pos_bias=cfg.rel_pos_bias,
            # the relative bias covers one attention window: the chunk when chunked
            max_positions=chunk if chunk is not None else max_positions,
            cross_max_positions=cross_max_positions,
            chunk_size=chunk,
            truncation=cfg.truncation_length,
            # configs that predate Megalodon's options lack them
            ema_type=getattr(cfg, "ema_type", "ema"),
            timestep_norm_groups=getattr(cfg, "timestep_norm_groups", 16),
            normalized_attention=bool(getattr(cfg, "normalized_attention", False)),
            update_gate=not getattr(cfg, "no_update_gate", False),
            two_hop_residual=bool(getattr(cfg, "two_hop_residual", False)),
            ffn_type=getattr(cfg, "ffn_type", "mlp"),
        )
    except InvalidSetting as error:
        raise OptionError(error.naming(lambda setting: option_name(setting, side))) from None
    return StackSettings(
        layer=layer,
        num_layers=side_option(cfg, "num_layers", side),
        max_positions=layer.length_limit if limited_by_blocks else max_positions,
        scale_embedding=not cfg.no_scale_embedding,
        normalize_embedding=cfg.normalize_embedding,
        affine_final_norm=not cfg.no_affine_final_norm,
        # namespaces and config objects that predate the option lack it
        final_norm=not getattr(cfg, "no_final_norm", False),
    )

"""Typed fairseq options shared by all Mega models, and the one place that turns them into
:class:`~mega_fairseq.modules.mega_layer.MegaLayerSettings`.

Models compose their dataclass config from these groups (``MegaCommonConfig`` plus
``MegaDecoderConfig`` and/or ``MegaEncoderConfig``), so the LM, translation and encoder
models share option names, defaults and help texts.  No default is derived by
interpolation from another option: sizes that depend on others are computed in code, so
the command line and YAML configs always agree.
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from mega_fairseq.models.option_checks import (
    check_layer_settings,
    check_stack_options,
    length_option,
)
from mega_fairseq.modules.activations import ACTIVATIONS, ATTENTION_ACTIVATIONS
from mega_fairseq.modules.mega_layer import MegaLayerSettings
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


def chunk_size_or_none(cfg, side: str) -> Optional[int]:
    """The chunk size of ``side`` ('encoder' or 'decoder'), None when not chunked;
    :class:`~mega_fairseq.errors.OptionError` naming the option for other values."""
    return length_option(f"--{side}-chunk-size", getattr(cfg, f"{side}_chunk_size"))


def relative_bias_positions(cfg, side: str, max_length: int) -> int:
    """How many positions the relative bias must cover: the chunk when chunked, else the
    longest input of that side."""
    chunk = chunk_size_or_none(cfg, side)
    return chunk if chunk is not None else max_length


def layer_settings(
    cfg,
    side: str,
    max_length: int,
    causal: bool,
    cross_attention: bool = False,
    cross_max_length: Optional[int] = None,
) -> MegaLayerSettings:
    """Mega block settings for ``side`` ('encoder' or 'decoder') of a model config.

    ``max_length``: the longest input of that side; ``cross_max_length``: the longest
    target or source position the cross-attention bias must cover (decoders of
    encoder-decoder models; cross-attention is never chunked).

    Bad option values raise :class:`~mega_fairseq.errors.OptionError` naming the
    command-line option (see :mod:`mega_fairseq.models.option_checks`)."""
    if side not in ("encoder", "decoder"):
        raise ValueError(f"side must be 'encoder' or 'decoder', got {side!r}")
    check_stack_options(cfg, side)
    settings = MegaLayerSettings(
        embed_dim=getattr(cfg, f"{side}_embed_dim"),
        zdim=getattr(cfg, f"{side}_z_dim"),
        hdim=getattr(cfg, f"{side}_hidden_dim"),
        ndim=getattr(cfg, f"{side}_n_dim"),
        ffn_hidden_dim=getattr(cfg, f"{side}_ffn_embed_dim"),
        causal=causal,
        cross_attention=cross_attention,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        hidden_dropout=cfg.hidden_dropout,
        activation_dropout=cfg.activation_dropout,
        feature_dropout=cfg.feature_dropout,
        activation=str(cfg.activation_fn),
        attention_activation=str(cfg.attention_activation_fn),
        norm_type=str(cfg.normalization_type),
        prenorm=cfg.normalize_before,
        norm_affine=not cfg.no_affine_norm,
        rel_pos_bias=str(cfg.rel_pos_bias),
        max_positions=relative_bias_positions(cfg, side, max_length),
        cross_max_positions=cross_max_length if cross_attention else None,
        chunk_size=chunk_size_or_none(cfg, side) or -1,
        truncation=length_option("--truncation-length", cfg.truncation_length),
    )
    check_layer_settings(settings, side)
    return settings

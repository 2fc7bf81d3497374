"""``megalodon_lm``: Megalodon (Ma et al. 2024, "Megalodon: Efficient LLM Pretraining and
Inference with Unlimited Context Length", arXiv 2404.08801) as a decoder-only language model
for fairseq's ``language_modeling`` task.

Megalodon is Mega with the complex EMA (``--ema-type cema``), timestep normalisation
(``--normalization-type timestepnorm``, also as the final norm), normalized attention
(``--normalized-attention``), no update gate (``--no-update-gate``), the two-hop residual
(``--two-hop-residual``), pre-norm, rotary positions and chunked attention. Each part is an
option of every Mega model (the shared block builder), so ``megalodon_lm`` is ``mega_lm``
with these defaults; any of them can be switched back on the command line.

Presets: ``megalodon_lm`` (= ``megalodon_lm_200m``, the public code's 200M shape),
``megalodon_lm_tiny`` (CPU-sized, the sizes of ``mega_lm_tiny``) and ``megalodon_lm_7b``
(the paper's 7B shape: 32 blocks of width 4096, SwiGLU FFN, chunk 4096, untied
embeddings over Llama 2's 32K vocabulary).
"""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model, register_model_architecture

from mega_fairseq.models.mega_lm import MegaLanguageModel, MegaLanguageModelConfig
from mega_fairseq.models.model_building import set_arch_defaults, set_stack_sizes
from mega_fairseq.modules.layer_settings import EMA_TYPES
from mega_fairseq.modules.relative_position import REL_POS_BIAS_TYPES
from mega_fairseq.modules.sequence_norm import NORM_TYPES


@dataclass
class MegalodonLanguageModelConfig(MegaLanguageModelConfig):
    # defaults = the ``megalodon_lm`` architecture (the 200M shape)
    decoder_embed_dim: int = field(default=1024, metadata={"help": "decoder embedding dimension"})
    decoder_hidden_dim: int = field(
        default=2048, metadata={"help": "decoder gated attention value/hidden dimension"}
    )
    decoder_z_dim: int = field(
        default=256, metadata={"help": "decoder shared query/key representation dimension"}
    )
    decoder_ffn_embed_dim: int = field(
        default=2560, metadata={"help": "decoder normalized FFN hidden dimension"}
    )
    decoder_layers: int = field(default=12, metadata={"help": "number of decoder layers"})
    decoder_chunk_size: int = field(
        default=2048,
        metadata={"help": "decoder attention chunk size for linear cost (-1 or 0: no chunking)"},
    )
    ema_type: ChoiceEnum(EMA_TYPES) = field(
        default="cema",
        metadata={"help": "moving average: 'ema' (Mega's damped EMA) or 'cema' (Megalodon's "
                  "complex EMA)"},
    )
    normalization_type: ChoiceEnum(NORM_TYPES) = field(
        default="timestepnorm", metadata={"help": "normalization layer of the blocks"}
    )
    timestep_norm_groups: int = field(
        default=32,
        metadata={"help": "groups of --normalization-type timestepnorm (must divide the "
                  "embedding dimension)"},
    )
    normalized_attention: bool = field(
        default=True,
        metadata={"help": "Megalodon's normalized attention (false: Mega's gated attention)"},
    )
    no_update_gate: bool = field(
        default=True,
        metadata={"help": "no update gate (false: Mega's residual + u * (h - residual))"},
    )
    two_hop_residual: bool = field(
        default=True,
        metadata={"help": "the FFN's residual connection is the block input (false: its own input)"},
    )
    rel_pos_bias: ChoiceEnum(REL_POS_BIAS_TYPES) = field(
        default="rotary",
        metadata={"help": "relative position bias: 'rotary' (any length) or 'simple'"},
    )
    no_scale_embedding: bool = field(
        default=True, metadata={"help": "do not scale embeddings by sqrt(embed dim)"}
    )


@register_model("megalodon_lm", dataclass=MegalodonLanguageModelConfig)
class MegalodonLanguageModel(MegaLanguageModel):
    """Decoder-only Megalodon; the same decoder, hub interface (``from_pretrained``) and
    incremental decoding as :class:`MegaLanguageModel`."""

    model_name = "megalodon_lm"
    config_class = MegalodonLanguageModelConfig


def megalodon_lm_base(args):
    """The ``megalodon_lm`` architecture (registered by fairseq from the config defaults)."""
    set_stack_sizes(args, ("decoder",), 1024, 2048, 2560, 256, 16, 12)
    set_arch_defaults(
        args, ema_type="cema", normalization_type="timestepnorm", timestep_norm_groups=32,
        normalized_attention=True, no_update_gate=True, two_hop_residual=True,
        normalize_before=True, rel_pos_bias="rotary", decoder_chunk_size=2048,
        no_scale_embedding=True,
    )


@register_model_architecture("megalodon_lm", "megalodon_lm_200m")
def megalodon_lm_200m(args):
    megalodon_lm_base(args)


@register_model_architecture("megalodon_lm", "megalodon_lm_tiny")
def megalodon_lm_tiny(args):
    set_stack_sizes(args, ("decoder",), 64, 128, 128, 32, 4, 2)
    set_arch_defaults(args, timestep_norm_groups=16, decoder_chunk_size=64,
                      share_decoder_input_output_embed=True)
    megalodon_lm_base(args)


@register_model_architecture("megalodon_lm", "megalodon_lm_7b")
def megalodon_lm_7b(args):
    set_stack_sizes(args, ("decoder",), 4096, 8192, 8192, 1024, 16, 32)
    set_arch_defaults(args, timestep_norm_groups=64, decoder_chunk_size=4096, ffn_type="swiglu",
                      dropout=0.0)
    megalodon_lm_base(args)

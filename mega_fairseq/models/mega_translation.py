"""``mega``: the Mega encoder-decoder for fairseq's ``translation`` task (and any task
with source and target dictionaries)."""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.models import (
    FairseqEncoderDecoderModel,
    register_model,
    register_model_architecture,
)

from fairseq.tasks.language_modeling import LanguageModelingTask

from mega_fairseq.errors import OptionError
from mega_fairseq.models.mega_decoder import MegaDecoder
from mega_fairseq.models.mega_encoder import MegaEncoder
from mega_fairseq.models.mega_options import (
    MegaCommonConfig,
    MegaDecoderConfig,
    MegaEncoderConfig,
    stack_settings,
)
from mega_fairseq.models.model_building import (
    build_embedding,
    refuse_foreign_checkpoint,
    set_arch_defaults,
    set_stack_sizes,
    model_config,
)


@dataclass
class MegaTranslationConfig(MegaCommonConfig, MegaEncoderConfig, MegaDecoderConfig):
    # defaults = the ``mega`` architecture: 6+6 post-norm blocks, embed 512, hidden/FFN
    # 1024, z 128, EMA ndim 16 (fairseq registers the model name as an architecture)
    share_all_embeddings: bool = field(
        default=False,
        metadata={
            "help": "share encoder, decoder and output embeddings (requires a joined "
            "dictionary: fairseq-preprocess --joined-dictionary, and equal embed dims)"
        },
    )
    max_source_positions: Optional[int] = field(
        default=1024, metadata={"help": "maximum source length"}
    )
    max_target_positions: Optional[int] = field(
        default=1024, metadata={"help": "maximum target length"}
    )


@register_model("mega", dataclass=MegaTranslationConfig)
class MegaModel(FairseqEncoderDecoderModel):
    """Mega encoder-decoder: bidirectional EMA + gated attention + normalized FFN blocks in
    the encoder; causal EMA + causal gated attention + gated cross-attention + normalized
    FFN blocks in the decoder.

    ``MegaModel.from_pretrained(checkpoint_dir, checkpoint_file=..., data_name_or_path=...,
    bpe='sentencepiece', sentencepiece_model=...)`` returns fairseq's
    ``GeneratorHubInterface`` (``translate``, ``sample``, ``generate``).
    """

    @classmethod
    def hub_models(cls):
        return {}

    @classmethod
    def build_model(cls, cfg: MegaTranslationConfig, task):
        cfg = model_config(cfg, "mega", MegaTranslationConfig)
        src_dict = getattr(task, "source_dictionary", None)
        tgt_dict = getattr(task, "target_dictionary", None)
        if src_dict is None or tgt_dict is None or isinstance(task, LanguageModelingTask):
            raise OptionError(
                f"the 'mega' encoder-decoder needs a task with source and target dictionaries "
                f"(e.g. --task translation); task {type(task).__name__} has none. For language "
                "modelling use --arch mega_lm (or one of its presets)"
            )
        max_source, max_target = cfg.max_source_positions, cfg.max_target_positions
        # block settings first: bad sizes are refused naming their options
        encoder_settings = stack_settings(cfg, "encoder", max_source)
        # (a bad --max-target-positions is refused by name before the maximum is used)
        decoder_settings = stack_settings(
            cfg, "decoder", max_target, cross_max_positions=max(max_source, max_target or 0)
        )

        if cfg.share_all_embeddings:
            if src_dict != tgt_dict:
                raise OptionError(
                    "--share-all-embeddings requires a joined dictionary: binarize with "
                    "fairseq-preprocess --joined-dictionary (source and target dictionaries "
                    f"differ: {len(src_dict)} vs {len(tgt_dict)} symbols)"
                )
            if cfg.encoder_embed_dim != cfg.decoder_embed_dim:
                raise OptionError(
                    "--share-all-embeddings requires --encoder-embed-dim to equal "
                    f"--decoder-embed-dim, got {cfg.encoder_embed_dim} and {cfg.decoder_embed_dim}"
                )
            encoder_embed = build_embedding(src_dict, cfg.encoder_embed_dim)
            decoder_embed = encoder_embed
            share_output = True
        else:
            encoder_embed = build_embedding(src_dict, cfg.encoder_embed_dim)
            decoder_embed = build_embedding(tgt_dict, cfg.decoder_embed_dim)
            share_output = cfg.share_decoder_input_output_embed

        encoder = MegaEncoder(encoder_settings, src_dict, encoder_embed)
        decoder = MegaDecoder(
            decoder_settings, tgt_dict, decoder_embed, share_input_output_embed=share_output
        )
        return cls(encoder, decoder)

    def upgrade_state_dict_named(self, state_dict, name):
        """Refuses, before any tensor is copied, a checkpoint that is not a Mega
        encoder-decoder (a ``mega_lm`` or a fairseq ``transformer`` checkpoint, say)."""
        prefix = f"{name}." if name else ""
        refuse_foreign_checkpoint(
            state_dict,
            {
                "Mega encoder": prefix + "encoder.layers.0.self_attn.ema.",
                "Mega decoder with cross-attention": prefix + "decoder.layers.0.cross_attn.",
            },
            "a 'mega' encoder-decoder",
            "load it with the model type it was trained with (e.g. --arch mega_lm or "
            "fairseq's transformer)",
        )
        super().upgrade_state_dict_named(state_dict, name)

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt",
                        data_name_or_path=".", **kwargs):
        """Load a trained ``mega`` checkpoint as fairseq's ``GeneratorHubInterface``;
        ``kwargs`` override saved options (``bpe``, ``sentencepiece_model``, ``beam``...).
        A checkpoint of another model type is refused with its type named."""
        hub = super().from_pretrained(
            model_name_or_path, checkpoint_file=checkpoint_file,
            data_name_or_path=data_name_or_path, **kwargs
        )
        for model in hub.models:
            if not isinstance(model, MegaModel):
                raise ValueError(
                    f"{checkpoint_file} in {model_name_or_path} holds a {type(model).__name__} "
                    f"model, not a 'mega' encoder-decoder; load it with that model's class "
                    "(e.g. fairseq's TransformerModel, or MegaLanguageModel for mega_lm)"
                )
        return hub


# ----------------------------------------------------------------- architectures
def mega_base(args):
    """The ``mega`` architecture (registered by fairseq from the config defaults)."""
    set_stack_sizes(args, ("encoder", "decoder"), 512, 1024, 1024, 128, 16, 6)
    set_arch_defaults(
        args,
        normalize_before=False,
        normalization_type="layernorm",
        activation_fn="silu",
        attention_activation_fn="softmax",
        rel_pos_bias="simple",
        dropout=0.1,
    )


@register_model_architecture("mega", "mega_wmt_en_de")
def mega_wmt_en_de(args):
    """The paper's WMT'16 En-De model (Mega-base)."""
    set_arch_defaults(
        args,
        attention_dropout=0.1,
        hidden_dropout=0.1,
        activation_dropout=0.1,
        truncation_length=1024,
    )
    mega_base(args)


@register_model_architecture("mega", "mega_wmt_en_de_big")
def mega_wmt_en_de_big(args):
    set_stack_sizes(args, ("encoder", "decoder"), 1024, 2048, 2048, 256, 16, 6)
    set_arch_defaults(args, dropout=0.3)
    mega_wmt_en_de(args)


@register_model_architecture("mega", "mega_tiny")
def mega_tiny(args):
    """2+2 small blocks for CPU tests and examples."""
    set_stack_sizes(args, ("encoder", "decoder"), 64, 128, 128, 32, 4, 2)
    mega_base(args)

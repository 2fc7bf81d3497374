"""``mega_lm``: a decoder-only Mega language model for fairseq's ``language_modeling`` task."""

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import II

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.hub_utils import GeneratorHubInterface
from fairseq.models import (
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from fairseq.modules import AdaptiveInput, AdaptiveSoftmax
from fairseq.tasks.translation import TranslationTask
from fairseq.utils import safe_getattr

from mega_fairseq.errors import OptionError
from mega_fairseq.models.hub_loading import load_for_hub
from mega_fairseq.models.mega_decoder import DECODER_LM_HEAD_TYPES, MegaDecoder
from mega_fairseq.models.model_building import (
    build_embedding,
    set_arch_defaults,
    set_stack_sizes,
    model_config,
)
from mega_fairseq.models.mega_options import (
    MegaCommonConfig,
    MegaDecoderConfig,
    stack_settings,
)


@dataclass
class MegaLanguageModelConfig(MegaCommonConfig, MegaDecoderConfig):
    # defaults = the ``mega_lm`` architecture (the paper's base LM sizes, pre-norm);
    # fairseq registers the model name itself as an architecture with these defaults
    decoder_hidden_dim: int = field(
        default=1664, metadata={"help": "decoder gated attention value/hidden dimension"}
    )
    decoder_ffn_embed_dim: int = field(
        default=1664, metadata={"help": "decoder normalized FFN hidden dimension"}
    )
    normalize_before: bool = field(
        default=True, metadata={"help": "pre-norm blocks (post-norm when false)"}
    )
    adaptive_input: bool = field(default=False, metadata={"help": "use adaptive input embeddings"})
    adaptive_input_factor: float = field(default=4, metadata={"help": "adaptive input factor"})
    adaptive_input_cutoff: Optional[str] = field(
        default=None, metadata={"help": "comma separated list of adaptive input cutoff points"}
    )
    adaptive_softmax_cutoff: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma separated list of adaptive softmax cutoff points; "
            "use with the adaptive_loss criterion"
        },
    )
    adaptive_softmax_dropout: float = field(
        default=0.0, metadata={"help": "adaptive softmax dropout for the tail projections"}
    )
    adaptive_softmax_factor: float = field(default=4, metadata={"help": "adaptive softmax factor"})
    tie_adaptive_weights: bool = field(
        default=False, metadata={"help": "tie the weights of adaptive softmax and adaptive input"}
    )
    tie_adaptive_proj: bool = field(
        default=False,
        metadata={"help": "tie the projections of adaptive softmax and adaptive input"},
    )
    lm_head_type: ChoiceEnum(DECODER_LM_HEAD_TYPES) = field(
        default="linear",
        metadata={"help": "before the output projection: 'linear' (nothing) or 'dense_tanh' "
                  "(Linear(C, C) -> tanh, the Hugging Face port's add_lm_hidden_dense_layer)"},
    )
    output_projection_bias: bool = field(
        default=False,
        metadata={"help": "a bias on the output projection (the Hugging Face port's lm_head has one)"},
    )
    tokens_per_sample: int = II("task.tokens_per_sample")


def _resolved(value):
    """None for an interpolation left unresolved (a config built without its task)."""
    return None if isinstance(value, str) and value.startswith("${") else value


def _cutoffs(text: Optional[str], option: str, vocab_size: int):
    if text is None:
        raise OptionError(f"--{option} is required with adaptive input/softmax")
    cutoffs = utils.eval_str_list(text, type=int)
    if sorted(cutoffs) != cutoffs or any(c <= 0 for c in cutoffs):
        raise OptionError(f"--{option} must be increasing positive integers, got {text!r}")
    if cutoffs[-1] > vocab_size:
        raise OptionError(
            f"--{option} {text!r} has a cutoff above the vocabulary size {vocab_size}; "
            "choose cutoffs below it"
        )
    return cutoffs


@register_model("mega_lm", dataclass=MegaLanguageModelConfig)
class MegaLanguageModel(FairseqLanguageModel):
    """Decoder-only Mega: causal EMA + causal gated attention + normalized FFN blocks.

    ``MegaLanguageModel.from_pretrained(checkpoint_dir, checkpoint_file=...)`` returns
    fairseq's ``GeneratorHubInterface`` (``sample``, ``score``, ``generate``).
    """

    # the registered name and config of this model (Megalodon's subclass has its own)
    model_name = "mega_lm"
    config_class = MegaLanguageModelConfig

    @classmethod
    def hub_models(cls):
        return {}

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt",
                        data_name_or_path=".", **kwargs):
        """Load a trained ``mega_lm`` checkpoint (``os.pathsep``-separated files: an
        ensemble) as fairseq's ``GeneratorHubInterface``, in eval mode; ``kwargs``
        override saved options (``bpe``, ``sentencepiece_model``, ...). A checkpoint of
        another model type is refused with its type named."""
        loaded = load_for_hub(cls, f"a '{cls.model_name}' language model", model_name_or_path,
                              checkpoint_file, data_name_or_path, **kwargs)
        return GeneratorHubInterface(loaded["args"], loaded["task"], loaded["models"])

    @classmethod
    def build_model(cls, cfg: MegaLanguageModelConfig, task):
        cfg = model_config(
            cfg, cls.model_name, cls.config_class, ("adaptive_input", "adaptive_softmax_cutoff")
        )
        if isinstance(task, TranslationTask):
            raise OptionError(
                f"{cls.model_name} is a decoder-only language model and cannot run the translation "
                "task; use --arch mega (or mega_tiny, mega_wmt_en_de, ...) for translation, "
                "or --task language_modeling for this model"
            )
        dictionary = task.target_dictionary
        tokens_per_sample = _resolved(safe_getattr(cfg, "tokens_per_sample", None))
        max_target_positions = cfg.max_target_positions
        if max_target_positions is None:
            max_target_positions = tokens_per_sample if tokens_per_sample is not None else 1024
        # block settings first: bad sizes are refused naming their options
        settings = stack_settings(cfg, "decoder", max_target_positions, limited_by_blocks=True)
        if (
            settings.max_positions is not None
            and tokens_per_sample is not None
            and tokens_per_sample > settings.max_positions
        ):
            raise OptionError(
                f"--tokens-per-sample {tokens_per_sample} exceeds --max-target-positions "
                f"{max_target_positions}, the length limit of the 'simple' relative position "
                "bias; raise --max-target-positions, use --rel-pos-bias rotary, or chunk with "
                "--decoder-chunk-size"
            )
        embed_dim = cfg.decoder_embed_dim
        if cfg.adaptive_input:
            embed_tokens = AdaptiveInput(
                len(dictionary),
                dictionary.pad(),
                embed_dim,
                cfg.adaptive_input_factor,
                embed_dim,
                _cutoffs(cfg.adaptive_input_cutoff, "adaptive-input-cutoff", len(dictionary)),
                0,
                8,
            )
        else:
            embed_tokens = build_embedding(dictionary, embed_dim)

        adaptive_softmax = None
        if cfg.adaptive_softmax_cutoff is not None:
            if cfg.tie_adaptive_weights:
                if not cfg.adaptive_input:
                    raise OptionError("--tie-adaptive-weights requires --adaptive-input")
                if (
                    cfg.adaptive_input_factor != cfg.adaptive_softmax_factor
                    or cfg.adaptive_input_cutoff != cfg.adaptive_softmax_cutoff
                ):
                    raise OptionError(
                        "--tie-adaptive-weights requires equal adaptive input/softmax factors "
                        f"and cutoffs, got {cfg.adaptive_input_factor}/{cfg.adaptive_input_cutoff} "
                        f"vs {cfg.adaptive_softmax_factor}/{cfg.adaptive_softmax_cutoff}"
                    )
            adaptive_softmax = AdaptiveSoftmax(
                len(dictionary),
                embed_dim,
                _cutoffs(cfg.adaptive_softmax_cutoff, "adaptive-softmax-cutoff", len(dictionary)),
                dropout=cfg.adaptive_softmax_dropout,
                adaptive_inputs=embed_tokens if cfg.tie_adaptive_weights else None,
                factor=cfg.adaptive_softmax_factor,
                tie_proj=cfg.tie_adaptive_proj,
            )
        elif cfg.tie_adaptive_weights:
            raise OptionError("--tie-adaptive-weights requires --adaptive-softmax-cutoff")
        if cfg.share_decoder_input_output_embed and (
            cfg.adaptive_input or adaptive_softmax is not None
        ):
            raise OptionError(
                "--share-decoder-input-output-embed cannot be used with --adaptive-input or "
                "--adaptive-softmax-cutoff; use --adaptive-input with --tie-adaptive-weights"
            )

        lm_head_type = str(safe_getattr(cfg, "lm_head_type", "linear"))
        output_projection_bias = bool(safe_getattr(cfg, "output_projection_bias", False))
        if lm_head_type not in DECODER_LM_HEAD_TYPES:
            raise OptionError(f"--lm-head-type must be one of {list(DECODER_LM_HEAD_TYPES)}, "
                              f"got {lm_head_type!r}")
        if adaptive_softmax is not None and (lm_head_type != "linear" or output_projection_bias):
            raise OptionError(
                "--lm-head-type dense_tanh and --output-projection-bias cannot be used with "
                "--adaptive-softmax-cutoff: the adaptive softmax replaces the output projection"
            )

        decoder = MegaDecoder(
            settings,
            dictionary,
            embed_tokens,
            share_input_output_embed=cfg.share_decoder_input_output_embed,
            adaptive_softmax=adaptive_softmax,
            lm_head_type=lm_head_type,
            output_projection_bias=output_projection_bias,
        )
        return cls(decoder)


# ----------------------------------------------------------------- architectures
def mega_lm_base(args):
    """The ``mega_lm`` architecture (registered by fairseq from the config defaults)."""
    set_stack_sizes(args, ("decoder",), 512, 1664, 1664, 128, 16, 6)
    set_arch_defaults(args, normalize_before=True, normalization_type="layernorm")


@register_model_architecture("mega_lm", "mega_lm_tiny")
def mega_lm_tiny(args):
    set_stack_sizes(args, ("decoder",), 64, 128, 128, 32, 4, 2)
    # tied input/output embeddings unless adaptive input/softmax replace them
    adaptive = safe_getattr(args, "adaptive_input", False) or (
        safe_getattr(args, "adaptive_softmax_cutoff", None) is not None
    )
    set_arch_defaults(args, share_decoder_input_output_embed=not adaptive)
    mega_lm_base(args)


@register_model_architecture("mega_lm", "mega_lm_big")
def mega_lm_big(args):
    set_stack_sizes(args, ("decoder",), 1024, 2048, 2048, 256, 16, 16)
    mega_lm_base(args)


def _adaptive(args):
    set_arch_defaults(
        args,
        adaptive_input=True,
        adaptive_input_cutoff="20000,60000",
        adaptive_softmax_cutoff="20000,60000",
        adaptive_input_factor=4,
        adaptive_softmax_factor=4,
        adaptive_softmax_dropout=0.2,
        tie_adaptive_weights=True,
        tie_adaptive_proj=True,
        dropout=0.3,
        attention_dropout=0.1,
        hidden_dropout=0.1,
        decoder_chunk_size=1024,
        rel_pos_bias="rotary",
        no_affine_final_norm=True,
    )


def _enwik8(args):
    set_arch_defaults(
        args,
        decoder_chunk_size=2048,
        rel_pos_bias="rotary",
        no_affine_final_norm=True,
        share_decoder_input_output_embed=True,
    )


@register_model_architecture("mega_lm", "mega_lm_adaptive_big")
def mega_lm_adaptive_big(args):
    _adaptive(args)
    mega_lm_big(args)


@register_model_architecture("mega_lm", "mega_lm_wiki103")
def mega_lm_wiki103(args):
    mega_lm_adaptive_big(args)


@register_model_architecture("mega_lm", "mega_lm_adaptive_base")
def mega_lm_adaptive_base(args):
    set_stack_sizes(args, ("decoder",), 768, 1536, 1536, 128, 16, 16)
    _adaptive(args)
    mega_lm_base(args)


@register_model_architecture("mega_lm", "mega_lm_enwik8_base")
def mega_lm_enwik8_base(args):
    set_stack_sizes(args, ("decoder",), 512, 1024, 1024, 128, 16, 12)
    _enwik8(args)
    mega_lm_base(args)


@register_model_architecture("mega_lm", "mega_lm_enwik8_large")
def mega_lm_enwik8_large(args):
    set_stack_sizes(args, ("decoder",), 1024, 1536, 1536, 128, 16, 24)
    _enwik8(args)
    mega_lm_base(args)

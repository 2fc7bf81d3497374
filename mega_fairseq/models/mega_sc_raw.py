"""``mega_sc_raw``: Mega over raw waveforms, the Speech Commands classifier of the paper
(Ma et al. 2022, section 4.3 "Raw Speech Classification": 16 kHz waveforms of 16000
samples, no feature extraction), with the architectures of the authors' code
(``mega_sc_raw`` = ``mega_sc_raw_base``, ``mega_sc_raw_big``) so that its released SC-Raw
checkpoint has a model to load into, and ``mega_sc_raw_tiny`` for CPU tests and examples.

Why a model of its own rather than ``mega_encoder`` with a replaced input embedding (the
``lra-image`` route): a waveform is a sequence of real numbers, not of symbols.
``MegaEncoder.forward`` finds padding by comparing the inputs with the dictionary's pad
index (a sample that happens to equal 1.0 would be masked), re-aligns left-padded rows by
the same test, and ``mega_encoder`` needs a source dictionary and builds a masked-LM head
tied to a token table. Quantising the waveform into tokens (as ``lra-image`` does with
its 256 intensities) would need a 65,536-row table for 16-bit PCM (3.9M parameters kept
in the tied LM head of a 300k-parameter model) and cannot represent 24-bit or float
files. So this module reuses the pieces beneath ``mega_encoder`` -- the block stack
(:class:`~mega_fairseq.models.block_stack.MegaBlockStack`: embedding dropout, the Mega
blocks, the final norm), the one settings builder
(:func:`~mega_fairseq.models.mega_options.stack_settings`), the option groups and the
classification heads (:mod:`~mega_fairseq.models.encoder_heads`) -- under a float input:

* :class:`RawSampleEmbedding`: each sample ``x`` (a real number) becomes ``x * w + b``
  (``w``, ``b`` in R^C): a linear map of the 1-channel waveform to the embedding
  dimension, not scaled by sqrt(C) (``--no-scale-embedding`` is always on);
* :class:`MegaRawAudioEncoder`: B x T float waveforms and their lengths -> T x B x C;
  padding comes from ``src_lengths`` (right-padded batches), never from the values;
* :class:`MegaSCRawModel`: mean pooling over the real samples (the original's ``mp``; it
  has no ``cls`` option) and named classification heads (dense -> activation (gelu) ->
  projection, inner size 2 x embed as the original's ``classifier_out_dim``).

Sizes and defaults, from the original's ``sc_raw`` architectures
(facebookresearch/mega, ``fairseq/models/speech_commands/model.py``) and its training
command (``examples/mega/README.sc.md``): 6 pre-norm blocks, embed 60, hidden 120, FFN
120 (= hidden), z 30, EMA ndim 16, silu, laplace attention, batchnorm, simple relative
bias, attention chunks of 1000, EMA kernel truncated to 1000 steps, 16000 positions,
dropout 0 (also attention/hidden/activation dropout); ``_big``: embed 72, hidden = FFN
144, z 36. The original trains with ``--lr 0.01`` (big 0.008), adam betas (0.9, 0.98),
``--weight-decay 0.01``, ``--clip-norm 1.0``, batch 20, linear decay over 250k updates
after 10k warm-up.

Differences from the original: it asserts that every input is a multiple of the chunk
size (16000 = 16 chunks); ours pads the last chunk and accepts any length up to
``--max-source-positions``. It has no padding mask (all its clips are 16000 samples);
ours masks samples beyond ``src_lengths`` (``speech_commands --short-clips mask``). Its
classifier applies ``--dropout`` after the dense layer; ours applies ``--pooler-dropout``
as RoBERTa's head (all 0 in the released configuration, so the outputs agree).

State-dict names of the original (``sc_raw`` model) -> ours, for a converter::

    encoder.encoder.embed_tokens.{weight,bias}  (C)   encoder.embed_tokens.{weight,bias}
    encoder.encoder.layers.L.*                        encoder.layers.L.* (the block names
                                                      of mega_fairseq/conversion/original_mega.py)
    encoder.encoder.final_norm.*                      encoder.final_norm.*
    classifier.0.0.{weight,bias}                      classification_heads.<head>.dense.*
    sentence_projection_layer.weight                  classification_heads.<head>.out_proj.weight
    (no bias)                                         classification_heads.<head>.out_proj.bias = 0
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.models import FairseqEncoder, FairseqEncoderModel, register_model, register_model_architecture
from fairseq.utils import safe_getattr

from mega_fairseq.errors import OptionError
from mega_fairseq.models.block_stack import MegaBlockStack
from mega_fairseq.models.encoder_heads import (
    HEAD_KINDS,
    MegaClassificationHead,
    find_head,
    reconcile_heads,
    store_head,
)
from mega_fairseq.models.mega_options import MegaCommonConfig, MegaEncoderConfig, StackSettings, stack_settings
from mega_fairseq.models.model_building import (
    model_config,
    refuse_foreign_checkpoint,
    set_arch_defaults,
    set_stack_sizes,
)
from mega_fairseq.modules.activations import ATTENTION_ACTIVATIONS
from mega_fairseq.modules.sequence_norm import NORM_TYPES

logger = logging.getLogger(__name__)

POOLER_ACTIVATIONS = tuple(utils.get_available_activation_fns())
DEFAULT_MAX_POSITIONS = 16000  # one second at 16 kHz, the original's input length


@dataclass
class MegaSCRawConfig(MegaCommonConfig, MegaEncoderConfig):
    # defaults = the ``mega_sc_raw`` architecture = ``mega_sc_raw_base``
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    attention_activation_fn: ChoiceEnum(ATTENTION_ACTIVATIONS) = field(
        default="laplace", metadata={"help": "attention activation function"}
    )
    normalization_type: ChoiceEnum(NORM_TYPES) = field(
        default="batchnorm", metadata={"help": "normalization layer of the Mega blocks"}
    )
    normalize_before: bool = field(
        default=True, metadata={"help": "pre-norm blocks (post-norm when false)"}
    )
    truncation_length: Optional[int] = field(
        default=1000,
        metadata={"help": "truncate the EMA kernel to this many steps (0 or -1: no truncation)"},
    )
    encoder_embed_dim: int = field(default=60, metadata={"help": "encoder embedding dimension"})
    encoder_hidden_dim: int = field(
        default=120, metadata={"help": "encoder gated attention value/hidden dimension"}
    )
    encoder_z_dim: int = field(
        default=30, metadata={"help": "encoder shared query/key representation dimension"}
    )
    encoder_n_dim: int = field(default=16, metadata={"help": "encoder EMA dimension per channel"})
    encoder_ffn_embed_dim: int = field(
        default=120, metadata={"help": "encoder normalized FFN hidden dimension"}
    )
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    encoder_chunk_size: int = field(
        default=1000,
        metadata={"help": "encoder attention chunk size for linear cost (-1 or 0: no chunking)"},
    )
    max_source_positions: Optional[int] = field(
        default=None,
        metadata={"help": "longest waveform in samples (default: the task's --clip-length, else 16000)"},
    )
    classification_head_inner_dim: Optional[int] = field(
        default=None,
        metadata={"help": "inner size of the classification heads (default: 2 x --encoder-embed-dim, "
                  "the original's classifier_out_dim)"},
    )
    pooler_activation_fn: ChoiceEnum(POOLER_ACTIVATIONS) = field(
        default="gelu", metadata={"help": "activation function of the classification heads"}
    )
    pooler_dropout: float = field(
        default=0.0, metadata={"help": "dropout probability in the classification heads"}
    )
    load_checkpoint_heads: bool = field(
        default=False,
        metadata={"help": "register the checkpoint's classification heads when loading"},
    )


class RawSampleEmbedding(nn.Module):
    """The input embedding of a 1-channel waveform: sample ``x`` -> ``x * weight + bias``.

    ``weight`` ~ N(0, 1) and ``bias`` ~ N(0, 0.1^2), both of size C (the inputs are
    normalised to unit variance by the task, so the embeddings start at unit scale).

    forward: samples B x T (float) -> B x T x C in the parameters' dtype."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(embedding_dim))
        self.bias = nn.Parameter(torch.empty(embedding_dim))
        nn.init.normal_(self.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.bias, mean=0.0, std=0.1)

    def forward(self, samples: Tensor) -> Tensor:
        return samples.to(self.weight.dtype).unsqueeze(-1) * self.weight + self.bias


def length_padding_mask(src_lengths: Optional[Tensor], batch: int, length: int,
                        device: torch.device) -> Optional[Tensor]:
    """B x T bool mask (True past each row's length) of a right-padded batch; None when
    ``src_lengths`` is None or every row is full."""
    if src_lengths is None:
        return None
    src_lengths = src_lengths.reshape(-1).to(device)
    if src_lengths.numel() != batch:
        raise ValueError(f"src_lengths must hold one length per row ({batch}), got {src_lengths.numel()}")
    if src_lengths.numel() and (int(src_lengths.min()) < 1 or int(src_lengths.max()) > length):
        raise ValueError(
            f"src_lengths must lie in [1, {length}] (the batch's length), got "
            f"{int(src_lengths.min())} to {int(src_lengths.max())}"
        )
    if bool((src_lengths == length).all()):
        return None
    positions = torch.arange(length, device=device)
    return positions.unsqueeze(0) >= src_lengths.unsqueeze(1)


class MegaRawAudioEncoder(MegaBlockStack, FairseqEncoder):
    """Bidirectional Mega blocks over a raw-sample embedding (see the module docstring).

    Args:
        settings: the stack's settings (non-causal blocks; ``max_positions``: the longest
            waveform in samples)
    """

    def __init__(self, settings: StackSettings):
        super().__init__(None)
        if settings.layer.causal:
            raise ValueError("the raw-audio Mega encoder needs non-causal block settings")
        self.embed_dim = settings.layer.embed_dim
        self.embed_tokens = RawSampleEmbedding(self.embed_dim)
        self.build_stack(settings)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                return_all_hiddens: bool = False, **unused) -> Dict[str, List[Tensor]]:
        """src_tokens: B x T float waveforms, right-padded; src_lengths: B real lengths
        (None: every row is T samples long).

        Returns ``encoder_out`` [T x B x C] (zeros at padding), ``encoder_padding_mask``
        [B x T] (True at padding), ``encoder_embedding`` [B x T x C], ``encoder_states``
        (T x B x C after each block with ``return_all_hiddens``), ``src_lengths`` [B x 1].
        """
        if src_tokens.dim() != 2:
            raise ValueError(f"expected B x T waveforms, got shape {tuple(src_tokens.shape)}")
        if not src_tokens.dtype.is_floating_point:
            raise ValueError(
                f"expected floating-point waveform samples, got dtype {src_tokens.dtype} (the "
                "mega_sc_raw models read raw audio, e.g. from the speech_commands task)"
            )
        batch, length = src_tokens.shape
        if length > self.max_positions():
            raise ValueError(
                f"waveforms of {length} samples are longer than the model's {self.max_positions()} "
                "(--max-source-positions)"
            )
        padding_mask = length_padding_mask(src_lengths, batch, length, src_tokens.device)

        embedding = self.embed_scale * self.embed_tokens(src_tokens)
        x = self.block_input(embedding, padding_mask)  # T x B x C
        x, states = self.run_blocks(x, padding_mask, return_all_hiddens)
        if padding_mask is None:
            padding_mask = torch.zeros(batch, length, dtype=torch.bool, device=src_tokens.device)
        if src_lengths is None:
            src_lengths = torch.full((batch,), length, dtype=torch.long, device=src_tokens.device)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding_mask],
            "encoder_embedding": [embedding],
            "encoder_states": states,
            "src_tokens": [],
            "src_lengths": [src_lengths.reshape(-1, 1)],
        }


def _positive_or_none(value, option: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise OptionError(f"--{option} must be a positive integer, got {value}")
    return int(value)


def _task_max_positions(task) -> Optional[int]:
    value = task.max_positions() if callable(getattr(task, "max_positions", None)) else None
    return value if isinstance(value, int) and value > 0 else None


def _record(cfg, name: str, value) -> None:
    """Record a resolved option in the model config (saved with checkpoints)."""
    try:
        setattr(cfg, name, value)
    except Exception:  # a read-only config: the model still works
        logger.debug("could not record %s=%s in the model config", name, value)


@register_model("mega_sc_raw", dataclass=MegaSCRawConfig)
class MegaSCRawModel(FairseqEncoderModel):
    """Raw-waveform Mega classifier (see the module docstring).

    ``forward(src_tokens B x T float, src_lengths B, classification_head_name=name)``
    returns ``(B x num_classes logits, extra)``; without a head name ``(B x T x C final
    states, extra)``; ``extra = {"inner_states": [T x B x C] with return_all_hiddens else
    None, "padding_mask": B x T}``.
    """

    def __init__(self, cfg, encoder: MegaRawAudioEncoder):
        super().__init__(encoder)
        self.args = cfg
        self.embed_dim = encoder.embed_dim
        self.classification_head_inner_dim = cfg.classification_head_inner_dim or 2 * self.embed_dim
        self.pooler_activation_fn = str(cfg.pooler_activation_fn)
        self.pooler_dropout = cfg.pooler_dropout
        self.classification_heads = nn.ModuleDict()

    @classmethod
    def build_model(cls, cfg: MegaSCRawConfig, task):
        cfg = model_config(cfg, "mega_sc_raw", MegaSCRawConfig)
        if str(cfg.pooler_activation_fn) not in POOLER_ACTIVATIONS:
            raise OptionError(
                f"--pooler-activation-fn must be one of {list(POOLER_ACTIVATIONS)}, "
                f"got {cfg.pooler_activation_fn!r}"
            )
        if not 0.0 <= cfg.pooler_dropout < 1.0:
            raise OptionError(f"--pooler-dropout must lie in [0, 1), got {cfg.pooler_dropout}")
        _positive_or_none(cfg.classification_head_inner_dim, "classification-head-inner-dim")
        max_positions = (_positive_or_none(cfg.max_source_positions, "max-source-positions")
                         or _task_max_positions(task) or DEFAULT_MAX_POSITIONS)
        _record(cfg, "max_source_positions", max_positions)
        _record(cfg, "no_scale_embedding", True)  # the raw-sample embedding is never scaled
        encoder = MegaRawAudioEncoder(stack_settings(cfg, "encoder", max_positions))
        return cls(cfg, encoder)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                features_only: bool = False, return_all_hiddens: bool = False,
                classification_head_name: Optional[str] = None, **kwargs):
        """src_tokens: B x T float waveforms (right-padded); src_lengths: B. See the class
        docstring for the outputs (``features_only`` changes nothing: the model has no
        other output than features and heads)."""
        features, extra = self.extract_features(src_tokens, src_lengths, return_all_hiddens)
        if classification_head_name is None:
            return features, extra
        head = find_head(self, HEAD_KINDS["classification"], classification_head_name)
        return head(self.pool(features, extra["padding_mask"])), extra

    def extract_features(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                         return_all_hiddens: bool = False, **kwargs):
        """Final states B x T x C and ``{"inner_states", "padding_mask"}``."""
        encoder_out = self.encoder(src_tokens, src_lengths, return_all_hiddens=return_all_hiddens)
        features = encoder_out["encoder_out"][0].transpose(0, 1)
        extra = {
            "inner_states": encoder_out["encoder_states"] if return_all_hiddens else None,
            "padding_mask": encoder_out["encoder_padding_mask"][0],
        }
        return features, extra

    @staticmethod
    def pool(features: Tensor, padding_mask: Tensor) -> Tensor:
        """Mean of the final states over the real samples: B x T x C, B x T -> B x C."""
        keep = (~padding_mask).unsqueeze(-1).type_as(features)
        return (features * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def register_classification_head(self, name: str, num_classes: Optional[int] = None,
                                     inner_dim: Optional[int] = None, input_multiplier: int = 1,
                                     **kwargs):
        """A head ``name``: pooled B x C -> B x num_classes logits (dense of
        ``inner_dim``, default ``--classification-head-inner-dim``, then the pooler activation)."""
        if num_classes is None or num_classes <= 0:
            raise ValueError(f"classification head {name!r} needs a positive num_classes, got {num_classes}")
        if input_multiplier != 1:
            raise ValueError("the mega_sc_raw heads classify one waveform (input_multiplier=1)")
        store_head(self, HEAD_KINDS["classification"], name, MegaClassificationHead(
            self.embed_dim, inner_dim or self.classification_head_inner_dim, num_classes,
            self.pooler_activation_fn, self.pooler_dropout,
        ))

    def max_positions(self):
        return self.encoder.max_positions()

    def upgrade_state_dict_named(self, state_dict, name):
        """Refuse a checkpoint of another model; reconcile the heads as ``mega_encoder``
        does (checkpoint heads this model lacks are dropped with a warning, or registered
        with ``--load-checkpoint-heads``)."""
        prefix = f"{name}." if name else ""
        refuse_foreign_checkpoint(
            state_dict,
            {
                "Mega encoder blocks": prefix + "encoder.layers.0.self_attn.ema.",
                "raw-sample embedding": prefix + "encoder.embed_tokens.bias",
            },
            "a 'mega_sc_raw' model",
            "load it with the model type it was trained with",
        )
        super().upgrade_state_dict_named(state_dict, name)
        load_heads = bool(safe_getattr(self.args, "load_checkpoint_heads", False))
        reconcile_heads(self, state_dict, prefix, HEAD_KINDS["classification"], load_heads)


def _sc_raw(args, embed, hidden, ffn, z, layers, n=16, chunk=1000, truncation=1000):
    set_stack_sizes(args, ("encoder",), embed, hidden, ffn, z, n, layers)
    set_arch_defaults(
        args,
        normalization_type="batchnorm",
        normalize_before=True,
        activation_fn="silu",
        attention_activation_fn="laplace",
        rel_pos_bias="simple",
        dropout=0.0,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        encoder_chunk_size=chunk,
        truncation_length=truncation,
        pooler_activation_fn="gelu",
        pooler_dropout=0.0,
    )


@register_model_architecture("mega_sc_raw", "mega_sc_raw_base")
def mega_sc_raw_base(args):
    """The original's ``mega_sc_raw_base`` (= ``mega_sc_raw``, the config defaults):
    6 pre-norm blocks, embed 60, hidden = FFN 120, z 30, ndim 16, chunk 1000, truncation
    1000 (343,144 parameters with a 10-class head)."""
    _sc_raw(args, 60, 120, 120, 30, 6)


@register_model_architecture("mega_sc_raw", "mega_sc_raw_big")
def mega_sc_raw_big(args):
    """The original's ``mega_sc_raw_big``: embed 72, hidden = FFN 144, z 36, 6 blocks
    (475,900 parameters with a 10-class head)."""
    _sc_raw(args, 72, 144, 144, 36, 6)


@register_model_architecture("mega_sc_raw", "mega_sc_raw_tiny")
def mega_sc_raw_tiny(args):
    """2 small blocks (embed 32, hidden = FFN 64, z 16, ndim 8) for CPU tests and
    examples; attention chunks of 200 (a fifth of the base model's: the chunked attention
    dominates the cost on a CPU), EMA truncation 1000 as the base model (34,504 parameters
    with a 10-class head)."""
    _sc_raw(args, 32, 64, 64, 16, 2, n=8, chunk=200)

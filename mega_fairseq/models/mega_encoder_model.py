"""``mega_encoder``: a bidirectional Mega encoder in the RoBERTa mould, for fairseq's
``masked_lm``, ``sentence_prediction`` and ``sentence_ranking`` tasks (and this package's
token-classification / LRA tasks).

The model is a :class:`~fairseq.models.FairseqEncoderModel` around
:class:`~mega_fairseq.models.mega_encoder.MegaEncoder` with

* a masked-LM head (dense -> activation -> LayerNorm -> projection to the vocabulary,
  tied to the token embeddings unless ``--untie-lm-head``; ``--lm-head-type`` dense_tanh /
  linear: the Hugging Face port's heads, with and without its hidden dense layer),
* named sentence classification heads (``classification_heads``) over a pooled sentence
  vector (``--sentence-rep cls``: the first token's final state, which is fairseq's
  ``<s>`` in its masked_lm / sentence_prediction data; ``mean``: mean over the real tokens),
  optionally over a pair of sentences ([u, v, u*v, |u-v|], ``classify_pair``),
* named token heads (``token_heads``) over every token's final state,
* optional token-type (segment) embeddings (``--type-vocab-size``),
* :meth:`MegaEncoderModel.replace_token_embedding`, the hook through which a task puts
  another input embedding in place of the token table (``lra-image``'s pixel values).

The heads live in :mod:`~mega_fairseq.models.encoder_heads`, the ``--arch`` presets in
:mod:`~mega_fairseq.models.mega_encoder_presets`.

Returned B x T tensors (features, token-head logits, ``padding_mask``) are right-aligned:
left-padded inputs are moved to the right before the blocks run (see ``MegaEncoder``).
fairseq's masked_lm / sentence_prediction / sentence_ranking data is right-padded, so for
them the output order is the input order.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.models import FairseqEncoderModel, register_model
from fairseq.utils import safe_getattr

from mega_fairseq.errors import OptionError
from mega_fairseq.models.encoder_hub import MegaEncoderHubInterface
from mega_fairseq.models.hub_loading import load_for_hub
from mega_fairseq.models.mega_encoder import MegaEncoder
from mega_fairseq.models.mega_options import (
    MegaCommonConfig,
    MegaEncoderConfig,
    stack_settings,
)
from mega_fairseq.models.encoder_heads import (
    HEAD_KINDS,
    LM_HEAD_TYPES,
    MegaClassificationHead,
    MegaLMHead,
    MegaTokenHead,
    find_head,
    reconcile_heads,
    store_head,
)
from mega_fairseq.models.model_building import (
    build_embedding,
    refuse_foreign_checkpoint,
    model_config,
)
from mega_fairseq.models.padding import any_true, right_align

logger = logging.getLogger(__name__)

SENTENCE_REPS = ("cls", "mean")
POOLER_ACTIVATIONS = tuple(utils.get_available_activation_fns())
DEFAULT_MAX_POSITIONS = 512  # RoBERTa's default when neither the model nor the task says


@dataclass
class MegaEncoderModelConfig(MegaCommonConfig, MegaEncoderConfig):
    # defaults = the ``mega_encoder`` architecture = ``mega_encoder_base`` (fairseq registers
    # the model name as an architecture with these defaults): 12 pre-norm blocks, embed 768,
    # hidden/FFN 1536, z 128, EMA ndim 16
    encoder_embed_dim: int = field(default=768, metadata={"help": "encoder embedding dimension"})
    encoder_hidden_dim: int = field(
        default=1536, metadata={"help": "encoder gated attention value/hidden dimension"}
    )
    encoder_ffn_embed_dim: int = field(
        default=1536, metadata={"help": "encoder normalized FFN hidden dimension"}
    )
    encoder_layers: int = field(default=12, metadata={"help": "number of encoder layers"})
    normalize_before: bool = field(
        default=True, metadata={"help": "pre-norm blocks (post-norm when false)"}
    )
    max_source_positions: Optional[int] = field(
        default=None,
        metadata={
            "help": "maximum input length (default: --max-positions, else the masked_lm "
            "task's --tokens-per-sample, else the task's max positions, else 512)"
        },
    )
    max_positions: Optional[int] = field(
        default=None,
        metadata={
            "help": "maximum input length, RoBERTa's name for --max-source-positions (which "
            "wins when both are set); fairseq's sentence_prediction task sets it from its "
            "own --max-positions, and sentence_ranking needs it on the command line"
        },
    )
    type_vocab_size: int = field(
        default=0,
        metadata={
            "help": "number of token types (segments) with embeddings summed with the token "
            "embeddings; 0: no token-type embeddings (token_types inputs are ignored)"
        },
    )
    sentence_rep: ChoiceEnum(SENTENCE_REPS) = field(
        default="cls",
        metadata={
            "help": "sentence representation of the classification heads: 'cls' (the first "
            "token's final state, fairseq's <s>) or 'mean' (mean over non-padding tokens)"
        },
    )
    untie_lm_head: bool = field(
        default=False,
        metadata={"help": "do not tie the masked-LM output projection to the token embeddings"},
    )
    lm_head_type: ChoiceEnum(LM_HEAD_TYPES) = field(
        default="dense_norm",
        metadata={"help": "masked-LM head before its projection: 'dense_norm' (dense -> "
                  "--activation-fn -> LayerNorm, as RoBERTa), 'dense_tanh' (dense -> tanh, the "
                  "Hugging Face port's add_lm_hidden_dense_layer) or 'linear' (none)"},
    )
    pooler_activation_fn: ChoiceEnum(POOLER_ACTIVATIONS) = field(
        default="tanh", metadata={"help": "activation function of the classification heads"}
    )
    pooler_dropout: float = field(
        default=0.0, metadata={"help": "dropout probability in the classification/token heads"}
    )
    classification_head_inner_dim: Optional[int] = field(
        default=None,
        metadata={"help": "hidden dimension of the classification heads (default: the "
                  "embedding dimension)"},
    )
    load_checkpoint_heads: bool = field(
        default=False,
        metadata={"help": "register the checkpoint's classification/token heads when loading"},
    )


def _positive(value, option: str) -> int:
    if value is None or int(value) != value or value <= 0:
        raise OptionError(f"--{option} must be a positive integer, got {value}")
    return int(value)


def _resolve_max_positions(cfg, task) -> int:
    """--max-source-positions, else --max-positions, else the task's tokens per sample
    (masked_lm) or max positions, else 512."""
    for option in ("max_source_positions", "max_positions"):
        value = safe_getattr(cfg, option, None)
        if value is not None:
            return _positive(value, option.replace("_", "-"))
    task_cfg = getattr(task, "cfg", None)
    if task_cfg is None:
        task_cfg = getattr(task, "args", None)
    tokens_per_sample = safe_getattr(task_cfg, "tokens_per_sample", None)
    if isinstance(tokens_per_sample, int) and tokens_per_sample > 0:
        return tokens_per_sample
    task_max = task.max_positions() if callable(getattr(task, "max_positions", None)) else None
    if isinstance(task_max, int) and task_max > 0:
        return task_max
    return DEFAULT_MAX_POSITIONS


def _set_option(cfg, name: str, value) -> None:
    """Record a resolved option in the model config (saved with checkpoints)."""
    try:
        setattr(cfg, name, value)
    except Exception:  # a read-only config: the model still works, the checkpoint keeps None
        logger.debug("could not record %s=%s in the model config", name, value)


@register_model("mega_encoder", dataclass=MegaEncoderModelConfig)
class MegaEncoderModel(FairseqEncoderModel):
    """Bidirectional Mega encoder with masked-LM, sentence-classification and token heads.

    ``forward`` returns ``(x, extra)``; ``extra = {"inner_states": [T x B x C after each
    block] with return_all_hiddens else None, "padding_mask": B x T (True at padding)}``.
    All B x T outputs are right-aligned (left-padded input is re-aligned; fairseq's
    masked_lm / sentence_prediction data is right-padded, so its order is unchanged).
    """

    def __init__(self, cfg, encoder: MegaEncoder, lm_head: MegaLMHead):
        super().__init__(encoder)
        self.args = cfg  # fairseq's sentence_prediction criterion reads model.args
        self.embed_dim = encoder.embed_tokens.embedding_dim
        self.sentence_rep = str(cfg.sentence_rep)
        self.pooler_activation_fn = str(cfg.pooler_activation_fn)
        self.pooler_dropout = cfg.pooler_dropout
        self.lm_head = lm_head
        self.classification_heads = nn.ModuleDict()
        self.token_heads = nn.ModuleDict()
        self._warned_ignored_token_types = False

    @classmethod
    def hub_models(cls):
        return {}

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt",
                        data_name_or_path=".", bpe=None, **kwargs):
        """Load a trained ``mega_encoder`` checkpoint as a
        :class:`~mega_fairseq.models.encoder_hub.MegaEncoderHubInterface` (``encode``,
        ``decode``, ``extract_features``, ``predict``, ``fill_mask``), in eval mode, with
        the checkpoint's classification/token heads. ``data_name_or_path``: the folder of
        the dictionary (relative to the model folder when it starts with '.'; with
        sentence_prediction, the folder holding ``input0/``); ``bpe`` (e.g.
        'sentencepiece', with ``sentencepiece_model=...``) replaces the checkpoint's
        ``--bpe`` (None: keep it; most training runs have none, and the hub then takes
        whitespace-separated dictionary symbols); ``kwargs`` override other saved options.
        A checkpoint of another model type is refused with its type named."""
        if bpe is not None:
            kwargs["bpe"] = bpe
        loaded = load_for_hub(cls, "a 'mega_encoder' model", model_name_or_path,
                              checkpoint_file, data_name_or_path, load_checkpoint_heads=True,
                              **kwargs)
        if len(loaded["models"]) != 1:
            raise ValueError(f"the mega_encoder hub takes one checkpoint file, got "
                             f"{len(loaded['models'])}: {checkpoint_file}")
        return MegaEncoderHubInterface(loaded["args"], loaded["task"], loaded["models"][0]).eval()

    @classmethod
    def build_model(cls, cfg: MegaEncoderModelConfig, task):
        cfg = model_config(cfg, "mega_encoder", MegaEncoderModelConfig)
        dictionary = getattr(task, "source_dictionary", None)
        if dictionary is None:
            raise OptionError(
                f"the 'mega_encoder' model needs a task with a source dictionary (e.g. "
                f"masked_lm, sentence_prediction, sentence_ranking); task "
                f"{type(task).__name__} has none"
            )
        if str(cfg.sentence_rep) not in SENTENCE_REPS:
            raise OptionError(
                f"--sentence-rep must be one of {list(SENTENCE_REPS)}, got {cfg.sentence_rep!r}"
            )
        if str(cfg.pooler_activation_fn) not in POOLER_ACTIVATIONS:
            raise OptionError(
                f"--pooler-activation-fn must be one of {list(POOLER_ACTIVATIONS)}, "
                f"got {cfg.pooler_activation_fn!r}"
            )
        if cfg.type_vocab_size is None or cfg.type_vocab_size < 0:
            raise OptionError(
                f"--type-vocab-size must be 0 (no token types) or positive, got {cfg.type_vocab_size}"
            )
        lm_head_type = str(safe_getattr(cfg, "lm_head_type", "dense_norm"))
        if lm_head_type not in LM_HEAD_TYPES:
            raise OptionError(f"--lm-head-type must be one of {list(LM_HEAD_TYPES)}, got {lm_head_type!r}")
        if not 0.0 <= cfg.pooler_dropout < 1.0:
            raise OptionError(f"--pooler-dropout must lie in [0, 1), got {cfg.pooler_dropout}")
        inner_dim = safe_getattr(cfg, "classification_head_inner_dim", None)
        if inner_dim is not None and (isinstance(inner_dim, bool) or not isinstance(inner_dim, int)
                                      or inner_dim <= 0):
            raise OptionError(f"--classification-head-inner-dim must be a positive integer, got {inner_dim!r}")
        max_positions = _resolve_max_positions(cfg, task)
        _set_option(cfg, "max_source_positions", max_positions)
        # block settings first: bad sizes are refused naming their options
        settings = stack_settings(cfg, "encoder", max_positions)

        embed_dim = cfg.encoder_embed_dim
        embed_tokens = build_embedding(dictionary, embed_dim)
        embed_token_types = None
        if cfg.type_vocab_size > 0:
            embed_token_types = nn.Embedding(cfg.type_vocab_size, embed_dim)
            nn.init.normal_(embed_token_types.weight, mean=0.0, std=embed_dim ** -0.5)
        encoder = MegaEncoder(settings, dictionary, embed_tokens, embed_token_types)
        lm_head = MegaLMHead(
            embed_dim,
            len(dictionary),
            str(cfg.activation_fn),
            weight=None if cfg.untie_lm_head else embed_tokens.weight,
            head_type=lm_head_type,
        )
        return cls(cfg, encoder, lm_head)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        features_only: bool = False,
        return_all_hiddens: bool = False,
        classification_head_name: Optional[str] = None,
        token_head_name: Optional[str] = None,
        masked_tokens: Optional[Tensor] = None,
        token_types: Optional[Tensor] = None,
        **kwargs,
    ):
        """src_tokens: B x T (right or left padded); token_types (alias ``segment_labels``):
        B x T ids aligned with src_tokens.

        Returns ``(x, extra)`` with x:

        * ``classification_head_name``: B x num_classes logits of the pooled sentence,
        * ``token_head_name``: B x T x num_labels logits,
        * ``features_only``: B x T x C final states,
        * otherwise masked-LM logits B x T x V, or M x V at the M ``masked_tokens``
          positions (B x T bool, in the input's order) as RoBERTa.
        """
        if classification_head_name is not None and token_head_name is not None:
            raise ValueError("pass classification_head_name or token_head_name, not both")
        token_types = self._token_types(token_types, kwargs)
        features, extra = self.extract_features(
            src_tokens, src_lengths, return_all_hiddens=return_all_hiddens, token_types=token_types
        )
        if classification_head_name is not None:
            head = self._sentence_head(classification_head_name, pair=False)
            return head(self._pool(features, extra["padding_mask"])), extra
        if token_head_name is not None:
            return find_head(self, HEAD_KINDS["token"], token_head_name)(features), extra
        if features_only:
            return features, extra
        if masked_tokens is not None:
            input_padding = src_tokens.eq(self.encoder.padding_idx)
            if any_true(input_padding[:, 0], unknown=False):
                masked_tokens = right_align(masked_tokens, input_padding)
        return self.lm_head(features, masked_tokens), extra

    def extract_features(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_types: Optional[Tensor] = None,
        **kwargs,
    ):
        """Final states B x T x C (right-aligned) and ``{"inner_states", "padding_mask"}``."""
        token_types = self._token_types(token_types, kwargs)
        encoder_out = self.encoder(
            src_tokens, src_lengths, return_all_hiddens=return_all_hiddens, token_types=token_types
        )
        features = encoder_out["encoder_out"][0].transpose(0, 1)  # T x B x C -> B x T x C
        extra = {
            "inner_states": encoder_out["encoder_states"] if return_all_hiddens else None,
            "padding_mask": encoder_out["encoder_padding_mask"][0],
        }
        return features, extra

    def sentence_representation(self, src_tokens: Tensor, token_types: Optional[Tensor] = None,
                                **kwargs) -> Tensor:
        """B x C sentence vectors, pooled per ``--sentence-rep``."""
        features, extra = self.extract_features(src_tokens, token_types=token_types, **kwargs)
        return self._pool(features, extra["padding_mask"])

    def classify_pair(self, head_name: str, first: Dict, second: Dict) -> Tensor:
        """Encodes the net inputs ``first`` and ``second`` (dicts with src_tokens, ...) into
        sentence vectors u, v (B x C) and applies the pair head ``head_name`` to
        [u, v, u*v, |u-v|] (registered with ``input_multiplier=4``) or to [u, v]
        (``input_multiplier=2``) -> B x num_classes."""
        head = self._sentence_head(head_name, pair=True)
        u = self.sentence_representation(**first)
        v = self.sentence_representation(**second)
        if u.shape != v.shape:
            raise ValueError(
                f"classify_pair needs equally many first and second inputs, got {u.size(0)} "
                f"and {v.size(0)}"
            )
        if head.input_multiplier == 2:
            return head(torch.cat([u, v], dim=-1))
        return head(torch.cat([u, v, u * v, torch.abs(u - v)], dim=-1))

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def _pool(self, features: Tensor, padding_mask: Tensor) -> Tensor:
        if self.sentence_rep == "cls":
            return features[:, 0, :]
        keep = (~padding_mask).unsqueeze(-1).type_as(features)
        return (features * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)

    def _token_types(self, token_types: Optional[Tensor], kwargs) -> Optional[Tensor]:
        segment_labels = kwargs.pop("segment_labels", None)
        if token_types is None:
            token_types = segment_labels
        if token_types is not None and self.encoder.embed_token_types is None:
            if not self._warned_ignored_token_types:
                logger.warning(
                    "token_types are ignored: the model has no token-type embeddings "
                    "(--type-vocab-size 0)"
                )
                self._warned_ignored_token_types = True
            return None
        return token_types

    # ------------------------------------------------------------------ heads
    def register_classification_head(self, name: str, num_classes: Optional[int] = None,
                                      inner_dim: Optional[int] = None, input_multiplier: int = 1,
                                      **kwargs):
        """A sentence head ``name``: B x num_classes logits of the pooled sentence vector
        (for ``classify_pair``: ``input_multiplier=4`` of [u, v, u*v, |u-v|], 2 of [u, v])."""
        if num_classes is None or num_classes <= 0:
            raise ValueError(
                f"classification head {name!r} needs a positive num_classes, got {num_classes}"
            )
        if input_multiplier not in (1, 2, 4):
            raise ValueError(
                f"input_multiplier must be 1 (one sentence), 2 (a pair: [u, v]) or 4 (a pair: "
                f"[u, v, u*v, |u-v|]), got {input_multiplier}"
            )
        inner_dim = inner_dim or safe_getattr(self.args, "classification_head_inner_dim", None)
        store_head(self, HEAD_KINDS["classification"], name, MegaClassificationHead(
            self.embed_dim, inner_dim or self.embed_dim, num_classes, self.pooler_activation_fn,
            self.pooler_dropout, input_multiplier,
        ))

    def register_token_head(self, name: str, num_labels: int):
        """A per-token head ``name``: B x T x num_labels logits."""
        if num_labels is None or num_labels <= 0:
            raise ValueError(f"token head {name!r} needs a positive num_labels, got {num_labels}")
        store_head(self, HEAD_KINDS["token"], name,
                   MegaTokenHead(self.embed_dim, num_labels, self.pooler_dropout))

    def _sentence_head(self, name: str, pair: bool) -> MegaClassificationHead:
        head = find_head(self, HEAD_KINDS["classification"], name)
        if pair and head.input_multiplier == 1:
            raise ValueError(
                f"classification head {name!r} takes one sentence; classify_pair needs a head "
                "registered with input_multiplier=4 or 2"
            )
        if not pair and head.input_multiplier != 1:
            raise ValueError(
                f"classification head {name!r} takes a sentence pair (input_multiplier="
                f"{head.input_multiplier}); use classify_pair"
            )
        return head

    def replace_token_embedding(self, embed_tokens: nn.Module) -> None:
        """Use ``embed_tokens`` as the encoder's token embedding (see
        :meth:`MegaEncoder.replace_token_embedding`)."""
        self.encoder.replace_token_embedding(embed_tokens)

    def max_positions(self):
        return self.encoder.max_positions()

    # ------------------------------------------------------------------ checkpoints
    def upgrade_state_dict_named(self, state_dict, name):
        """Before the tensors are copied: refuse a checkpoint that is not a ``mega_encoder``,
        check the dictionary (``MegaEncoder``), and reconcile the heads as RoBERTa does:
        checkpoint heads this model lacks are dropped with a warning (or registered with
        ``--load-checkpoint-heads``), heads of other sizes are dropped with a warning, and
        this model's heads missing from the checkpoint keep their current weights."""
        prefix = f"{name}." if name else ""
        refuse_foreign_checkpoint(
            state_dict,
            {
                "Mega encoder blocks": prefix + "encoder.layers.0.self_attn.ema.",
                "masked-LM head": prefix + "lm_head.",
            },
            "a 'mega_encoder' model",
            "load it with the model type it was trained with",
        )
        super().upgrade_state_dict_named(state_dict, name)
        load_heads = bool(safe_getattr(self.args, "load_checkpoint_heads", False))
        for kind in HEAD_KINDS.values():
            reconcile_heads(self, state_dict, prefix, kind, load_heads)

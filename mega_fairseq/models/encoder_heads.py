"""The output heads of ``mega_encoder``: the masked-LM head, and the named heads a model
registers by kind (sentence classification over a pooled vector, per-token labels).

Each named kind is a :class:`HeadKind`: how a head of that kind is built, which sizes
identify it, and how those sizes are read back from a checkpoint, so that the model
registers, finds and reconciles heads of every kind with one piece of code.
"""

import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq import utils

from mega_fairseq.modules.activations import get_activation_fn

logger = logging.getLogger(__name__)

Sizes = Tuple[int, ...]


# --lm-head-type: what the masked-LM head computes before its vocabulary projection
LM_HEAD_TYPES = (
    "dense_norm",  # dense -> the blocks' activation -> LayerNorm (RoBERTa's head)
    "dense_tanh",  # dense -> tanh (the Hugging Face port's add_lm_hidden_dense_layer)
    "linear",  # nothing: the projection of the features (the port without that layer)
)


class MegaLMHead(nn.Module):
    """Masked-LM head: per ``head_type`` (:data:`LM_HEAD_TYPES`) dense -> activation ->
    LayerNorm, dense -> tanh, or nothing; then the vocabulary projection (+ bias)."""

    def __init__(self, embed_dim: int, vocab_size: int, activation: str,
                 weight: Optional[nn.Parameter] = None, head_type: str = "dense_norm"):
        super().__init__()
        if head_type not in LM_HEAD_TYPES:
            raise ValueError(f"head_type must be one of {list(LM_HEAD_TYPES)}, got {head_type!r}")
        self.head_type = head_type
        self.dense = nn.Linear(embed_dim, embed_dim) if head_type != "linear" else None
        self.activation_fn = get_activation_fn(activation) if head_type == "dense_norm" else torch.tanh
        self.layer_norm = nn.LayerNorm(embed_dim) if head_type == "dense_norm" else None
        if weight is None:
            weight = nn.Parameter(torch.empty(vocab_size, embed_dim))
            nn.init.normal_(weight, mean=0.0, std=embed_dim ** -0.5)
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, features: Tensor, masked_tokens: Optional[Tensor] = None) -> Tensor:
        """features: B x T x C; masked_tokens: B x T bool -> B x T x V, or M x V for the
        M masked positions (row-major order) when ``masked_tokens`` is given."""
        if masked_tokens is not None:
            features = features[masked_tokens, :]
        x = features
        if self.dense is not None:
            x = self.activation_fn(self.dense(x))
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.linear(x, self.weight) + self.bias


class MegaClassificationHead(nn.Module):
    """Sentence head as RoBERTa's: dropout -> dense -> activation -> dropout -> out_proj, over
    a pooled sentence vector of ``input_multiplier`` x embed_dim features."""

    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, activation_fn: str,
                 pooler_dropout: float, input_multiplier: int = 1):
        super().__init__()
        self.input_multiplier = input_multiplier
        self.dense = nn.Linear(input_dim * input_multiplier, inner_dim)
        self.activation_fn = utils.get_activation_fn(activation_fn)
        self.dropout = nn.Dropout(p=pooler_dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)

    def forward(self, sentence: Tensor) -> Tensor:
        """sentence: B x (input_multiplier * C) -> B x num_classes."""
        x = self.dropout(sentence)
        x = self.dropout(self.activation_fn(self.dense(x)))
        return self.out_proj(x)


class MegaTokenHead(nn.Module):
    """Per-token head: dropout -> linear over each token's final state."""

    def __init__(self, input_dim: int, num_labels: int, pooler_dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(p=pooler_dropout)
        self.out_proj = nn.Linear(input_dim, num_labels)

    def forward(self, features: Tensor) -> Tensor:
        """features: B x T x C -> B x T x num_labels."""
        return self.out_proj(self.dropout(features))


class HeadKind:
    """One kind of named head: ``name`` ('classification', 'token'), the model attribute
    holding the heads (a ``ModuleDict``), and the sizes that identify a head."""

    name: str
    attribute: str

    def sizes_of(self, head: nn.Module) -> Sizes:
        raise NotImplementedError

    def sizes_in(self, state_dict, head_prefix: str) -> Optional[Sizes]:
        """The sizes of the head stored under ``head_prefix`` (None: incomplete)."""
        raise NotImplementedError

    def register_from_sizes(self, model, name: str, sizes: Sizes) -> None:
        raise NotImplementedError


class ClassificationHeads(HeadKind):
    name, attribute = "classification", "classification_heads"

    def sizes_of(self, head: MegaClassificationHead) -> Sizes:
        """(num_classes, inner_dim, input features)."""
        return (head.out_proj.out_features, head.dense.out_features, head.dense.in_features)

    def sizes_in(self, state_dict, head_prefix: str) -> Optional[Sizes]:
        out = state_dict.get(head_prefix + "out_proj.weight")
        dense = state_dict.get(head_prefix + "dense.weight")
        if out is None or dense is None:
            return None
        return (out.size(0), dense.size(0), dense.size(1))

    def register_from_sizes(self, model, name: str, sizes: Sizes) -> None:
        num_classes, inner_dim, input_dim = sizes
        if input_dim % model.embed_dim:
            raise ValueError(
                f"classification head {name!r} of the checkpoint takes {input_dim} inputs, not a "
                f"multiple of the embedding dimension {model.embed_dim}"
            )
        model.register_classification_head(name, num_classes, inner_dim,
                                           input_multiplier=input_dim // model.embed_dim)


class TokenHeads(HeadKind):
    name, attribute = "token", "token_heads"

    def sizes_of(self, head: MegaTokenHead) -> Sizes:
        """(num_labels,)."""
        return (head.out_proj.out_features,)

    def sizes_in(self, state_dict, head_prefix: str) -> Optional[Sizes]:
        out = state_dict.get(head_prefix + "out_proj.weight")
        return None if out is None else (out.size(0),)

    def register_from_sizes(self, model, name: str, sizes: Sizes) -> None:
        model.register_token_head(name, sizes[0])


HEAD_KINDS: Dict[str, HeadKind] = {kind.name: kind for kind in (ClassificationHeads(), TokenHeads())}


def find_head(model, kind: HeadKind, name: str) -> nn.Module:
    """The ``kind`` head ``name`` of ``model``; a ValueError lists the registered ones."""
    heads = getattr(model, kind.attribute)
    if name not in heads:
        raise ValueError(
            f"no {kind.name} head named {name!r}; registered {kind.name} heads: "
            f"{sorted(heads.keys()) or 'none'} (register_{kind.name}_head)"
        )
    return heads[name]


def store_head(model, kind: HeadKind, name: str, head: nn.Module) -> None:
    """Register ``head`` as ``name`` on the model's device and dtype, in its train/eval
    mode; replacing a head of other sizes is logged."""
    heads = getattr(model, kind.attribute)
    if name in heads and kind.sizes_of(heads[name]) != kind.sizes_of(head):
        logger.warning("re-registering %s head %r with sizes %s (previously %s)",
                       kind.name, name, kind.sizes_of(head), kind.sizes_of(heads[name]))
    weight = model.encoder.embed_tokens.weight
    heads[name] = head.to(device=weight.device, dtype=weight.dtype).train(model.training)


def reconcile_heads(model, state_dict, prefix: str, kind: HeadKind, load_heads: bool) -> None:
    """Before a checkpoint's tensors are copied, as RoBERTa does: checkpoint heads the
    model lacks are dropped with a warning (or registered when ``load_heads``), heads of
    other sizes are dropped with a warning, and the model's heads missing from the
    checkpoint keep their current weights."""
    heads = getattr(model, kind.attribute)
    head_prefix = f"{prefix}{kind.attribute}."
    names = sorted({k[len(head_prefix):].split(".")[0] for k in state_dict if k.startswith(head_prefix)})
    for name in names:
        keys = [k for k in state_dict if k.startswith(f"{head_prefix}{name}.")]
        sizes = kind.sizes_in(state_dict, f"{head_prefix}{name}.")
        if name not in heads:
            if load_heads and sizes is not None:
                kind.register_from_sizes(model, name, sizes)
                continue
            logger.warning("deleting %s head %r from the checkpoint: not present in the "
                           "current model", kind.name, name)
        elif sizes != kind.sizes_of(heads[name]):
            logger.warning("deleting %s head %r from the checkpoint: its dimensions %s differ "
                           "from the current model's %s", kind.name, name, sizes,
                           kind.sizes_of(heads[name]))
        else:
            continue
        for k in keys:
            del state_dict[k]
    for k, v in heads.state_dict().items():
        if head_prefix + k not in state_dict:
            logger.info("%s head parameter %s is not in the checkpoint: keeping the current "
                        "weights", kind.name, head_prefix + k)
            state_dict[head_prefix + k] = v

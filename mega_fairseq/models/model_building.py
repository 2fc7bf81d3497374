"""Pieces every Mega model's ``build_model`` and architecture presets use: token
embeddings, preset defaults and sizes, the warning for presets that YAML configs cannot apply, and
the dictionary check when a checkpoint is loaded."""

import argparse
import logging
from typing import Dict, Iterable, Optional

import torch.nn as nn

from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_NAME_REGISTRY
from fairseq.utils import safe_getattr

from mega_fairseq.models.option_names import option_attribute

logger = logging.getLogger(__name__)


def build_embedding(dictionary, embed_dim: int) -> nn.Embedding:
    """Token embeddings ~ N(0, embed_dim^-0.5) with a zero padding row."""
    embedding = nn.Embedding(len(dictionary), embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim ** -0.5)
    nn.init.constant_(embedding.weight[dictionary.pad()], 0.0)
    return embedding


def set_arch_defaults(args, **defaults) -> None:
    """Architecture presets: set each option the user did not set."""
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


def set_stack_sizes(args, sides, embed: int, hidden: int, ffn: int, z: int, n: int,
                    layers: int) -> None:
    """Architecture presets: the sizes of each of ``sides`` ('encoder', 'decoder'), each
    set only where the user did not set it."""
    sizes = dict(embed_dim=embed, hdim=hidden, ffn_hidden_dim=ffn, zdim=z, ndim=n,
                 num_layers=layers)
    for side in sides:
        set_arch_defaults(args, **{option_attribute(s, side): v for s, v in sizes.items()})


def model_config(cfg, model_name: str, config_class, preset_inputs: Iterable[str] = ()):
    """The typed config of a model's ``build_model``: fairseq's legacy path passes an
    argparse namespace (``build_model(args, task)`` with ``--arch`` presets, holding only
    the options set on the command line or by the preset), which becomes ``config_class``;
    presets a YAML config could not apply are reported (:func:`warn_if_preset_not_applied`)."""
    if isinstance(cfg, argparse.Namespace):
        cfg = config_class.from_namespace(cfg)
    warn_if_preset_not_applied(cfg, model_name, config_class, preset_inputs)
    return cfg


def warn_if_preset_not_applied(cfg, model_name: str, config_class, preset_inputs: Iterable[str] = ()):
    """fairseq applies ``--arch`` presets on the command line only: in a YAML/hydra config,
    ``_name: <preset>`` gets every unset option from the model's dataclass defaults before
    the preset runs, so the preset changes nothing.  Options holding the model default where
    the named preset differs are reported (on the command line they appear only when set
    back to the model default on purpose).  ``preset_inputs`` are options a preset reads to
    decide others (e.g. whether adaptive input is on)."""
    name = safe_getattr(cfg, "_name", None)
    if name in (None, model_name) or ARCH_MODEL_NAME_REGISTRY.get(name) != model_name:
        return
    preset = argparse.Namespace(**{o: safe_getattr(cfg, o, None) for o in preset_inputs})
    ARCH_CONFIG_REGISTRY[name](preset)
    defaults = config_class()
    stale = {
        option: value
        for option, value in sorted(vars(preset).items())
        if option not in preset_inputs
        and value != getattr(defaults, option)
        and str(safe_getattr(cfg, option, None)) == str(getattr(defaults, option))
    }
    if stale:
        logger.warning(
            "model %s: %s keep the %s defaults instead of the preset's values (%s); fairseq "
            "applies architecture presets on the command line (--arch) only. In YAML configs "
            "use '_name: %s' and set the sizes explicitly",
            name,
            ", ".join(f"{o}={safe_getattr(cfg, o, None)}" for o in stale),
            model_name,
            ", ".join(f"{o}={v}" for o, v in stale.items()),
            model_name,
        )


def refuse_foreign_checkpoint(state_dict, expected: Dict[str, str], model_label: str,
                              hint: str) -> None:
    """Called from a model's ``upgrade_state_dict_named`` before any tensor is copied:
    ``expected`` maps a part's description to a key prefix every checkpoint of this model
    has; a state dict lacking one is refused, naming what is missing and what is there."""
    missing = [part for part, key in expected.items() if not any(k.startswith(key) for k in state_dict)]
    if missing:
        found = sorted({".".join(k.split(".")[:3]) for k in state_dict})[:6]
        raise ValueError(
            f"the checkpoint is not {model_label}: it has no {' and no '.join(missing)} "
            f"(its parameters start with {', '.join(found)}, ...); {hint}"
        )


def check_checkpoint_vocabulary(state_dict, prefix: str, embed_tokens: nn.Module, dictionary,
                                side: str = "") -> None:
    """Called from ``upgrade_state_dict_named`` before the tensors are copied: a checkpoint
    trained with another dictionary fails here with both vocabulary sizes instead of torch's
    list of size mismatches."""
    checkpoint_size = _embedding_rows(state_dict, prefix + "embed_tokens.")
    current_size = _embedding_rows(embed_tokens.state_dict(), "")
    if None in (checkpoint_size, current_size) or checkpoint_size == current_size:
        return
    which = f"{side} " if side else ""
    raise ValueError(
        f"{which}dictionary mismatch: the checkpoint's vocabulary has {checkpoint_size} "
        f"symbols but the current {which}dictionary has {current_size} (both counts include "
        f"fairseq's {dictionary.nspecial} special symbols); the checkpoint was "
        "trained on data binarized with another dict.txt. Binarize the data with the "
        "checkpoint's dictionary (fairseq-preprocess --srcdict/--tgtdict <its dict files>) or "
        "train from scratch in a new --save-dir"
    )


def _embedding_rows(state_dict, prefix: str) -> Optional[int]:
    """Vocabulary size of the token embedding stored under ``prefix`` in a state dict:
    the rows of an ``nn.Embedding`` or the summed bands of an ``AdaptiveInput``; None when
    neither is there."""
    weight = state_dict.get(prefix + "weight")
    if weight is not None:
        return weight.size(0)
    rows, band = 0, 0
    while prefix + f"embeddings.{band}.0.weight" in state_dict:
        rows += state_dict[prefix + f"embeddings.{band}.0.weight"].size(0)
        band += 1
    return rows if band > 0 else None

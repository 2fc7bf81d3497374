"""``lra-text``: sequence classification of token/byte sequences (LRA ListOps, Text/IMDB)
and of document pairs (LRA Retrieval/AAN, ``--paired``).

Data (fairseq-preprocess'd, the layout of fairseq's ``sentence_prediction``)::

    DATA/input0/{dict.txt, train.bin/.idx, valid.bin/.idx, ...}   first (or only) input
    DATA/input1/{dict.txt, ...}                                   second document (--paired;
                                                                  binarize with --srcdict input0/dict.txt)
    DATA/label/{dict.txt, train.bin/.idx, ...}                    one label per line

Class ids are the label dictionary's order (label ``dict.txt`` line ``i`` = class ``i``).
Inputs keep the ``</s>`` fairseq-preprocess appends; an input longer than the model's
positions (``--max-positions``, default: the architecture's) is an error unless
``--shorten-method truncate``.  A label of a validation/test split that is not in the
label dictionary (fairseq-preprocess maps it to ``<unk>``) is an error.

Samples: ``net_input`` = ``{"src_tokens": B x T (right-padded), "src_lengths": B}``,
``net_input1`` likewise for the second document (``--paired`` only), ``target``: B class
ids.  ``build_model`` registers the classification head ``--classification-head-name``
(when paired: a head over ``[u, v, u*v, |u-v|]``, or ``[u, v]`` with ``--pair-features
concat``).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from omegaconf import II, MISSING

from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from mega_fairseq.errors import DataError, MissingDataError, OptionError
from mega_fairseq.tasks import binarized_data as bd
from mega_fairseq.tasks.model_limits import check_model_accepts, model_length_limit
from mega_fairseq.tasks.shortening import fit_length, shorten_method_choices
from mega_fairseq.tasks.lra_common import (
    check_num_classes,
    check_targets,
    classification_dataset,
    classification_head_name,
    warn_if_cls_pooling,
)

logger = logging.getLogger(__name__)

TEXT_SHORTEN_METHODS = shorten_method_choices(("none", "truncate"))
PAIR_FEATURES = ChoiceEnum(["product-difference", "concat"])
PAIR_MULTIPLIERS = {"product-difference": 4, "concat": 2}

@dataclass
class LRATextConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "data directory with input0/, [input1/,] label/"})
    num_classes: int = field(default=-1, metadata={"help": "number of classes (required)"})
    paired: bool = field(
        default=False,
        metadata={"help": "two inputs per example (DATA/input1), classified with model.classify_pair"},
    )
    pair_features: PAIR_FEATURES = field(
        default="product-difference",
        metadata={"help": "what the pair head of --paired reads: 'product-difference': [u, v, u*v, "
                  "|u-v|]; 'concat': [u, v] (the original Mega code's Retrieval head)"},
    )
    max_positions: Optional[int] = field(
        default=None,
        metadata={"help": "longest input in tokens, </s> included (default: the architecture's maximum)"},
    )
    shorten_method: TEXT_SHORTEN_METHODS = field(
        default="none",
        metadata={"help": "'truncate': cut inputs longer than --max-positions; "
                  "'none': such inputs are an error"},
    )
    no_shuffle: bool = field(default=False, metadata={"help": "keep the data order"})
    classification_head_name: str = II("criterion.classification_head_name")
    seed: int = II("common.seed")


@register_task("lra-text", dataclass=LRATextConfig)
class LRATextTask(bd.DictionaryAccessors, FairseqTask):
    """Text classification for the Long Range Arena (see the module docstring)."""

    cfg: LRATextConfig

    def __init__(self, cfg: LRATextConfig, data_dictionary: Dictionary, label_dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = data_dictionary
        self.label_dictionary = label_dictionary
        self._model_max_positions = None

    @classmethod
    def setup_task(cls, cfg: LRATextConfig, **kwargs):
        check_num_classes(cfg.num_classes)
        data_dict = bd.load_dictionary(cfg.data, "input0", "input")
        label_dict = bd.load_dictionary(cfg.data, "label", "label")
        num_labels = bd.count_labels(label_dict)
        if num_labels > cfg.num_classes:
            raise OptionError(f"the label dictionary has {num_labels} labels but --num-classes is {cfg.num_classes}")
        if num_labels < cfg.num_classes:
            logger.warning("the label dictionary has %d labels, fewer than --num-classes %d",
                           num_labels, cfg.num_classes)
        if cfg.paired and not os.path.isdir(os.path.join(cfg.data, "input1")):
            raise MissingDataError(f"--paired needs the second inputs in {os.path.join(cfg.data, 'input1')}")
        if not cfg.paired and os.path.isdir(os.path.join(cfg.data, "input1")):
            logger.warning("%s exists but --paired is not set: only input0 is used",
                           os.path.join(cfg.data, "input1"))
        logger.info("[input] dictionary: %d types, [label] dictionary: %d labels", len(data_dict), num_labels)
        return cls(cfg, data_dict, label_dict)

    # ------------------------------------------------------------------ data

    def _load_split(self, key: str, split: str, dictionary: Dictionary, combine: bool):
        return bd.load_binarized(self.cfg.data, key, split, dictionary, combine)

    def _targets(self, split: str, combine: bool) -> np.ndarray:
        """N class ids of ``split``; ValueError on unknown or malformed labels."""
        labels = self._load_split("label", split, self.label_dictionary, combine)
        nspecial = self.label_dictionary.nspecial
        eos, unk = self.label_dictionary.eos(), self.label_dictionary.unk()
        targets = np.empty(len(labels), dtype=np.int64)
        unknown = []
        for i in range(len(labels)):
            item = labels[i].tolist()
            if item and item[-1] == eos:
                item = item[:-1]
            if len(item) != 1:
                raise DataError(f"label/{split}: line {i + 1} has {len(item)} labels (one expected)")
            if item[0] == unk:
                unknown.append(i)
            targets[i] = item[0] - nspecial
        check_targets(targets, self.cfg.num_classes, f"label/{split}", unknown)
        return targets

    def load_dataset(self, split: str, combine: bool = False, **kwargs):
        keys = ["input0", "input1"] if self.cfg.paired else ["input0"]
        inputs, sizes = {}, []
        for number, key in enumerate(keys):
            tokens = self._load_split(key, split, self.source_dictionary, combine)
            length_sizes = np.asarray(tokens.sizes)
            tokens = fit_length(tokens, length_sizes, self.max_input_positions(), self.cfg.shorten_method,
                                f"{key}/{split}")
            inputs["net_input" if number == 0 else "net_input1"] = tokens
            sizes.append(np.asarray(tokens.sizes))
        if len(sizes) == 2 and len(sizes[0]) != len(sizes[1]):
            raise DataError(f"{split}: input0 has {len(sizes[0])} examples but input1 has {len(sizes[1])}")
        targets = self._targets(split, combine)
        if len(targets) != len(sizes[0]):
            raise DataError(f"{split}: {len(sizes[0])} inputs but {len(targets)} labels")
        self.datasets[split] = classification_dataset(
            inputs, sizes, targets, self.source_dictionary.pad(), self.cfg.seed, not self.cfg.no_shuffle,
        )
        logger.info("loaded %s: %d examples", split, len(targets))
        return self.datasets[split]

    # ------------------------------------------------------------------ model

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        warn_if_cls_pooling(model)
        self._model_max_positions = model_length_limit(model)
        if self.cfg.max_positions is not None:
            check_model_accepts(model, self.cfg.max_positions, f"--max-positions={self.cfg.max_positions}")
        model.register_classification_head(
            classification_head_name(self.cfg),
            num_classes=self.cfg.num_classes,
            input_multiplier=PAIR_MULTIPLIERS[str(self.cfg.pair_features)] if self.cfg.paired else 1,
        )
        return model

    def max_input_positions(self) -> Optional[int]:
        """Longest input (tokens, </s> included): --max-positions, else the model's."""
        if self.cfg.max_positions is not None:
            return self.cfg.max_positions
        return self._model_max_positions

    def max_positions(self):
        limit = self.max_input_positions()
        if self.cfg.paired:
            return (limit, limit)
        return limit

"""``token_classification``: one label per input token (tagging), for ``mega_encoder`` models.

Data (``DATA`` is the task's data argument)::

    DATA/input0/dict.txt, DATA/input0/{split}.bin/.idx   fairseq-preprocess --only-source
                                                        of the input text (tokens separated
                                                        by spaces, one example per line)
    DATA/label/dict.txt,  DATA/label/{split}.bin/.idx   fairseq-preprocess --only-source
                                                        of the label text: one label per
                                                        input token, lines aligned with input0

Binarize valid/test labels with ``--srcdict DATA/label/dict.txt`` (fairseq-preprocess does
so when the splits are given together); a label missing from that dictionary is binarized
as ``<unk>``, which this task rejects when it loads the split.  The label dictionary may
carry fairseq-preprocess's ``madeupwordNNNN`` fillers; they are not labels.

Model input per example: ``<s> w_1 .. w_n </s>`` (B x T, right-padded); targets (B x T):
the label index (0 .. num_labels - 1, in label-dictionary order) at ``w_i``, and
:data:`~mega_fairseq.tasks.token_data.IGNORE_INDEX` (-100) at ``<s>``, ``</s>`` and padding.
With ``--shorten-method`` an over-long example keeps a window of ``max_positions - 2``
tokens (``truncate``: the first ones; ``random_crop``: a random window per epoch), and its
labels the same window.
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from fairseq.tasks import FairseqTask, register_task

from mega_fairseq.errors import DataError, OptionError
from mega_fairseq.tasks import binarized_data as bd
from mega_fairseq.tasks import token_data as td
from mega_fairseq.tasks.shortening import describe_shortening, shorten_applies

logger = logging.getLogger(__name__)


@dataclass
class TokenClassificationConfig(td.TokenTaskConfig):
    num_labels: int = field(
        default=-1,
        metadata={"help": "number of labels (default: derived from label/dict.txt; a given "
                  "value must agree with it)"},
    )
    token_head_name: str = field(
        default="token_classification_head", metadata={"help": "name of the model's token head"}
    )


class TokenLabelDataset(td.TokenExampleDataset):
    """Examples ``{"id", "source": LongTensor[n'+2], "target": LongTensor[n'+2]}``.

    Args:
        tokens: binarized input lines (each ending with ``</s>``)
        labels: binarized label lines, aligned with ``tokens`` (checked by the task)
        dictionary: input dictionary (``<s>``, ``</s>``, padding)
        label_offset: label-dictionary index of label 0 (its ``nspecial``)
        max_tokens: window of tokens kept per example (None: all)
        random_crop: random window per epoch instead of the first tokens
    """

    def __init__(self, tokens, labels, dictionary, label_offset: int, max_tokens=None,
                 random_crop: bool = False, shuffle: bool = False, seed: int = 1):
        lengths = td.item_sizes(tokens) - 1
        kept = lengths if max_tokens is None else np.minimum(lengths, max_tokens)
        super().__init__(kept + 2, dictionary.pad(), shuffle, seed)
        self.tokens, self.labels = tokens, labels
        self.bos, self.eos = dictionary.bos(), dictionary.eos()
        self.label_offset = label_offset
        self.lengths, self.kept = lengths, kept
        self.random_crop = random_crop

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return True  # sizes do not depend on the epoch, only the crop windows do

    def __getitem__(self, index: int) -> dict:
        length, kept = int(self.lengths[index]), int(self.kept[index])
        start = 0
        if self.random_crop:
            start = td.crop_start(self.seed, self.epoch, index, 0, length - kept)
        words = self.tokens[index][start:start + kept].long()
        labels = self.labels[index][start:start + kept].long() - self.label_offset
        edge = torch.LongTensor([td.IGNORE_INDEX])
        return {
            "id": index,
            "source": torch.cat([words.new_tensor([self.bos]), words, words.new_tensor([self.eos])]),
            "target": torch.cat([edge, labels, edge]),
        }

    def collater(self, samples) -> dict:
        """Batch: ``net_input.src_tokens`` B x T, ``target`` B x T (IGNORE_INDEX where no label)."""
        if len(samples) == 0:
            return {}
        batch = self.collate_inputs(samples)
        batch["target"] = td.data_utils.collate_tokens(
            [s["target"] for s in samples], pad_idx=td.IGNORE_INDEX
        )
        return batch


def check_labels(tokens, labels, label_dict, num_labels: int, tokens_name: str,
                 labels_name: str, dict_path: str) -> None:
    """Alignment and label-vocabulary checks; ``ValueError`` naming the file and line."""
    token_sizes, label_sizes = td.item_sizes(tokens), td.item_sizes(labels)
    if len(token_sizes) != len(label_sizes):
        raise DataError(
            f"{labels_name}.bin has {len(label_sizes)} lines but {tokens_name}.bin has "
            f"{len(token_sizes)}: the label file needs one line per input line"
        )
    wrong = np.flatnonzero(token_sizes != label_sizes)
    if wrong.size:
        line = int(wrong[0])
        raise DataError(
            f"{labels_name}.bin, line {line + 1}: {label_sizes[line] - 1} labels for the "
            f"{token_sizes[line] - 1} tokens of line {line + 1} of {tokens_name}.bin (one label "
            f"per input token; {wrong.size} misaligned line(s) in all)"
        )
    td.check_ends_with_eos(labels, label_sizes, label_dict.eos(), labels_name)
    flat = td.concatenated_tokens(labels)
    is_label = np.ones(flat.size, dtype=bool)
    is_label[np.cumsum(label_sizes) - 1] = False  # the final </s> of each line
    low, high = label_dict.nspecial, label_dict.nspecial + num_labels
    bad = np.flatnonzero(is_label & ((flat < low) | (flat >= high)))
    if bad.size:
        line, position = td.position_in_lines(int(bad[0]), label_sizes)
        symbol = int(flat[bad[0]])
        what = ("an unknown label (binarized as <unk>)" if symbol == label_dict.unk()
                else f"{label_dict[symbol]!r}, which is not a label")
        raise DataError(
            f"{labels_name}.bin, line {line}, token {position}: {what}; every label must be in "
            f"{dict_path} (binarize all splits' labels with --srcdict {dict_path})"
        )


@register_task("token_classification", dataclass=TokenClassificationConfig)
class TokenClassificationTask(bd.DictionaryAccessors, FairseqTask):
    """Tag every input token with one of ``num_labels`` labels (see the module docstring)."""

    def __init__(self, cfg: TokenClassificationConfig, dictionary, label_dictionary, num_labels: int):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.label_dictionary = label_dictionary
        self.num_labels = num_labels

    @property
    def token_head_name(self) -> str:
        return self.cfg.token_head_name

    @classmethod
    def setup_task(cls, cfg: TokenClassificationConfig, **kwargs):
        dictionary = bd.load_dictionary(cfg.data, "input0", "input")
        label_path = os.path.join(cfg.data, "label", "dict.txt")
        label_dictionary = bd.load_dictionary(cfg.data, "label", "label")
        num_labels = bd.count_labels(label_dictionary)
        if num_labels < 1:
            raise DataError(f"{label_path} holds no labels")
        if cfg.num_labels > 0 and cfg.num_labels != num_labels:
            raise OptionError(
                f"--num-labels={cfg.num_labels} disagrees with {label_path}, which holds "
                f"{num_labels} labels; drop --num-labels or fix the label dictionary"
            )
        if cfg.max_positions < 3:
            raise OptionError(f"--max-positions must be at least 3 (<s> token </s>), got {cfg.max_positions}")
        logger.info(f"[input] dictionary: {len(dictionary)} types; [label] {num_labels} labels")
        return cls(cfg, dictionary, label_dictionary, num_labels)

    def load_dataset(self, split: str, combine: bool = False, **kwargs):
        data = self.cfg.data
        tokens = bd.load_binarized(data, "input0", split, self.dictionary, combine)
        labels = bd.load_binarized(data, "label", split, self.label_dictionary, combine)
        tokens_name = bd.binarized_name(data, "input0", split)
        labels_name = bd.binarized_name(data, "label", split)
        td.check_ends_with_eos(tokens, td.item_sizes(tokens), self.dictionary.eos(), tokens_name)
        check_labels(tokens, labels, self.label_dictionary, self.num_labels, tokens_name,
                     labels_name, os.path.join(data, "label", "dict.txt"))

        max_tokens = None
        limit = self.cfg.max_positions - 2
        if shorten_applies(split, self.cfg.shorten_method, self.cfg.shorten_data_split_list):
            max_tokens = limit
        else:
            lengths = td.item_sizes(tokens) - 1
            too_long = np.flatnonzero(lengths > limit)
            if too_long.size:
                line = int(too_long[0])
                raise DataError(
                    f"{tokens_name}.bin, line {line + 1}: {lengths[line]} tokens + <s> and </s> = "
                    f"{lengths[line] + 2} positions, {describe_shortening(self.cfg.max_positions)}"
                    f" ({too_long.size} such line(s))"
                )
        dataset = TokenLabelDataset(
            tokens, labels, self.dictionary, self.label_dictionary.nspecial, max_tokens=max_tokens,
            random_crop=self.cfg.shorten_method == "random_crop",
            shuffle=split == "train" and not self.cfg.no_shuffle, seed=self.cfg.seed,
        )
        td.log_loaded(split, dataset, "token_classification")
        self.datasets[split] = dataset
        return dataset

    def build_model(self, cfg, from_checkpoint: bool = False):
        return td.build_model_with_token_head(self, cfg, from_checkpoint, self.cfg.token_head_name,
                                           self.num_labels)

    def max_positions(self) -> int:
        return self.cfg.max_positions

    @property
    def target_dictionary(self):
        return self.label_dictionary

"""``span_prediction``: extractive question answering for ``mega_encoder`` models.

Data (``DATA`` is the task's data argument)::

    DATA/input0/dict.txt, DATA/input0/{split}.bin/.idx   questions, fairseq-preprocess --only-source
    DATA/input1/{split}.bin/.idx                          contexts, binarized with the SAME
                                                          dictionary (--srcdict DATA/input0/dict.txt)
    DATA/label/{split}.label                              plain text, one line per example:
                                                          "start end"

``start`` and ``end`` are 0-based, inclusive indices of the answer's first and last token
among the context line's tokens (the tokens fairseq-preprocess splits the line into, i.e.
space-separated words); ``0 <= start <= end < number of context tokens``.  If
``DATA/input1/dict.txt`` exists it must equal ``DATA/input0/dict.txt``.

Model input per example: ``<s> q_1 .. q_m </s> c_1 .. c_n </s>`` (B x T, right-padded); the
task converts the span to positions in it: ``start + m + 2`` and ``end + m + 2``, and marks
the context positions (``context_mask``, B x T) that the criterion's softmax runs over.

Too long examples (``m + n + 3 > --max-positions``) are an error unless the split is
shortened (``--shorten-method``, ``--shorten-data-split-list``); the question is always kept
whole and the context gets ``budget = max_positions - m - 3`` tokens: ``truncate`` keeps its
first ``budget`` tokens, ``random_crop`` a random window (new each epoch) that contains the
answer.  Examples whose answer cannot be kept (``truncate``: ``end >= budget``;
``random_crop``: answer longer than ``budget``; either: ``budget < 1``) are dropped, and the
number dropped is logged as a warning; a split left empty is an error.
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from fairseq.data import Dictionary
from fairseq.tasks import FairseqTask, register_task

from mega_fairseq.errors import DataError, MissingDataError, OptionError
from mega_fairseq.tasks import binarized_data as bd
from mega_fairseq.tasks import token_data as td
from mega_fairseq.tasks.shortening import describe_shortening, shorten_applies

logger = logging.getLogger(__name__)


@dataclass
class SpanPredictionConfig(td.TokenTaskConfig):
    token_head_name: str = field(
        default="span_prediction_head",
        metadata={"help": "name of the model's token head (2 labels: start and end logits)"},
    )


def read_spans(path: str, context_lengths: np.ndarray, contexts_name: str) -> np.ndarray:
    """Parse ``DATA/label/{split}.label``; returns N x 2 int64 (start, end) context indices."""
    if not os.path.exists(path):
        raise MissingDataError(f"no span labels {path} (one 'start end' line per example)")
    spans = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                start, end = int(fields[0]), int(fields[1])
            except ValueError:
                raise DataError(f"{path}, line {number}: expected 'start end' (two integers), "
                                 f"got {line.rstrip()!r}") from None
            spans.append((start, end))
    if len(spans) != len(context_lengths):
        raise DataError(f"{path} has {len(spans)} lines but {contexts_name}.bin has "
                         f"{len(context_lengths)} examples: one span per example")
    for number, ((start, end), length) in enumerate(zip(spans, context_lengths), start=1):
        if end < start:
            raise DataError(f"{path}, line {number}: span end {end} < start {start}")
        if start < 0 or end >= length:
            raise DataError(
                f"{path}, line {number}: span {start} {end} lies outside the context: line "
                f"{number} of {contexts_name}.bin has {length} tokens (indices 0..{length - 1})"
            )
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


class SpanDataset(td.TokenExampleDataset):
    """Examples ``{"id", "source", "target": LongTensor[2], "context": (first, stop)}``.

    Args:
        questions, contexts: binarized lines (each ending with ``</s>``)
        spans: N x 2 (start, end) context-token indices
        keep: indices of the examples used (after dropping unanswerable crops)
        budgets: N context tokens allowed per example (None: whole contexts)
        random_crop: answer-containing random context window per epoch
    """

    def __init__(self, questions, contexts, spans, dictionary, keep, budgets=None,
                 random_crop: bool = False, shuffle: bool = False, seed: int = 1):
        self.question_sizes = td.item_sizes(questions)
        self.context_lengths = td.item_sizes(contexts) - 1
        windows = self.context_lengths if budgets is None else np.minimum(self.context_lengths, budgets)
        self.keep, self.windows = np.asarray(keep, dtype=np.int64), windows
        sizes = self.question_sizes[self.keep] + windows[self.keep] + 2
        super().__init__(sizes, dictionary.pad(), shuffle, seed)
        self.questions, self.contexts, self.spans = questions, contexts, spans
        self.bos, self.eos = dictionary.bos(), dictionary.eos()
        self.random_crop = random_crop

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return True  # sizes do not depend on the epoch, only the crop windows do

    def __getitem__(self, index: int) -> dict:
        line = int(self.keep[index])
        start, end = (int(v) for v in self.spans[line])
        length, window = int(self.context_lengths[line]), int(self.windows[line])
        first = 0
        if self.random_crop:
            low, high = max(0, end - window + 1), min(start, length - window)
            first = td.crop_start(self.seed, self.epoch, line, low, high)
        question = self.questions[line].long()
        context = self.contexts[line][first:first + window].long()
        offset = 1 + len(question)
        source = torch.cat([question.new_tensor([self.bos]), question, context, question.new_tensor([self.eos])])
        return {
            "id": index,
            "source": source,
            "target": torch.LongTensor([start - first + offset, end - first + offset]),
            "context": (offset, offset + window),
        }

    def collater(self, samples) -> dict:
        """Batch: ``net_input.src_tokens`` B x T, ``target`` B x 2 (start, end positions),
        ``context_mask`` B x T bool (True at context tokens)."""
        if len(samples) == 0:
            return {}
        batch = self.collate_inputs(samples)
        tokens = batch["net_input"]["src_tokens"]
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        for row, sample in enumerate(samples):
            mask[row, sample["context"][0]:sample["context"][1]] = True
        batch["target"] = torch.stack([s["target"] for s in samples])
        batch["context_mask"] = mask
        return batch


@register_task("span_prediction", dataclass=SpanPredictionConfig)
class SpanPredictionTask(bd.DictionaryAccessors, FairseqTask):
    """Predict the answer span of a question in a context (see the module docstring)."""

    def __init__(self, cfg: SpanPredictionConfig, dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary

    @property
    def token_head_name(self) -> str:
        return self.cfg.token_head_name

    @classmethod
    def setup_task(cls, cfg: SpanPredictionConfig, **kwargs):
        path = os.path.join(cfg.data, "input0", "dict.txt")
        other = os.path.join(cfg.data, "input1", "dict.txt")
        dictionary = bd.load_dictionary(cfg.data, "input0", "input")
        if os.path.exists(other) and Dictionary.load(other).symbols != dictionary.symbols:
            raise DataError(
                f"{other} differs from {path}: binarize questions and contexts with one "
                f"dictionary (fairseq-preprocess --srcdict)"
            )
        if cfg.max_positions < 5:
            raise OptionError(f"--max-positions must be at least 5, got {cfg.max_positions}")
        logger.info(f"[input] dictionary: {len(dictionary)} types")
        return cls(cfg, dictionary)

    def load_dataset(self, split: str, combine: bool = False, **kwargs):
        data, limit = self.cfg.data, self.cfg.max_positions
        questions = bd.load_binarized(data, "input0", split, self.dictionary, combine)
        contexts = bd.load_binarized(data, "input1", split, self.dictionary, combine)
        questions_name = bd.binarized_name(data, "input0", split)
        contexts_name = bd.binarized_name(data, "input1", split)
        question_sizes, context_sizes = td.item_sizes(questions), td.item_sizes(contexts)
        if len(question_sizes) != len(context_sizes):
            raise DataError(f"{contexts_name}.bin has {len(context_sizes)} lines but "
                             f"{questions_name}.bin has {len(question_sizes)}")
        td.check_ends_with_eos(questions, question_sizes, self.dictionary.eos(), questions_name)
        td.check_ends_with_eos(contexts, context_sizes, self.dictionary.eos(), contexts_name)
        spans = read_spans(os.path.join(data, "label", f"{split}.label"), context_sizes - 1, contexts_name)

        budgets = limit - question_sizes - 2  # context tokens that fit beside <s> question </s> ... </s>
        keep, method = np.arange(len(spans)), self.cfg.shorten_method
        if shorten_applies(split, method, self.cfg.shorten_data_split_list):
            if method == "truncate":
                fits = spans[:, 1] < budgets
            else:
                fits = spans[:, 1] - spans[:, 0] + 1 <= budgets
            keep = np.flatnonzero(fits)
            dropped = np.flatnonzero(~fits)
            if dropped.size:
                logger.warning(
                    f"{split}: dropped {dropped.size} of {len(spans)} examples whose answer does "
                    f"not fit in --max-positions={limit} with --shorten-method {method} "
                    f"(first: line {int(dropped[0]) + 1} of {os.path.join(data, 'label', split)}.label)"
                )
            if keep.size == 0 and len(spans):
                raise OptionError(f"{split}: no example left after --shorten-method {method} "
                                 f"with --max-positions={limit}")
        else:
            budgets = None
            too_long = np.flatnonzero(question_sizes + context_sizes + 1 > limit)
            if too_long.size:
                line = int(too_long[0])
                raise DataError(
                    f"{contexts_name}.bin, line {line + 1}: <s> question </s> context </s> needs "
                    f"{question_sizes[line] + context_sizes[line] + 1} positions, "
                    f"{describe_shortening(limit)} ({too_long.size} such line(s))"
                )
        dataset = SpanDataset(
            questions, contexts, spans, self.dictionary, keep, budgets=budgets,
            random_crop=method == "random_crop" and budgets is not None,
            shuffle=split == "train" and not self.cfg.no_shuffle, seed=self.cfg.seed,
        )
        td.log_loaded(split, dataset, "span_prediction")
        self.datasets[split] = dataset
        return dataset

    def build_model(self, cfg, from_checkpoint: bool = False):
        return td.build_model_with_token_head(self, cfg, from_checkpoint, self.cfg.token_head_name, 2)

    def max_positions(self) -> int:
        return self.cfg.max_positions

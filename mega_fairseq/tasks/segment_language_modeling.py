"""``segment_language_modeling``: fairseq's ``language_modeling`` task (same data, options,
dictionary and evaluation) with a training data order for segment-recurrent models.

The training split, read as one token stream of consecutive ``--tokens-per-sample`` blocks
(``--sample-break-mode none``), is cut into S = batch size x ``--segment-groups`` streams of
consecutive blocks (segments); batch (group g, segment k) holds segment k of the batch-size
streams of group g, and batches go in the order (g0, k0), (g1, k0), ..., (g0, k1), ...
without shuffling. fairseq hands worker r of W the batches r, r + W, ..., so with W
dividing the number of groups every worker sees each of its groups' segments in order, and
one process with ``--update-freq W`` and W groups sees the same batches per update as W
workers. Each batch is tagged (``net_input["segment"]``) so that the model continues the
state its group's previous segment left (:mod:`mega_fairseq.models.segment_state`).

A group whose streams have ended gets empty batches (fairseq's dummy batches, which train
nothing and carry no state) so that the round-robin assignment stays aligned.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from fairseq.data import BaseWrapperDataset, iterators
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from mega_fairseq.errors import OptionError

logger = logging.getLogger(__name__)


@dataclass
class SegmentLanguageModelingConfig(LanguageModelingConfig):
    segment_groups: Optional[int] = field(
        default=None,
        metadata={"help": "stream groups of segment-recurrent training (default: the number of "
                  "data-parallel workers); must be a multiple of the number of workers. One "
                  "process with --update-freq W and W groups trains like W workers"},
    )


def stream_batches(num_blocks: int, batch_size: int, num_groups: int) -> List[List[int]]:
    """Block indices per batch, in training order: batch g + G k holds segment k (block
    s K + k) of the streams s = g B .. g B + B - 1 that have one, with K = ceil(num_blocks /
    (B G)) segments per stream; an empty list where a group's streams have ended."""
    streams = batch_size * num_groups
    segments = math.ceil(num_blocks / streams)
    batches = []
    for k in range(segments):
        for g in range(num_groups):
            rows = [s * segments + k for s in range(g * batch_size, (g + 1) * batch_size)]
            batches.append([index for index in rows if index < num_blocks])
    return batches


class SegmentStreamDataset(BaseWrapperDataset):
    """A ``language_modeling`` dataset whose batches are tagged with their stream group
    and whether they hold the streams' first segments."""

    def __init__(self, dataset, split: str):
        super().__init__(dataset)
        self.split = split
        self.segments_per_stream: Optional[int] = None
        self.batch_size: Optional[int] = None

    def set_layout(self, segments_per_stream: int, batch_size: int) -> None:
        self.segments_per_stream = segments_per_stream
        self.batch_size = batch_size

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if len(samples) == 0 or self.segments_per_stream is None:
            return batch
        streams = {sample["id"] // self.segments_per_stream for sample in samples}
        segment_numbers = {sample["id"] % self.segments_per_stream for sample in samples}
        groups = {stream // self.batch_size for stream in streams}
        if len(groups) != 1 or len(segment_numbers) != 1:
            raise ValueError("a segment batch mixes stream groups or segments: the batches are not in stream order")
        batch["net_input"]["segment"] = {
            "key": f"{self.split}:{groups.pop()}",
            "first": segment_numbers.pop() == 0,
        }
        return batch


@register_task("segment_language_modeling", dataclass=SegmentLanguageModelingConfig)
class SegmentLanguageModelingTask(LanguageModelingTask):
    """``language_modeling`` with stream-ordered, state-carrying training batches (see the
    module docstring). Needs ``--sample-break-mode none`` and neither ``--add-bos-token``
    nor ``--shorten-method``: each block must continue the one before it."""

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        if str(args.sample_break_mode) != "none":
            raise OptionError(
                f"--task segment_language_modeling needs --sample-break-mode none (got "
                f"{args.sample_break_mode}): each segment must continue the previous one")
        if args.add_bos_token or str(args.shorten_method) != "none":
            raise OptionError("--task segment_language_modeling cannot use --add-bos-token or "
                              "--shorten-method: each segment must continue the previous one")
        if args.segment_groups is not None and args.segment_groups <= 0:
            raise OptionError(f"--segment-groups must be a positive integer, got {args.segment_groups}")

    def load_dataset(self, split: str, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        self.datasets[split] = SegmentStreamDataset(self.datasets[split], split)

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1,
                           num_shards=1, shard_id=0, num_workers=0, epoch=1, data_buffer_size=0,
                           disable_iterator_cache=False, skip_remainder_batch=False,
                           grouped_shuffling=False, update_epoch_batch_itr=False):
        if not isinstance(dataset, SegmentStreamDataset):
            return super().get_batch_iterator(
                dataset, max_tokens=max_tokens, max_sentences=max_sentences,
                max_positions=max_positions, ignore_invalid_inputs=ignore_invalid_inputs,
                required_batch_size_multiple=required_batch_size_multiple, seed=seed,
                num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
                data_buffer_size=data_buffer_size, disable_iterator_cache=disable_iterator_cache,
                skip_remainder_batch=skip_remainder_batch, grouped_shuffling=grouped_shuffling,
                update_epoch_batch_itr=update_epoch_batch_itr)
        batch_size = max_sentences
        if batch_size is None:
            if max_tokens is None:
                raise OptionError("--task segment_language_modeling needs --batch-size (streams per batch) or --max-tokens")
            batch_size = max(1, max_tokens // self.args.tokens_per_sample)
        groups = self.args.segment_groups or num_shards
        if groups % num_shards != 0:
            raise OptionError(f"--segment-groups {groups} must be a multiple of the {num_shards} "
                              "data-parallel workers: each worker must see whole stream groups")
        num_blocks = len(dataset)
        batches = stream_batches(num_blocks, batch_size, groups)
        dataset.set_layout(math.ceil(num_blocks / (batch_size * groups)), batch_size)
        logger.info("segment-recurrent order: %d blocks of %d tokens as %d streams (%d groups of %d) "
                    "of %d segments", num_blocks, self.args.tokens_per_sample, batch_size * groups,
                    groups, batch_size, dataset.segments_per_stream)
        dataset.set_epoch(epoch)
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater,
            batch_sampler=[np.array(batch, dtype=np.int64) for batch in batches],
            seed=seed, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
            epoch=epoch, buffer_size=data_buffer_size, disable_shuffling=True,
            skip_remainder_batch=skip_remainder_batch,
        )

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        # fairseq's dummy batch (ignore_grad) repeats an earlier sample: it must not move
        # the state its stream group carries
        if ignore_grad and "segment" in sample.get("net_input", {}):
            sample = dict(sample, net_input={k: v for k, v in sample["net_input"].items() if k != "segment"})
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

"""Segment-recurrent training: the state a decoder carries from one training segment of a
token stream to the next.

The ``segment_language_modeling`` task (:mod:`mega_fairseq.tasks.segment_language_modeling`)
feeds each stream's consecutive segments in consecutive batches of the same stream group
and tags each batch with ``net_input["segment"] = {"key": <stream group>, "first": <first
segment of its streams>}``. In training mode the decoder then runs every segment from the
incremental state the previous segment of the same group left (EMA / CEMA states,
timestep-norm statistics and the keys of the current attention chunk) and keeps the state
it ends with, detached: gradients are truncated at segment boundaries (truncated
backpropagation through time), while the forward pass sees the whole stream before each
token. Evaluation mode ignores the tags (each block is scored on its own; carried-state
evaluation is ``scripts/eval_lm_stateful.py``).
"""

import logging
from typing import Dict, Optional

from torch import Tensor

from mega_fairseq.modules.incremental import IncrementalState

logger = logging.getLogger(__name__)


class SegmentStates:
    """The carried incremental state of each stream group (by key). Not part of the model's
    state dict: after a restart the next segment of each group starts from an empty state."""

    def __init__(self):
        self._states: Dict[str, IncrementalState] = {}

    def __len__(self) -> int:
        return len(self._states)

    def begin(self, segment: Dict, batch_size: int) -> IncrementalState:
        """The incremental state to run the segment described by ``segment`` from: empty
        for a stream's first segment (or when nothing is carried for the group), else the
        group's carried state limited to the first ``batch_size`` streams (the streams that
        still have tokens)."""
        key = str(segment["key"])
        carried = None if segment.get("first", False) else self._states.get(key)
        if carried is None:
            if not segment.get("first", False):
                logger.info("segment-recurrent training: no state carried for stream group %s "
                            "(a resumed run); its next segment starts from an empty state", key)
            return {}
        return {
            name: {field: _first_rows(value, batch_size) for field, value in entry.items()}
            for name, entry in carried.items()
        }

    def end(self, segment: Dict, incremental_state: IncrementalState, skip_key: Optional[str] = None) -> None:
        """Keep the state a segment ended with, detached from the graph (the gradient
        truncation), without the entry ``skip_key`` (the decoder's position counter)."""
        self._states[str(segment["key"])] = {
            name: {field: None if value is None else value.detach() for field, value in entry.items()}
            for name, entry in incremental_state.items()
            if name != skip_key
        }

    def clear(self) -> None:
        self._states.clear()


def _first_rows(value: Optional[Tensor], rows: int) -> Optional[Tensor]:
    if value is None:
        return None
    if value.size(0) < rows:
        raise ValueError(f"a segment of {rows} streams continues a carried state of only "
                         f"{value.size(0)}: the batches are not in stream order")
    return value[:rows]

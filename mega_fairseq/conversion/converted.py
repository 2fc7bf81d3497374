"""What every converter returns: the converted model with its config, task and notes."""

from dataclasses import dataclass, field
from typing import Any, List

import torch


@dataclass
class ConvertedModel:
    """A model converted from another format: ``kind`` (``lm``, ``translation``, ``lra``,
    ``masked_lm``, ``classification``, ...), the model in eval mode, its typed config (our
    model's dataclass), the fairseq task holding its dictionaries, and ``notes`` for the
    converter's log (ignored options, defects of the source not reproduced)."""

    kind: str
    model: torch.nn.Module
    cfg: Any
    task: Any
    notes: List[str] = field(default_factory=list)

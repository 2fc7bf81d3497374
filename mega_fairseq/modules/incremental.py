"""The type of fairseq-style incremental state."""

from typing import Dict, Optional

from torch import Tensor

# "<module's incremental-state id>.<state name>" (fairseq's ``with_incremental_state``)
# -> {tensor name: cached tensor}
IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

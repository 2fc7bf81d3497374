"""Data-parallel training on CPU with fairseq's default ``--ddp-backend pytorch_ddp``,
and resuming data-parallel training under torch >= 2.6.

1. fairseq 0.12.2 always passes ``device_ids=[args.device_id]`` and ``output_device`` to
   :class:`torch.nn.parallel.DistributedDataParallel`, which current torch rejects for a
   module that lives on the CPU (``--cpu --distributed-backend gloo``).  The fix gives
   fairseq's wrapper module a DistributedDataParallel subclass that drops those two
   GPU-only arguments when the wrapped module's parameters are on the CPU; GPU training is
   unchanged.

2. When a data-parallel run finds ``checkpoint_last.pt`` (resuming), only rank 0 reads
   the file; the trainer hands the loaded state to the other ranks with
   ``fairseq.distributed.utils.broadcast_object``, which pickles it with ``torch.save``
   and unpickles it with a bare ``torch.load``.  Since torch 2.6 that call is a
   ``weights_only`` load, which refuses the OmegaConf ``DictConfig`` of the loaded config
   (and fairseq's own tensor placeholders), so every rank but 0 dies with
   ``Unsupported global: GLOBAL omegaconf.dictconfig.DictConfig`` (CPU and GPU alike).
   These bytes are not a file: they are what rank 0 of the same job serialised in memory
   a moment before, over the job's own process group, so the receiving side unpickles
   them with ``weights_only=False``.  Loading checkpoint *files* keeps the safe loader
   (see ``checkpoint_loading``).
"""

import io

import torch
from torch.nn.parallel import DistributedDataParallel


class CpuAwareDistributedDataParallel(DistributedDataParallel):
    """DistributedDataParallel that ignores ``device_ids``/``output_device`` for CPU modules."""

    def __init__(self, module, *args, **kwargs):
        first_param = next(module.parameters(), None)
        if first_param is not None and first_param.device.type == "cpu":
            kwargs["device_ids"] = None
            kwargs["output_device"] = None
        super().__init__(module, *args, **kwargs)


def _trusting_broadcast_object_slow(original):
    """``_broadcast_object_slow`` whose receivers unpickle rank 0's in-memory bytes fully."""
    from fairseq.distributed import utils as distributed_utils

    def broadcast_object_slow(obj, src_rank, group, dist_device):
        if distributed_utils.get_rank(group) == src_rank:
            return original(obj, src_rank, group, dist_device)
        # same two messages the sender emits: the payload length, then the payload
        size = torch.zeros(1, dtype=torch.long, device=dist_device)
        distributed_utils.broadcast(size, src=src_rank, group=group)
        payload = torch.empty(int(size.item()), dtype=torch.uint8, device=dist_device)
        distributed_utils.broadcast(payload, src=src_rank, group=group)
        data = io.BytesIO(payload.cpu().numpy().tobytes())
        return torch.load(data, map_location="cpu", weights_only=False)

    broadcast_object_slow.mega_fairseq_compat_original = original
    return broadcast_object_slow


def _load_defaults_to_weights_only() -> bool:
    return hasattr(torch.serialization, "add_safe_globals")


def apply() -> None:
    from fairseq.models import distributed_fairseq_model

    if distributed_fairseq_model.DistributedDataParallel is DistributedDataParallel:
        distributed_fairseq_model.DistributedDataParallel = CpuAwareDistributedDataParallel

    from fairseq.distributed import utils as distributed_utils

    current = distributed_utils._broadcast_object_slow
    if _load_defaults_to_weights_only() and not hasattr(current, "mega_fairseq_compat_original"):
        distributed_utils._broadcast_object_slow = _trusting_broadcast_object_slow(current)

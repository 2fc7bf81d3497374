"""Data-parallel training on CPU with fairseq's default ``--ddp-backend pytorch_ddp``.

fairseq 0.12.2 always passes ``device_ids=[args.device_id]`` and ``output_device`` to
:class:`torch.nn.parallel.DistributedDataParallel`, which current torch rejects for a
module that lives on the CPU (``--cpu --distributed-backend gloo``).  The fix gives
fairseq's wrapper module a DistributedDataParallel subclass that drops those two GPU-only
arguments when the wrapped module's parameters are on the CPU; GPU training is unchanged.
"""

from torch.nn.parallel import DistributedDataParallel


class CpuAwareDistributedDataParallel(DistributedDataParallel):
    """DistributedDataParallel that ignores ``device_ids``/``output_device`` for CPU modules."""

    def __init__(self, module, *args, **kwargs):
        first_param = next(module.parameters(), None)
        if first_param is not None and first_param.device.type == "cpu":
            kwargs["device_ids"] = None
            kwargs["output_device"] = None
        super().__init__(module, *args, **kwargs)


def apply() -> None:
    from fairseq.models import distributed_fairseq_model

    if distributed_fairseq_model.DistributedDataParallel is DistributedDataParallel:
        distributed_fairseq_model.DistributedDataParallel = CpuAwareDistributedDataParallel

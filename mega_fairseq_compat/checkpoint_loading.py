"""Fix 3: checkpoint loading under torch >= 2.6, where ``torch.load`` defaults to
``weights_only=True``.

Apart from tensors and plain containers, a fairseq 0.12.2 checkpoint holds exactly one
kind of object: :class:`argparse.Namespace`, used for the model config of every
architecture registered the legacy way (``cfg['model']``, e.g. ``transformer``) and for
``args`` in checkpoints of older fairseq versions.  Without it resuming, ``fairseq-generate``
and ``fairseq-validate`` fail with ``Unsupported global: GLOBAL argparse.Namespace``.
Instead of switching the safe loader off, this type alone is registered with
:func:`torch.serialization.add_safe_globals`; every other global is still refused.
(Mega's own models use dataclass configs, which fairseq saves as plain dicts.)
"""

import argparse

import torch

FAIRSEQ_CHECKPOINT_GLOBALS = (argparse.Namespace,)


def needed() -> bool:
    return hasattr(torch.serialization, "add_safe_globals")


def apply() -> None:
    if needed():
        torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))

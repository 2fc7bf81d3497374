"""Fix 3: checkpoint loading under torch >= 2.6, where ``torch.load`` defaults to
``weights_only=True``.

Apart from tensors and plain containers, a fairseq 0.12.2 checkpoint holds two kinds of
object:

* :class:`argparse.Namespace`, used for the model config of every architecture
  registered the legacy way (``cfg['model']``, e.g. ``transformer``) and for ``args`` in
  checkpoints of older fairseq versions;
* numeric numpy arrays: the translation task's ``--eval-bleu`` keeps its n-gram counts in
  metric meters as ``numpy.ndarray``, and the meters are saved in ``extra_state``.

Without them resuming, ``fairseq-generate`` and ``fairseq-validate`` fail with
``Unsupported global: GLOBAL argparse.Namespace`` (or ``numpy._core.multiarray._reconstruct``).
Instead of switching the safe loader off, these types alone are registered with
:func:`torch.serialization.add_safe_globals`: the namespace, and the numpy array
rebuilder with the array and numeric dtype classes. Arrays of Python objects would need
further globals and are still refused, as is every other global.
(Mega's own models use dataclass configs, which fairseq saves as plain dicts.)
"""

import argparse

import numpy
import torch

_NUMERIC_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                   "uint64", "float16", "float32", "float64")


def _numpy_array_globals():
    """What unpickling a numeric numpy array refers to, in numpy 1.x and 2.x."""
    core = getattr(numpy, "_core", None) or numpy.core
    dtype_classes = {type(numpy.dtype(name)) for name in _NUMERIC_DTYPES}
    return [core.multiarray._reconstruct, numpy.ndarray, numpy.dtype, *sorted(dtype_classes, key=str)]


FAIRSEQ_CHECKPOINT_GLOBALS = (argparse.Namespace, *_numpy_array_globals())


def needed() -> bool:
    return hasattr(torch.serialization, "add_safe_globals")


def apply() -> None:
    if needed():
        torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))

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
Instead of switching the safe loader off, these alone are registered with
:func:`torch.serialization.add_safe_globals`: the namespace, the numpy array rebuilder
(``numpy._core.multiarray._reconstruct``, in numpy 1.x ``numpy.core.multiarray``),
``numpy.ndarray``, the classes of the dtypes in :data:`NUMERIC_DTYPES`, and, under the
name ``numpy.dtype``, :func:`numeric_dtype`, which builds only those dtypes. So a pickle
that asks for an object dtype (``numpy.dtype('O')``), a structured, string or datetime
dtype, or an array of one, is refused with a message naming the dtype, as is every other
global. (Mega's own models use dataclass configs, which fairseq saves as plain dicts.)
"""

import argparse
import pickle

import numpy
import torch

NUMERIC_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                  "uint64", "float16", "float32", "float64")
# the codes numpy's pickles pass to numpy.dtype for them ('b1', 'i8', 'f4', ...)
_NUMERIC_CODES = frozenset(numpy.dtype(name).str[1:] for name in NUMERIC_DTYPES)


def numeric_dtype(code, align=False, copy=False):
    """``numpy.dtype(code, align, copy)`` for the codes of :data:`NUMERIC_DTYPES` only,
    the call a pickled numpy dtype makes; anything else raises ``UnpicklingError``."""
    if not (isinstance(code, str) and code in _NUMERIC_CODES and isinstance(align, bool)
            and isinstance(copy, bool)):
        raise pickle.UnpicklingError(
            f"refused numpy.dtype{(code, align, copy)!r}: checkpoints may hold numpy arrays of "
            f"the numeric dtypes {', '.join(NUMERIC_DTYPES)} only (no object, string, structured "
            "or datetime dtypes)"
        )
    return numpy.dtype(code, align, copy)


def _numpy_array_globals():
    """What unpickling a numeric numpy array refers to, in numpy 1.x and 2.x."""
    core = getattr(numpy, "_core", None) or numpy.core
    dtype_classes = {type(numpy.dtype(name)) for name in NUMERIC_DTYPES}
    return [core.multiarray._reconstruct, numpy.ndarray, (numeric_dtype, "numpy.dtype"),
            *sorted(dtype_classes, key=str)]


FAIRSEQ_CHECKPOINT_GLOBALS = (argparse.Namespace, *_numpy_array_globals())


def needed() -> bool:
    return hasattr(torch.serialization, "add_safe_globals")


def apply() -> None:
    if needed():
        torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))

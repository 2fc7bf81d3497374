"""Compatibility layer that lets the official fairseq 0.12.2 run on Python 3.11+ and torch >= 2.6.

fairseq's console scripts import fairseq *before* they read ``--user-dir``, so these fixes
cannot live inside the ``mega_fairseq`` plugin itself.  Instead the package installs a
one-line ``mega_fairseq_compat.pth`` file into site-packages which calls :func:`install`
at interpreter start-up.  :func:`install` only registers a lazy import hook (a
``sys.meta_path`` finder, see :mod:`mega_fairseq_compat.hook`); nothing is patched and
neither torch nor fairseq is imported until a process actually imports ``fairseq`` or
``hydra``.  Each fix is a no-op where the stack does not need it.

The fixes (one module each):

* :mod:`~mega_fairseq_compat.dataclass_defaults` -- Python 3.11 rejects the dataclass
  instances fairseq 0.12.2 and hydra-core 1.0.7 use as field defaults.
* :mod:`~mega_fairseq_compat.checkpoint_loading` -- torch >= 2.6 loads checkpoints with
  ``weights_only=True``; the few non-tensor types fairseq checkpoints hold are allow-listed.
* :mod:`~mega_fairseq_compat.better_transformer` -- fairseq's transformer encoder layer
  switches to a "BetterTransformer" fast path after a checkpoint load that aborts on
  current torch; it is turned off.
* :mod:`~mega_fairseq_compat.user_dir` -- ``--user-dir`` pointing at a second copy of
  ``mega_fairseq`` (checkout vs installed, or a path stored in a checkpoint from another
  machine) reuses the copy already imported instead of failing.
* :mod:`~mega_fairseq_compat.numpy_compat` -- ``numpy.compat.long``, removed in numpy 2,
  is still used by two fairseq datasets.
* :mod:`~mega_fairseq_compat.distributed` -- data-parallel training on CPU with the default
  ``--ddp-backend pytorch_ddp``.
* :mod:`~mega_fairseq_compat.mixed_precision` -- ``--fp16``, ``--memory-efficient-fp16``,
  ``--bf16``, ``--memory-efficient-bf16`` and ``--amp`` on the CPU (training and the
  inference scripts), bf16 without an implied ``--tpu``, and one-line errors for
  contradictory or unsupported precision requests.
* :mod:`~mega_fairseq_compat.background_batches` -- the batch-prefetching thread stops
  before the interpreter exits, so a finished run no longer aborts at exit.
"""

from mega_fairseq_compat.hook import install, is_installed

__all__ = ["install", "is_installed"]

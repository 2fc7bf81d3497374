"""A lazy import hook: run fixes right before or right after chosen modules are imported.

The hook is a :class:`importlib.abc.MetaPathFinder` placed first on ``sys.meta_path``.
For a module it does not watch it returns ``None`` at once (one dict look-up), so the
cost for processes that never import fairseq is negligible.
"""

import importlib.abc
import importlib.machinery
import sys
from typing import Callable, Dict, List

Fix = Callable[[], None]


def _dataclass_defaults() -> None:
    from mega_fairseq_compat import dataclass_defaults

    dataclass_defaults.apply()


def _before_fairseq() -> None:
    # torch is fairseq's first import anyway; the allow-list must be in place before
    # fairseq can load a checkpoint.
    from mega_fairseq_compat import checkpoint_loading, numpy_compat

    checkpoint_loading.apply()
    numpy_compat.apply()


def _after_fairseq_utils() -> None:
    from mega_fairseq_compat import user_dir

    user_dir.apply()


def _after_transformer_layer() -> None:
    from mega_fairseq_compat import better_transformer

    better_transformer.apply()


def _after_distributed_fairseq_model() -> None:
    from mega_fairseq_compat import distributed

    distributed.apply()


def _after_iterators() -> None:
    from mega_fairseq_compat import background_batches

    background_batches.apply()


def _after_indexed_dataset() -> None:
    from mega_fairseq_compat import data_checks

    data_checks.apply()


def _after_fairseq() -> None:
    from mega_fairseq_compat import user_errors

    user_errors.apply()


def _after_eval_lm() -> None:
    from mega_fairseq_compat import eval_lm_checks

    eval_lm_checks.apply()


def _after_checkpoint_utils() -> None:
    from mega_fairseq_compat import checkpoint_diagnosis, checkpoint_saving

    checkpoint_saving.apply()
    checkpoint_diagnosis.apply()


def _mixed_precision(fix_name: str, *args) -> Fix:
    """A fix of :mod:`mega_fairseq_compat.mixed_precision` (imported only when it runs)."""

    def fix() -> None:
        from mega_fairseq_compat import mixed_precision

        getattr(mixed_precision, fix_name)(*args)

    return fix


# module name -> fixes to run before the module's code executes
BEFORE_IMPORT: Dict[str, List[Fix]] = {
    "fairseq": [_dataclass_defaults, _before_fairseq],
    "hydra": [_dataclass_defaults],
}
# module name -> fixes to run after the module's code executed
AFTER_IMPORT: Dict[str, List[Fix]] = {
    # fairseq and hydra modules can also be loaded by finders placed before this one
    # (pytest's assertion rewriter loads hydra's pytest plugin), so the dataclass wrapper
    # is also installed as soon as ``dataclasses`` itself is imported; it changes nothing
    # for classes outside fairseq and hydra.
    "dataclasses": [_dataclass_defaults],
    "fairseq.utils": [_after_fairseq_utils],
    "fairseq.modules.transformer_layer": [_after_transformer_layer],
    "fairseq.models.distributed_fairseq_model": [_after_distributed_fairseq_model],
    "fairseq.data.iterators": [_after_iterators],
    "fairseq.data.indexed_dataset": [_after_indexed_dataset],
    # mixed precision (--fp16/--bf16/--amp) on the CPU and clear errors for bad combinations
    "fairseq.options": [_mixed_precision("apply_options")],
    "fairseq.optim.fp16_optimizer": [_mixed_precision("apply_fp16_optimizer")],
    "fairseq.optim.amp_optimizer": [_mixed_precision("apply_amp_optimizer")],
    "fairseq.tasks.fairseq_task": [_mixed_precision("apply_fairseq_task")],
    "fairseq.trainer": [_mixed_precision("apply_trainer")],
    "fairseq.checkpoint_utils": [_mixed_precision("apply_checkpoint_utils")],
    "fairseq_cli.hydra_train": [_mixed_precision("apply_hydra_train")],
    **{name: [_mixed_precision("apply_inference_cli", name)]
       for name in ("fairseq_cli.eval_lm", "fairseq_cli.generate", "fairseq_cli.validate",
                    "fairseq_cli.interactive")},
}
# one-line errors for uncaught user-facing exceptions; fairseq-eval-lm runs that score nothing fail
AFTER_IMPORT.setdefault("fairseq", []).append(_after_fairseq)
AFTER_IMPORT["fairseq_cli.eval_lm"].append(_after_eval_lm)
# checkpoint files appear atomically; unloadable ones get an error naming the file and the problem
AFTER_IMPORT["fairseq.checkpoint_utils"].append(_after_checkpoint_utils)


class _PatchingLoader(importlib.abc.Loader):
    """Wraps the real loader of a watched module and runs the fixes around ``exec_module``."""

    def __init__(self, loader, before: List[Fix], after: List[Fix]):
        self._loader = loader
        self._before = before
        self._after = after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        for fix in self._before:
            fix()
        self._loader.exec_module(module)
        for fix in self._after:
            fix()

    def __getattr__(self, name):
        # get_resource_reader, is_package, get_source, ... go to the real loader
        return getattr(self._loader, name)


class CompatFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader other finders return for watched modules."""

    def find_spec(self, fullname, path, target=None):
        before = BEFORE_IMPORT.get(fullname)
        after = AFTER_IMPORT.get(fullname)
        if before is None and after is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:  # namespace package: nothing to wrap
            return spec
        spec.loader = _PatchingLoader(spec.loader, before or [], after or [])
        return spec


def is_installed() -> bool:
    return any(isinstance(finder, CompatFinder) for finder in sys.meta_path)


def install() -> None:
    """Register the hook (idempotent).  Modules imported before this call are patched now."""
    if is_installed():
        return
    sys.meta_path.insert(0, CompatFinder())
    for name, fixes in list(BEFORE_IMPORT.items()) + list(AFTER_IMPORT.items()):
        if name in sys.modules:
            for fix in fixes:
                fix()

"""A lazy import hook: run fixes right before or right after chosen modules are imported.

The hook is a :class:`importlib.abc.MetaPathFinder` placed first on ``sys.meta_path``.
For a module it does not watch it returns ``None`` at once (one dict look-up), so the
cost for processes that never import fairseq is negligible.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Callable, Dict, List

Fix = Callable[[], None]


def _fix(module_name: str, function_name: str = "apply", *args) -> Fix:
    """``mega_fairseq_compat.<module_name>.<function_name>(*args)``, imported only when it runs."""

    def fix() -> None:
        module = importlib.import_module(f"mega_fairseq_compat.{module_name}")
        getattr(module, function_name)(*args)

    return fix


_dataclass_defaults = _fix("dataclass_defaults")

# module name -> fixes to run before the module's code executes
BEFORE_IMPORT: Dict[str, List[Fix]] = {
    # torch is fairseq's first import anyway; the allow-list must be in place before
    # fairseq can load a checkpoint.
    "fairseq": [_dataclass_defaults, _fix("checkpoint_loading"), _fix("numpy_compat")],
    "hydra": [_dataclass_defaults],
}
# module name -> fixes to run after the module's code executed
AFTER_IMPORT: Dict[str, List[Fix]] = {
    # fairseq and hydra modules can also be loaded by finders placed before this one
    # (pytest's assertion rewriter loads hydra's pytest plugin), so the dataclass wrapper
    # is also installed as soon as ``dataclasses`` itself is imported; it changes nothing
    # for classes outside fairseq and hydra.
    "dataclasses": [_dataclass_defaults],
    # one-line errors for uncaught user-facing exceptions
    "fairseq": [_fix("user_errors")],
    "fairseq.utils": [_fix("user_dir")],
    "fairseq.modules.transformer_layer": [_fix("better_transformer")],
    "fairseq.models.distributed_fairseq_model": [_fix("distributed")],
    "fairseq.data.iterators": [_fix("background_batches")],
    "fairseq.data.indexed_dataset": [_fix("data_checks")],
    # mixed precision (--fp16/--bf16/--amp) on the CPU and clear errors for bad combinations
    "fairseq.options": [_fix("mixed_precision", "apply_options")],
    "fairseq.optim.fp16_optimizer": [_fix("mixed_precision", "apply_fp16_optimizer")],
    "fairseq.optim.amp_optimizer": [_fix("mixed_precision", "apply_amp_optimizer")],
    "fairseq.tasks.fairseq_task": [_fix("mixed_precision", "apply_fairseq_task")],
    "fairseq.trainer": [_fix("mixed_precision", "apply_trainer")],
    # checkpoint files appear atomically; unloadable ones get an error naming the file
    "fairseq.checkpoint_utils": [_fix("mixed_precision", "apply_checkpoint_utils"),
                                 _fix("checkpoint_saving"), _fix("checkpoint_diagnosis")],
    "fairseq_cli.hydra_train": [_fix("mixed_precision", "apply_hydra_train")],
    **{name: [_fix("mixed_precision", "apply_inference_cli", name)]
       for name in ("fairseq_cli.eval_lm", "fairseq_cli.generate", "fairseq_cli.validate",
                    "fairseq_cli.interactive")},
}
# fairseq-eval-lm runs that score nothing fail
AFTER_IMPORT["fairseq_cli.eval_lm"].append(_fix("eval_lm_checks"))


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

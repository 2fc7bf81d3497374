"""fairseq's mixed-precision flags (``--fp16``, ``--memory-efficient-fp16``, ``--bf16``,
``--memory-efficient-bf16``, ``--amp``) on the CPU, and clear errors for combinations that
cannot work.

fairseq 0.12.2 wrote these paths for CUDA GPUs (and bf16 for TPUs).  On a CPU, or on a
GPU machine with ``--cpu``, they fail or silently do something else:

1. ``--fp16 --cpu``: ``AssertionError: Torch not compiled with CUDA enabled``.
   ``FP16Optimizer.build_fp32_params`` keys its flat float32 master copy by
   ``torch.cuda.current_device()``.  Fix: when every parameter is on the CPU (and no
   pipeline parallelism is used) the flat copy is built the same way on the CPU and keyed
   by ``None``, the ``device.index`` of a CPU tensor, which is the key fairseq's
   ``_sync_fp16_grads_to_fp32`` / ``_sync_fp32_params_to_fp16`` look up.  (On a GPU
   machine with ``--cpu``, fairseq's key 0 matches no CPU parameter in those syncs, so by
   its code the model would never be updated.)  Other cases go to fairseq unchanged.

2. ``--memory-efficient-fp16`` / ``--fp16`` on the CPU train until the first gradient
   overflow, then ``Trainer.train_step``'s ``except OverflowError`` branch runs
   ``grad_norm = torch.tensor(0.0).cuda()`` and crashes.  Fix: that one line (only if it
   is found exactly once in the method's source) becomes
   ``grad_norm = torch.tensor(0.0, device=self.device)`` -- the same tensor on CUDA, the
   trainer's own device elsewhere -- and the method is recompiled in ``fairseq.trainer``'s
   globals with its decorator and original line numbers.  If the line is not found (another
   fairseq version) nothing is changed and a warning is logged.

3. ``--bf16`` / ``--memory-efficient-bf16`` (any device but a TPU):
   ``AttributeError: 'NoneType' object has no attribute 'xla_device'``, because
   ``options.parse_args_and_arch`` sets ``args.tpu = True`` whenever bf16 is requested.
   Fix: bf16 implies ``--tpu`` only if ``--tpu`` was given explicitly or ``torch_xla`` is
   importable; so ``--bf16`` trains in bfloat16 on the CPU and on CUDA GPUs.  YAML configs
   (``fairseq-hydra-train``) never had the implication and are unchanged.

4. ``--amp --cpu`` silently trained in float32: fairseq's task ``train_step`` autocasts
   with ``torch.cuda.amp.autocast`` (no effect on CPU tensors) and ``AMPOptimizer`` builds
   a ``torch.cuda.amp.GradScaler`` (disables itself without CUDA: scale 1, no overflow
   handling).  Fix, only when the optimised parameters are on the CPU: ``AMPOptimizer``
   gets an enabled ``torch.amp.GradScaler("cpu")`` built from the same options as
   fairseq's (initial scale ``--fp16-init-scale``; fairseq passes ``--amp-init-scale`` as
   the growth interval when ``--amp-scale-window`` is set, and so does this), and
   ``FairseqTask.train_step`` runs under ``torch.autocast("cpu", dtype=torch.float16)``
   (fairseq's ``--amp`` is float16 autocast with dynamic loss scaling).  As on CUDA the
   forward pass is autocast and the backward pass (``AMPOptimizer.backward``) is not.
   fairseq's overflow handling, batch retries and ``loss_scale`` logging are unchanged.
   fairseq's ``clip_grad_norm`` unscales the gradients through the torch optimizer and
   ``step`` passes the fairseq wrapper to ``GradScaler.step``, which the scaler tracks as
   a second optimizer and unscales again (gradients divided by the scale twice); on the
   CPU path ``step`` hands the scaler the object it already unscaled.  Tasks that
   override ``train_step`` without calling it (multilingual or semi-supervised
   translation, ...) do not autocast, on CUDA or here.  The plugin's tasks do not
   override it.

5. Inference (``fairseq-eval-lm``, ``fairseq-generate``, ``fairseq-validate``,
   ``fairseq-interactive``): ``--fp16`` calls ``model.half()`` (this works on the CPU), but
   ``--bf16`` was silently ignored (float32).  Fix: while one of these CLI ``main``
   functions runs with bf16 requested, the models that
   ``checkpoint_utils.load_model_ensemble_and_task`` returns (LM-fusion models of
   ``fairseq-generate --lm-path`` included) are converted to bfloat16, and this is logged.
   With ``--fp16`` or ``--bf16`` the dtype the model actually runs in is logged at its
   first forward pass (``--fp16: the model runs in torch.float16``).  ``--amp`` has no
   effect on these scripts (as on CUDA): they evaluate in float32.

6. Contradictory or unsupported requests stop with one error line naming the options,
   instead of an assertion or a traceback deep in fairseq: ``--fp16`` with ``--bf16``,
   ``--amp`` with ``--fp16``/``--bf16`` (or their memory-efficient forms), ``--fp16`` with
   ``--tpu``; ``--bf16`` on a CUDA GPU without bfloat16 support; a half-precision request
   on a CPU where a tiny matmul in that dtype fails; ``--amp`` where torch has no float16
   CPU autocast or CPU gradient scaler.  All checks are in :func:`precision_error`,
   called by the ``parse_args_and_arch`` wrapper (every argparse console script) and by
   ``fairseq-hydra-train`` for YAML configs.
"""

import argparse
import contextvars
import functools
import importlib.util
import inspect
import logging
import sys
import textwrap
import warnings
from typing import Dict, Mapping, Optional

import torch

logger = logging.getLogger(__name__)

_PATCH_MARK = "_mega_fairseq_mixed_precision"
# set on an AMPOptimizer whose scaler was replaced by a CPU GradScaler
CPU_AMP_MARK = "_mega_fairseq_cpu_amp"
AMP_DTYPE = torch.float16

PRECISION_FLAGS = ("fp16", "memory_efficient_fp16", "bf16", "memory_efficient_bf16", "amp", "tpu", "cpu")


def _marked(function) -> bool:
    return getattr(function, _PATCH_MARK, False)


def _mark(function):
    setattr(function, _PATCH_MARK, True)
    return function


# ---------------------------------------------------------------------------------------
# 6. validation, in one place
# ---------------------------------------------------------------------------------------


def _spell(flag: str, style: str) -> str:
    if style == "yaml":
        return f"common.{flag}"
    return "--" + flag.replace("_", "-")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


@functools.lru_cache(maxsize=None)
def _cpu_dtype_failure(dtype: torch.dtype) -> Optional[str]:
    """Why a tiny matmul (forward and backward) in ``dtype`` fails on this CPU, else None."""
    try:
        a = torch.ones(4, 4, dtype=dtype, requires_grad=True)
        out = torch.matmul(a, torch.ones(4, 4, dtype=dtype))
        out.sum().backward()
        if not bool(torch.isfinite(out.float()).all()) or out.dtype != dtype:
            return f"a {dtype} matmul gave {out.dtype} / non-finite values"
    except Exception as error:  # noqa: BLE001  (any failure means: not supported)
        return _one_line(error)
    return None


@functools.lru_cache(maxsize=None)
def _cpu_amp_failure() -> Optional[str]:
    """Why float16 autocast with a CPU gradient scaler is unavailable, else None."""
    if not hasattr(torch.amp, "GradScaler"):
        return f"torch {torch.__version__} has no torch.amp.GradScaler"
    try:
        torch.amp.GradScaler("cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast("cpu", dtype=AMP_DTYPE):
                out = torch.mm(torch.ones(4, 4), torch.ones(4, 4))
    except Exception as error:  # noqa: BLE001
        return _one_line(error)
    if out.dtype != AMP_DTYPE:
        return f"torch {torch.__version__} does not autocast to float16 on the CPU"
    return None


def _cuda_bf16_supported() -> bool:
    return torch.cuda.is_bf16_supported()


def precision_error(requested: Mapping[str, bool], style: str = "cli") -> Optional[str]:
    """The one-line error for a contradictory or unsupported precision request, else None.

    ``requested`` maps the option names of :data:`PRECISION_FLAGS` (fairseq's
    ``common`` fields) to what the user asked for; ``style`` spells them as command-line
    options (``"cli"``) or YAML keys (``"yaml"``)."""
    on = {flag: bool(requested.get(flag, False)) for flag in PRECISION_FLAGS}
    if not any(on[f] for f in ("fp16", "memory_efficient_fp16", "bf16", "memory_efficient_bf16", "amp")):
        return None

    def names(*flags):
        return " / ".join(_spell(f, style) for f in flags if on[f])

    fp16 = on["fp16"] or on["memory_efficient_fp16"]
    bf16 = on["bf16"] or on["memory_efficient_bf16"]
    fp16_names = names("fp16", "memory_efficient_fp16")
    bf16_names = names("bf16", "memory_efficient_bf16")
    if fp16 and bf16:
        return (f"{fp16_names} and {bf16_names} cannot be combined: choose one half-precision "
                "type (float16 with loss scaling, or bfloat16)")
    if on["amp"] and (fp16 or bf16):
        return (f"{_spell('amp', style)} cannot be combined with {fp16_names or bf16_names}: "
                f"{_spell('amp', style)} keeps float32 weights and autocasts to float16, "
                f"{fp16_names or bf16_names} converts the model itself; choose one")
    if fp16 and on["tpu"]:
        return f"{fp16_names} is not supported with {_spell('tpu', style)}; use {_spell('bf16', style)} on TPUs"
    if on["tpu"] or (bf16 and _xla_available()):
        return None  # a TPU run: fairseq's own path
    if on["cpu"] or not torch.cuda.is_available():
        if on["amp"]:
            failure = _cpu_amp_failure()
            if failure:
                return (f"{_spell('amp', style)} on the CPU needs float16 autocast and a CPU "
                        f"gradient scaler ({failure}); drop {_spell('amp', style)}")
        for wanted, dtype, flag_names in ((fp16 or on["amp"], torch.float16, fp16_names or names("amp")),
                                          (bf16, torch.bfloat16, bf16_names)):
            failure = _cpu_dtype_failure(dtype) if wanted else None
            if failure:
                return (f"{flag_names}: this CPU cannot compute in {str(dtype).replace('torch.', '')} "
                        f"({failure}); drop {flag_names} or run on a GPU")
        return None
    if bf16 and not _cuda_bf16_supported():
        device = torch.cuda.get_device_name()
        return (f"{bf16_names}: the GPU ({device}) does not support bfloat16 "
                f"(torch.cuda.is_bf16_supported() is False); use {_spell('fp16', style)} or "
                f"{_spell('amp', style)}")
    return None


def _requested_on_command_line(input_args) -> Dict[str, bool]:
    """The precision options present on the command line (before fairseq's implications)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in PRECISION_FLAGS:
        parser.add_argument(_spell(flag, "cli"), dest=flag, action="store_true")
    known, _ = parser.parse_known_args(sys.argv[1:] if input_args is None else list(input_args))
    return vars(known)


# ---------------------------------------------------------------------------------------
# 3. --bf16 implies --tpu only on TPU hosts; validation for argparse CLIs
# ---------------------------------------------------------------------------------------


def _xla_available() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def _wrap_parse_args_and_arch(original):
    @functools.wraps(original)
    def parse_args_and_arch(parser, input_args=None, parse_known=False, suppress_defaults=False,
                            modify_parser=None):
        if suppress_defaults:  # fairseq re-enters this function without it first
            return original(parser, input_args=input_args, parse_known=parse_known,
                            suppress_defaults=True, modify_parser=modify_parser)
        requested = _requested_on_command_line(input_args)
        error = precision_error(requested, style="cli")
        if error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        result = original(parser, input_args=input_args, parse_known=parse_known,
                          suppress_defaults=False, modify_parser=modify_parser)
        args = result[0] if parse_known else result
        if getattr(args, "bf16", False) and getattr(args, "tpu", False) \
                and not requested["tpu"] and not _xla_available():
            args.tpu = False  # fairseq's "--bf16 implies --tpu" only holds on TPU hosts
        return result

    return _mark(parse_args_and_arch)


def _wrap_hydra_main(original):
    @functools.wraps(original)
    def _hydra_main(cfg, **kwargs):
        common = cfg.common
        error = precision_error({flag: getattr(common, flag, False) for flag in PRECISION_FLAGS}, style="yaml")
        if error:
            sys.exit(f"fairseq-hydra-train: error: {error}")
        return original(cfg, **kwargs)

    return _mark(_hydra_main)


def apply_options() -> None:
    from fairseq import options

    if not _marked(options.parse_args_and_arch):
        options.parse_args_and_arch = _wrap_parse_args_and_arch(options.parse_args_and_arch)


def apply_hydra_train() -> None:
    from fairseq_cli import hydra_train

    if not _marked(hydra_train._hydra_main):
        hydra_train._hydra_main = _wrap_hydra_main(hydra_train._hydra_main)


# ---------------------------------------------------------------------------------------
# 1. flat float32 master parameters on the CPU (FP16Optimizer)
# ---------------------------------------------------------------------------------------


def _flat_fp32_copy_on_cpu(params):
    """fairseq's flattened float32 copy of ``params`` (all on the CPU), keyed by None."""
    total = sum(p.data.numel() for p in params)
    flat = torch.zeros(total, dtype=torch.float32)
    offset = 0
    for p in params:
        numel = p.data.numel()
        flat[offset:offset + numel].copy_(p.data.view(-1))
        offset += numel
    flat = torch.nn.Parameter(flat)
    flat.grad = torch.zeros_like(flat.data)
    return {None: flat}


def _wrap_build_fp32_params(original):
    def build_fp32_params(cls, args, params, flatten=True):
        pipeline = getattr(args, "pipeline_model_parallel", False) and getattr(args, "distributed_no_spawn", False)
        if flatten and not pipeline and len(params) > 0 and all(p.device.type == "cpu" for p in params):
            return _flat_fp32_copy_on_cpu(params)
        return original(cls, args, params, flatten=flatten)

    functools.update_wrapper(build_fp32_params, original)
    return _mark(build_fp32_params)


def apply_fp16_optimizer() -> None:
    from fairseq.optim import fp16_optimizer

    mixin = fp16_optimizer._FP16OptimizerMixin
    current = mixin.__dict__["build_fp32_params"].__func__
    if not _marked(current):
        mixin.build_fp32_params = classmethod(_wrap_build_fp32_params(current))


# ---------------------------------------------------------------------------------------
# 2. the overflow branch of Trainer.train_step
# ---------------------------------------------------------------------------------------

OVERFLOW_LINE = "grad_norm = torch.tensor(0.0).cuda()"
OVERFLOW_REPLACEMENT = "grad_norm = torch.tensor(0.0, device=self.device)"


def recompile_with_line_replaced(cls, name: str, module, old: str, new: str) -> bool:
    """Replace the source line ``old`` (exactly once in ``cls.<name>``, decorators
    included) by ``new`` and recompile the method in ``module``'s globals, keeping file
    name and line numbers.  Returns False, changing nothing, when the line is not found
    exactly once or the source is unavailable."""
    method = cls.__dict__[name]
    function = inspect.unwrap(method)
    try:
        lines, first_line = inspect.getsourcelines(function)
        filename = inspect.getsourcefile(function)
    except (OSError, TypeError):
        return False
    hits = [i for i, line in enumerate(lines) if line.strip() == old]
    if len(hits) != 1:
        return False
    line = lines[hits[0]]
    lines[hits[0]] = line[: len(line) - len(line.lstrip())] + new + "\n"
    code = compile("\n" * (first_line - 1) + textwrap.dedent("".join(lines)), filename, "exec")
    namespace: dict = {}
    exec(code, module.__dict__, namespace)  # noqa: S102  (fairseq's own source, one line changed)
    replacement = namespace[name]
    for target in {replacement, inspect.unwrap(replacement)}:
        target.__qualname__ = method.__qualname__
    replacement.mega_fairseq_compat_original = method
    setattr(cls, name, _mark(replacement))
    return True


def apply_trainer() -> None:
    from fairseq import trainer

    if _marked(trainer.Trainer.__dict__["train_step"]):
        return
    if not recompile_with_line_replaced(trainer.Trainer, "train_step", trainer, OVERFLOW_LINE, OVERFLOW_REPLACEMENT):
        logger.warning(
            "mega_fairseq_compat: %r not found once in fairseq.trainer.Trainer.train_step; "
            "left unchanged (a gradient overflow off CUDA may crash there)", OVERFLOW_LINE,
        )


# ---------------------------------------------------------------------------------------
# 4. --amp on the CPU
# ---------------------------------------------------------------------------------------


def _first_param(fp32_optimizer):
    for group in fp32_optimizer.param_groups:
        for p in group["params"]:
            return p
    return None


def _cpu_grad_scaler(cfg):
    # the options fairseq's AMPOptimizer passes to torch.cuda.amp.GradScaler
    amp_kwargs = {"init_scale": cfg.common.fp16_init_scale}
    if getattr(cfg.common, "amp_scale_window", None) is not None:
        amp_kwargs["growth_interval"] = cfg.common.amp_init_scale
    return torch.amp.GradScaler("cpu", **amp_kwargs)


def _wrap_amp_init(original):
    @functools.wraps(original)
    def __init__(self, cfg, params, fp32_optimizer, **kwargs):
        first = _first_param(fp32_optimizer)
        if first is None or first.device.type != "cpu":
            return original(self, cfg, params, fp32_optimizer, **kwargs)
        with warnings.catch_warnings():
            # fairseq's CUDA scaler, replaced below: "... CUDA is not available. Disabling."
            warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler")
            warnings.filterwarnings("ignore", message=r".*CUDA is not available")
            original(self, cfg, params, fp32_optimizer, **kwargs)
        self._grad_scaler = _cpu_grad_scaler(cfg)
        setattr(self, CPU_AMP_MARK, True)
        # fairseq's torch.cuda.amp.autocast stays inactive on CPU tensors; ours does the work
        warnings.filterwarnings("ignore", message=r"CUDA is not available or torch_xla is imported\. Disabling autocast")
        logger.info("--amp on the CPU: float16 autocast, torch.amp.GradScaler('cpu', init_scale=%s)",
                    cfg.common.fp16_init_scale)

    return _mark(__init__)


def _wrap_amp_backward(original):
    @functools.wraps(original)
    def backward(self, loss):
        if getattr(self, CPU_AMP_MARK, False):
            with torch.autocast("cpu", enabled=False):  # autocast covers the forward pass only
                return original(self, loss)
        return original(self, loss)

    return _mark(backward)


def _wrap_amp_step(original):
    @functools.wraps(original)
    def step(self):
        if getattr(self, CPU_AMP_MARK, False):
            # clip_grad_norm unscaled self.optimizer; stepping that same object keeps the
            # scaler from unscaling the gradients a second time.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        return original(self)

    return _mark(step)


def apply_amp_optimizer() -> None:
    from fairseq.optim import amp_optimizer

    cls = amp_optimizer.AMPOptimizer
    if _marked(cls.__init__):
        return
    cls.__init__ = _wrap_amp_init(cls.__init__)
    cls.backward = _wrap_amp_backward(cls.backward)
    cls.step = _wrap_amp_step(cls.step)


def _wrap_task_train_step(original):
    @functools.wraps(original)
    def train_step(self, sample, model, criterion, optimizer, *args, **kwargs):
        if getattr(optimizer, CPU_AMP_MARK, False):
            with torch.autocast("cpu", dtype=AMP_DTYPE):
                return original(self, sample, model, criterion, optimizer, *args, **kwargs)
        return original(self, sample, model, criterion, optimizer, *args, **kwargs)

    return _mark(train_step)


def apply_fairseq_task() -> None:
    from fairseq.tasks import fairseq_task

    cls = fairseq_task.FairseqTask
    if not _marked(cls.__dict__["train_step"]):
        cls.train_step = _wrap_task_train_step(cls.__dict__["train_step"])


# ---------------------------------------------------------------------------------------
# 5. --bf16 for the inference CLIs
# ---------------------------------------------------------------------------------------

INFERENCE_CLIS = ("fairseq_cli.eval_lm", "fairseq_cli.generate", "fairseq_cli.validate", "fairseq_cli.interactive")
# while an inference CLI's main runs with a half-precision flag: (flag, dtype to convert the
# loaded models to or None when fairseq converts them itself); None otherwise
_inference_precision: contextvars.ContextVar = contextvars.ContextVar("mega_fairseq_inference_precision",
                                                                      default=None)


def _common_section(cfg):
    common = getattr(cfg, "common", None)
    return cfg if common is None else common  # a DictConfig, or an argparse Namespace


def inference_precision(cfg):
    """(flag, conversion dtype) of an inference CLI config: ``("--bf16", torch.bfloat16)``
    for bf16, ``("--fp16", None)`` for fp16 (fairseq's own ``model.half()``), else None."""
    common = _common_section(cfg)
    if getattr(common, "fp16", False):
        return "--fp16", None
    if getattr(common, "bf16", False) or getattr(common, "memory_efficient_bf16", False):
        return "--bf16", torch.bfloat16
    return None


def _wrap_cli_main(original):
    @functools.wraps(original)
    def main(cfg, *args, **kwargs):
        token = _inference_precision.set(inference_precision(cfg))
        try:
            return original(cfg, *args, **kwargs)
        finally:
            _inference_precision.reset(token)

    return _mark(main)


def _log_dtype_on_first_forward(model, flag: str) -> None:
    """Log the dtype(s) of ``model``'s parameters when it first runs, then remove the hooks.
    The hooks sit on every module holding parameters: the sequence generator calls
    ``decoder.forward`` directly, past the model's own hooks."""
    handles = []

    def report(module, inputs):
        for handle in handles:
            handle.remove()
        dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
        logger.info("%s: the model runs in %s", flag, ", ".join(dtypes))

    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            handles.append(module.register_forward_pre_hook(report))


def _wrap_load_model_ensemble_and_task(original):
    @functools.wraps(original)
    def load_model_ensemble_and_task(*args, **kwargs):
        result = original(*args, **kwargs)
        precision = _inference_precision.get()
        if precision is not None:
            flag, dtype = precision
            models = result[0]
            if dtype is not None:
                for model in models:
                    model.to(dtype=dtype)
                logger.info("%s: converted %d loaded model(s) to %s", flag, len(models), dtype)
            for model in models:
                _log_dtype_on_first_forward(model, flag)
        return result

    return _mark(load_model_ensemble_and_task)


def apply_checkpoint_utils() -> None:
    from fairseq import checkpoint_utils

    if not _marked(checkpoint_utils.load_model_ensemble_and_task):
        checkpoint_utils.load_model_ensemble_and_task = _wrap_load_model_ensemble_and_task(
            checkpoint_utils.load_model_ensemble_and_task
        )


def apply_inference_cli(module_name: str) -> None:
    module = sys.modules[module_name]
    if not _marked(module.main):
        module.main = _wrap_cli_main(module.main)

"""fairseq's mixed-precision flags on the CPU (``mega_fairseq_compat.mixed_precision``).

Unit tests of each fix (and that it is a no-op where it is not needed), then the real
console scripts: ``--fp16``, ``--memory-efficient-fp16``, ``--bf16``,
``--memory-efficient-bf16`` and ``--amp`` train ``mega_lm_tiny`` close to a float32 run of
the same seed but not identically (a silent float32 fallback would give bit-identical
weights: CPU training with one thread is deterministic); gradient overflows are skipped
and training goes on; ``fairseq-eval-lm`` / ``-validate`` / ``-generate`` evaluate in
float16 / bfloat16; a translation model trains in half precision; bad combinations stop
with one error line.

The console scripts run with one intra-op thread: deterministic, and on a loaded 2-core
machine two threads made the bfloat16 and autocast runs several times slower.
"""

import dis
import logging
import os
import re
import subprocess
import sys
import textwrap
from argparse import Namespace

import pytest
import torch

from conftest import REPO, console_script, run_cli, write_copy_corpus
from lm_config_helpers import parse_command_line, write_dictionary

import fairseq  # noqa: F401  (applies the compatibility fixes in this process)
from fairseq import checkpoint_utils, options
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.optim.fp16_optimizer import FP16Optimizer, _FP16OptimizerMixin
from fairseq.optim.sgd import SGD
from fairseq.tasks.fairseq_task import FairseqTask
from fairseq.trainer import Trainer

from mega_fairseq_compat import mixed_precision

USER_DIR = REPO / "mega_fairseq"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LM_TRAIN = [
    "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", "mega_lm_tiny",
    "--tokens-per-sample", "64", "--decoder-chunk-size", "16", "--sample-break-mode", "none",
    "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "8", "--cpu", "--seed", "1",
    "--no-progress-bar", "--log-format", "simple", "--log-interval", "10",
    "--no-epoch-checkpoints", "--disable-validation",
]
UPDATES = 30
HALF_FLAGS = ["--fp16", "--memory-efficient-fp16", "--bf16", "--memory-efficient-bf16", "--amp"]
HALF_DTYPE = {"--fp16": torch.float16, "--bf16": torch.bfloat16}
LOSS_SCALED = {"--fp16", "--memory-efficient-fp16", "--amp"}


# ---------------------------------------------------------------------------------------
# unit tests
# ---------------------------------------------------------------------------------------


def _parse(tmp_path, *argv):
    return parse_command_line(write_dictionary(tmp_path / "data", 10), ["--arch", "mega_lm_tiny", *argv])


@pytest.mark.parametrize("flag", ["--bf16", "--memory-efficient-bf16"])
def test_bf16_no_longer_implies_tpu(tmp_path, flag):
    args = _parse(tmp_path, "--cpu", flag)
    assert args.bf16 and not args.tpu


def test_bf16_still_implies_tpu_on_tpu_hosts(tmp_path, monkeypatch):
    """fairseq's implication is kept where it makes sense: an explicit --tpu, torch_xla."""
    assert _parse(tmp_path, "--bf16", "--tpu").tpu
    monkeypatch.setattr(mixed_precision, "_xla_available", lambda: True)
    assert _parse(tmp_path, "--bf16").tpu


def test_parse_without_precision_flags_is_unchanged(tmp_path, monkeypatch):
    """No probe runs and nothing changes when no precision option is given."""
    def no_probe(*args):
        raise AssertionError("probed")
    monkeypatch.setattr(mixed_precision, "_cpu_dtype_failure", no_probe)
    monkeypatch.setattr(mixed_precision, "_cpu_amp_failure", no_probe)
    args = _parse(tmp_path, "--cpu")
    assert not (args.fp16 or args.bf16 or args.amp or args.tpu)
    assert mixed_precision.precision_error({"cpu": True}) is None


@pytest.mark.parametrize("argv, names", [
    (["--fp16", "--bf16"], ["--fp16", "--bf16"]),
    (["--memory-efficient-fp16", "--memory-efficient-bf16"], ["--memory-efficient-fp16", "--memory-efficient-bf16"]),
    (["--amp", "--fp16"], ["--amp", "--fp16"]),
    (["--amp", "--memory-efficient-bf16"], ["--amp", "--memory-efficient-bf16"]),
    (["--fp16", "--tpu"], ["--fp16", "--tpu"]),
])
def test_contradictory_flags_one_error_line(tmp_path, capsys, argv, names):
    with pytest.raises(SystemExit) as stopped:
        _parse(tmp_path, "--cpu", *argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: " in err[0], err
    assert all(name in err[0] for name in names), err[0]


def test_unsupported_cpu_dtype_is_refused(tmp_path, capsys, monkeypatch):
    """A CPU whose tiny bfloat16 matmul fails: --bf16 is refused by name (simulated)."""
    def failure(dtype):
        return "RuntimeError: \"addmm_impl_cpu_\" not implemented for 'BFloat16'" if dtype == torch.bfloat16 else None
    monkeypatch.setattr(mixed_precision, "_cpu_dtype_failure", failure)
    with pytest.raises(SystemExit):
        _parse(tmp_path, "--cpu", "--memory-efficient-bf16")
    err = capsys.readouterr().err
    assert "--memory-efficient-bf16: this CPU cannot compute in bfloat16" in err and "addmm_impl_cpu_" in err
    assert _parse(tmp_path, "--cpu", "--fp16").fp16  # float16 still fine

    monkeypatch.setattr(mixed_precision, "_cpu_amp_failure", lambda: "torch 2.2 has no float16 CPU autocast")
    error = mixed_precision.precision_error({"amp": True, "cpu": True})
    assert error.startswith("--amp on the CPU needs float16 autocast")


def test_gpu_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(mixed_precision, "_cuda_bf16_supported", lambda: False)
    error = mixed_precision.precision_error({"bf16": True})
    assert error.startswith("--bf16: the GPU (Tesla V100-SXM2-16GB) does not support bfloat16"), error
    assert mixed_precision.precision_error({"fp16": True}) is None
    assert mixed_precision.precision_error({"bf16": True, "cpu": True}) is None  # --cpu: the CPU decides
    monkeypatch.setattr(mixed_precision, "_cuda_bf16_supported", lambda: True)
    assert mixed_precision.precision_error({"memory_efficient_bf16": True}) is None


def test_real_cpu_probes_pass():
    """torch 2.13 on this CPU: float16 and bfloat16 matmuls, float16 autocast, CPU GradScaler."""
    assert mixed_precision._cpu_dtype_failure(torch.float16) is None
    assert mixed_precision._cpu_dtype_failure(torch.bfloat16) is None
    assert mixed_precision._cpu_amp_failure() is None


def test_yaml_names_in_hydra_errors():
    error = mixed_precision.precision_error({"amp": True, "fp16": True, "cpu": True}, style="yaml")
    assert error.startswith("common.amp cannot be combined with common.fp16")


def test_fp16_flat_master_params_on_cpu():
    """--fp16: the flat float32 copy lives on the CPU under key None (CPU device.index), so
    fairseq's gradient / parameter syncs find the parameters; one step updates the model."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).half()
    params = list(model.parameters())
    flat = FP16Optimizer.build_fp32_params(Namespace(), params, flatten=True)
    assert list(flat) == [None] and flat[None].dtype == torch.float32 and flat[None].device.type == "cpu"
    torch.testing.assert_close(flat[None].data, torch.cat([p.data.float().view(-1) for p in params]))
    assert flat[None].grad.abs().sum() == 0

    # FP16Optimizer.build_optimizer, with a legacy SGD as the float32 optimizer
    optimizer = FP16Optimizer(_fp16_cfg(), params, SGD(_SGD_ARGS, [flat[None]]), flat)
    before = [p.detach().clone() for p in params]
    optimizer.zero_grad()
    optimizer.backward(model(torch.ones(4, 3, dtype=torch.half)).float().sum())
    optimizer.multiply_grads(1.0)
    optimizer.clip_grad_norm(0.0)
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, params))


def test_fp16_flat_master_params_elsewhere_unchanged(monkeypatch):
    """Not all on the CPU (here: meta tensors standing in for GPU parameters), unflattened,
    or pipeline-parallel: fairseq's own code runs (keyed by the CUDA device)."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    meta = [torch.nn.Parameter(torch.empty(3, device="meta", dtype=torch.half))]
    assert list(FP16Optimizer.build_fp32_params(Namespace(), meta, flatten=True)) == [0]
    cpu = [torch.nn.Parameter(torch.ones(3, dtype=torch.half))]
    assert isinstance(FP16Optimizer.build_fp32_params(Namespace(), cpu, flatten=False), list)
    assert mixed_precision._marked(_FP16OptimizerMixin.__dict__["build_fp32_params"].__func__)


def _fp16_cfg(**common):
    from omegaconf import OmegaConf

    values = dict(fp16_init_scale=128, fp16_scale_window=None, fp16_scale_tolerance=0.0,
                  threshold_loss_scale=None, min_loss_scale=1e-4, amp_scale_window=None,
                  amp_init_scale=128, bf16=False, model_parallel_size=1)
    values.update(common)
    return OmegaConf.create({
        "common": values,
        "optimization": {"update_freq": [1]},
        "distributed_training": {"distributed_world_size": 1},
    })


_SGD_ARGS = Namespace(lr=[0.5], momentum=0.0, weight_decay=0.0)


def _amp_optimizer(model, **common):
    cfg = _fp16_cfg(**common)
    fp32_optimizer = SGD(_SGD_ARGS, list(model.parameters()))
    return AMPOptimizer(cfg, list(model.parameters()), fp32_optimizer)


def test_amp_on_cpu_uses_an_enabled_cpu_grad_scaler():
    optimizer = _amp_optimizer(torch.nn.Linear(4, 1), fp16_init_scale=2 ** 10)
    scaler = optimizer.scaler
    assert type(scaler) is torch.amp.GradScaler and scaler._device == "cpu" and scaler.is_enabled()
    assert scaler.get_scale() == 2 ** 10 and optimizer.next_loss_scale == 2 ** 9
    assert getattr(optimizer, mixed_precision.CPU_AMP_MARK)
    # fairseq's kwargs: --amp-init-scale is the growth interval when --amp-scale-window is set
    windowed = _amp_optimizer(torch.nn.Linear(4, 1), amp_scale_window=100, amp_init_scale=64)
    assert windowed.scaler.get_growth_interval() == 64


def test_amp_step_unscales_gradients_once():
    """fairseq's clip_grad_norm unscales via the torch optimizer and step() passes the fairseq
    wrapper to GradScaler.step, which unscaled a second time (update / scale); on the CPU
    path the update is lr * gradient, as in float32."""
    model = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    optimizer = _amp_optimizer(model)  # SGD, lr 0.5
    optimizer.backward(model(torch.ones(2, 4)).sum())  # gradient 2 per weight
    grad_norm = optimizer.clip_grad_norm(0.0)
    torch.testing.assert_close(grad_norm, torch.tensor(4.0))  # sqrt(4 * 2**2), unscaled
    optimizer.step()
    torch.testing.assert_close(model.weight.detach(), torch.zeros(1, 4))  # 1 - 0.5 * 2


def test_amp_overflow_backs_off_and_skips_the_step():
    model = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    optimizer = _amp_optimizer(model, fp16_init_scale=2 ** 10)
    optimizer.backward(model(torch.full((2, 4), float("inf"))).sum())
    assert not torch.isfinite(optimizer.clip_grad_norm(0.0))
    optimizer.step()
    assert optimizer.scaler.get_scale() == 2 ** 9
    torch.testing.assert_close(model.weight.detach(), torch.ones(1, 4))


def test_amp_off_cpu_keeps_fairseqs_scaler():
    """Parameters not on the CPU (meta tensors stand in for CUDA ones): fairseq's own
    torch.cuda.amp.GradScaler, no CPU autocast."""
    model = torch.nn.Linear(4, 1, device="meta")
    with pytest.warns(Warning):  # fairseq's CUDA scaler on a machine without CUDA
        optimizer = _amp_optimizer(model)
    assert type(optimizer.scaler) is torch.cuda.amp.GradScaler
    assert not getattr(optimizer, mixed_precision.CPU_AMP_MARK, False)


class _Recorder(torch.nn.Module):
    """A model + criterion pair that records the autocast state of forward and backward."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.seen = {}

    def set_num_updates(self, num_updates):
        pass

    def criterion(self, model, sample):
        self.seen["forward"] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        out = self.linear(sample)
        self.seen["output"] = out.dtype
        out.register_hook(lambda grad: self.seen.__setitem__("backward", torch.is_autocast_enabled("cpu")))
        return out.float().sum(), 1, {}


@pytest.mark.parametrize("amp", [True, False])
def test_task_train_step_autocasts_the_forward_pass_on_cpu(amp):
    recorder = _Recorder()
    if amp:
        optimizer = _amp_optimizer(recorder)
    else:
        optimizer = SGD(_SGD_ARGS, list(recorder.parameters()))
    task = FairseqTask(None)
    task.train_step(torch.ones(2, 4), recorder, recorder.criterion, optimizer, update_num=0)
    if amp:
        assert recorder.seen["forward"] == (True, torch.float16) and recorder.seen["output"] == torch.float16
    else:
        assert recorder.seen["forward"][0] is False and recorder.seen["output"] == torch.float32
    assert recorder.seen["backward"] is False
    assert recorder.linear.weight.grad is not None


def test_trainer_overflow_line_replaced():
    """Trainer.train_step was recompiled from fairseq's file, same lines, one line changed."""
    patched = Trainer.__dict__["train_step"]
    original = patched.mega_fairseq_compat_original
    new_code, old_code = patched.__wrapped__.__code__, original.__wrapped__.__code__
    assert (new_code.co_filename, new_code.co_firstlineno) == (old_code.co_filename, old_code.co_firstlineno)
    assert new_code.co_filename.endswith("fairseq/trainer.py")
    assert patched.__qualname__ == "Trainer.train_step"

    def cuda_uses(code):
        return sum(1 for instruction in dis.get_instructions(code) if instruction.argval == "cuda")

    assert cuda_uses(new_code) == cuda_uses(old_code) - 1


def _toy_module(tmp_path, monkeypatch, body):
    (tmp_path / "toy_overflow.py").write_text(textwrap.dedent('''
        import functools
        import torch

        def tag(function):
            @functools.wraps(function)
            def inner(*args, **kwargs):
                return ("tagged", function(*args, **kwargs))
            return inner

        class Toy:
            device = torch.device("cpu")

            @tag
            def train_step(self):
                try:
                    raise OverflowError("overflow")
                except OverflowError:
        ''') + textwrap.indent(textwrap.dedent(body), " " * 12) + "        return grad_norm\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_overflow", None)
    import toy_overflow

    return toy_overflow


def test_line_replacement_on_a_toy_method(tmp_path, monkeypatch):
    toy = _toy_module(tmp_path, monkeypatch, "grad_norm = torch.tensor(0.0).cuda()\n")
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):
            toy.Toy().train_step()
    assert mixed_precision.recompile_with_line_replaced(
        toy.Toy, "train_step", toy, mixed_precision.OVERFLOW_LINE, mixed_precision.OVERFLOW_REPLACEMENT)
    tag, value = toy.Toy().train_step()  # the decorator was applied again
    assert tag == "tagged" and value.device.type == "cpu" and value.item() == 0.0


@pytest.mark.parametrize("body", [
    "grad_norm = torch.tensor(0.0, device='cpu')\n",  # line absent (another fairseq)
    "grad_norm = torch.tensor(0.0).cuda()\ngrad_norm = torch.tensor(0.0).cuda()\n",  # not unique
])
def test_line_replacement_leaves_other_sources_alone(tmp_path, monkeypatch, caplog, body):
    toy = _toy_module(tmp_path, monkeypatch, body)
    before = toy.Toy.__dict__["train_step"]
    assert not mixed_precision.recompile_with_line_replaced(
        toy.Toy, "train_step", toy, mixed_precision.OVERFLOW_LINE, mixed_precision.OVERFLOW_REPLACEMENT)
    assert toy.Toy.__dict__["train_step"] is before

    # apply_trainer finding such a Trainer: unchanged, with a warning
    monkeypatch.setattr(fairseq.trainer, "Trainer", toy.Toy)
    with caplog.at_level(logging.WARNING, logger=mixed_precision.__name__):
        mixed_precision.apply_trainer()
    assert toy.Toy.__dict__["train_step"] is before
    assert "left unchanged" in caplog.text


def test_inference_bf16_scoped_to_cli_main(caplog):
    """Loaded models become bfloat16 only while an inference CLI's main runs with bf16; with
    --fp16/--bf16 the dtype of the first forward pass is logged once."""
    def fake_loader(*args, **kwargs):
        return [torch.nn.Linear(2, 2)], None, None

    loader = mixed_precision._wrap_load_model_ensemble_and_task(fake_loader)
    seen = []

    def fake_main(cfg):
        model = loader()[0][0]
        if cfg.common.__dict__.get("fp16"):
            model.half()  # what fairseq's inference scripts do for --fp16
        for _ in range(2):
            model(torch.ones(1, 2, dtype=model.weight.dtype))
        seen.append(model.weight.dtype)

    main = mixed_precision._wrap_cli_main(fake_main)
    assert loader()[0][0].weight.dtype == torch.float32  # outside a CLI main
    for common, dtype in (({"bf16": True}, torch.bfloat16), ({"memory_efficient_bf16": True}, torch.bfloat16),
                          ({"fp16": True}, torch.float16), ({}, torch.float32)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=mixed_precision.__name__):
            main(Namespace(common=Namespace(**common)))
        assert seen[-1] == dtype, common
        reports = [r.getMessage() for r in caplog.records if "the model runs in" in r.getMessage()]
        assert reports == ([f"--{'fp16' if dtype == torch.float16 else 'bf16'}: the model runs in {dtype}"]
                           if common else []), reports
    assert loader()[0][0].weight.dtype == torch.float32  # scope ended


def test_inference_clis_and_loader_are_wrapped():
    import fairseq_cli.eval_lm
    import fairseq_cli.generate
    import fairseq_cli.interactive
    import fairseq_cli.validate

    for module in (fairseq_cli.eval_lm, fairseq_cli.generate, fairseq_cli.validate, fairseq_cli.interactive):
        assert mixed_precision._marked(module.main) and module.main.__module__ == module.__name__
    assert mixed_precision._marked(checkpoint_utils.load_model_ensemble_and_task)
    assert mixed_precision._marked(options.parse_args_and_arch)


# ---------------------------------------------------------------------------------------
# console scripts
# ---------------------------------------------------------------------------------------


def _train_lm(data, save_dir, *extra, updates=UPDATES):
    result = run_cli([console_script("fairseq-train"), data, *LM_TRAIN, "--max-update", str(updates),
                      "--save-dir", save_dir, *extra], env=ONE_THREAD)
    return result.stdout + result.stderr


def _final_train_stats(log):
    """(loss, ppl) of the last end-of-epoch ``train`` line (the average over the run)."""
    lines = re.findall(r"\| train \| epoch \d+ \| loss ([0-9.]+) \| (?:nll_loss [0-9.]+ \| )?ppl ([0-9.]+)", log)
    assert lines, log[-3000:]
    return tuple(float(x) for x in lines[-1])


def _weights(path):
    return {k: v.float() for k, v in torch.load(path, map_location="cpu")["model"].items() if v.is_floating_point()}


def _max_weight_difference(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def fp32_lm(tmp_path_factory, shakespeare_lm_data):
    """float32 reference: 30 updates of mega_lm_tiny (its checkpoint is also evaluated)."""
    save = tmp_path_factory.mktemp("fp32_lm")
    log = _train_lm(shakespeare_lm_data, save)
    return _final_train_stats(log), save / "checkpoint_last.pt"


@pytest.mark.slow
@pytest.mark.parametrize("flag", HALF_FLAGS)
def test_half_precision_training_close_to_float32(tmp_path, shakespeare_lm_data, fp32_lm, flag):
    (loss32, ppl32), checkpoint32 = fp32_lm
    log = _train_lm(shakespeare_lm_data, tmp_path, flag)
    assert f"num_updates {UPDATES}" in log and "done training" in log
    loss, ppl = _final_train_stats(log)
    print(f"{flag}: train loss {loss} ppl {ppl} vs float32 {loss32} / {ppl32}")
    assert abs(loss - loss32) < 0.05 and abs(ppl - ppl32) / ppl32 < 0.02
    if flag in LOSS_SCALED:  # dynamic loss scaling was active (a disabled AMP scaler logs 1)
        assert re.search(r"\| loss_scale 128 \|", log), log[-2000:]
    else:
        assert not re.search(r"\| loss_scale ", log)
    # really half precision: not the float32 run's weights (bit-identical if it fell back)
    difference = _max_weight_difference(tmp_path / "checkpoint_last.pt", checkpoint32)
    print(f"{flag}: max |weight - float32 weight| = {difference:.3g}")
    assert 0 < difference < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("flag, message", [
    ("--fp16", "NOTE: gradient overflow detected, ignoring gradient, setting loss scale to:"),
    ("--memory-efficient-fp16", "NOTE: gradient overflow detected, ignoring gradient, setting loss scale to:"),
    ("--amp", "AMP: overflow detected, setting scale to"),
])
def test_gradient_overflow_skipped_and_training_goes_on(tmp_path, shakespeare_lm_data, flag, message):
    log = _train_lm(shakespeare_lm_data, tmp_path, flag, "--fp16-init-scale", str(2 ** 30),
                    "--batch-size", "2", "--log-interval", "1", "--no-save", updates=3)
    overflows = log.count(message)
    print(f"{flag}: {overflows} overflows before the loss scale fitted")
    assert overflows >= 10, log[-3000:]
    assert "num_updates 3" in log and "done training" in log
    assert "Traceback" not in log


def _eval_lm(data, checkpoint, *extra):
    result = run_cli([console_script("fairseq-eval-lm"), data, "--user-dir", USER_DIR, "--path", checkpoint,
                      "--gen-subset", "valid", "--cpu", "--tokens-per-sample", "64", "--batch-size", "8",
                      "--output-word-probs", *extra], env=ONE_THREAD)
    log = result.stdout + result.stderr
    loss = float(re.search(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+)", log).group(1))
    word_probs = [float(x) for line in re.findall(r"fairseq_cli\.eval_lm \| \d+ (.*)", log)
                  for x in re.findall(r"\[(-?[0-9.]+)\]", line)]
    return log, loss, word_probs


@pytest.mark.slow
def test_eval_lm_in_half_precision(shakespeare_lm_data, fp32_lm):
    checkpoint = fp32_lm[1]
    _, loss32, probs32 = _eval_lm(shakespeare_lm_data, checkpoint)
    for flag, tolerance in (("--fp16", 0.02), ("--bf16", 0.1)):
        log, loss, probs = _eval_lm(shakespeare_lm_data, checkpoint, flag)
        differences = [abs(a - b) for a, b in zip(probs, probs32)]
        print(f"eval-lm {flag}: loss (base 2) {loss} vs {loss32}; {sum(d > 0 for d in differences)} of "
              f"{len(differences)} word log-probs differ, max {max(differences):.4f}")
        assert len(probs) == len(probs32) > 1000
        assert abs(loss - loss32) < 0.01
        # evaluated in half precision: most word log-probs differ a little
        assert sum(d > 0 for d in differences) > len(differences) / 2 and max(differences) < tolerance
        assert f"{flag}: the model runs in {HALF_DTYPE[flag]}" in log
    assert "--bf16: converted 1 loaded model(s) to torch.bfloat16" in log


@pytest.mark.slow
def test_validate_in_half_precision(shakespeare_lm_data, fp32_lm):
    def validate(*extra):
        result = run_cli([console_script("fairseq-validate"), shakespeare_lm_data, "--user-dir", USER_DIR,
                          "--task", "language_modeling", "--path", fp32_lm[1], "--valid-subset", "valid",
                          "--cpu", "--batch-size", "8", "--tokens-per-sample", "64", *extra], env=ONE_THREAD)
        log = result.stdout + result.stderr
        return log, float(re.search(r"valid on 'valid' subset \| loss [0-9.]+ \| ppl ([0-9.]+)", log).group(1))

    _, ppl32 = validate()
    for flag in ("--fp16", "--bf16"):
        log, ppl = validate(flag)
        print(f"validate {flag}: ppl {ppl} vs float32 {ppl32}")
        assert abs(ppl - ppl32) / ppl32 < 0.005
        assert f"{flag}: the model runs in {HALF_DTYPE[flag]}" in log
    assert "--bf16: converted 1 loaded model(s) to torch.bfloat16" in log


@pytest.mark.slow
def test_generate_in_half_precision(shakespeare_lm_data, fp32_lm):
    def generate(*extra):
        result = run_cli([console_script("fairseq-generate"), shakespeare_lm_data, "--user-dir", USER_DIR,
                          "--task", "language_modeling", "--path", fp32_lm[1], "--cpu", "--tokens-per-sample", "64",
                          "--beam", "2", "--max-len-b", "8", "--sample-break-mode", "eos", "--batch-size", "64",
                          "--gen-subset", "valid", *extra], env=ONE_THREAD)
        log = result.stdout + result.stderr
        prompts = {int(i): text for i, text in re.findall(r"^S-(\d+)\t(.*)$", log, re.M)}
        hypotheses = {int(i): (float(score), text) for i, score, text in re.findall(r"^H-(\d+)\t(\S+)\t(.*)$", log, re.M)}
        return log, prompts, hypotheses

    _, prompts, hyps32 = generate()
    sentences_of_prompt = {}
    for i, prompt in prompts.items():
        sentences_of_prompt.setdefault(prompt, []).append(i)
    for flag in ("--fp16", "--bf16"):
        log, _, hyps = generate(flag)
        assert hyps.keys() == hyps32.keys() == prompts.keys() and len(hyps) > 100
        # per distinct prompt: a repeated prompt (e.g. the ~150 empty lines) is one decision, not many
        same_text = sum(all(hyps[i][1] == hyps32[i][1] for i in ids) for ids in sentences_of_prompt.values())
        score_differences = [abs(hyps[i][0] - hyps32[i][0]) for i in hyps if hyps[i][1] == hyps32[i][1]]
        print(f"generate {flag}: {same_text}/{len(sentences_of_prompt)} distinct prompts continued as in float32, "
              f"{sum(d > 0 for d in score_differences)} scores differ, max {max(score_differences):.4f}")
        assert len(sentences_of_prompt) > 100 and same_text > 0.9 * len(sentences_of_prompt)
        assert sum(d > 0 for d in score_differences) > len(score_differences) / 2
        assert max(score_differences) < 0.1
        assert f"{flag}: the model runs in {HALF_DTYPE[flag]}" in log
    assert "--bf16: converted 1 loaded model(s) to torch.bfloat16" in log


@pytest.fixture(scope="module")
def copy_translation_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("copy_mt")
    write_copy_corpus(root / "text")
    run_cli([console_script("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
             "--trainpref", root / "text" / "train", "--validpref", root / "text" / "valid",
             "--destdir", root / "bin", "--joined-dictionary", "--workers", "1"])
    return root / "bin"


@pytest.mark.slow
def test_translation_trains_in_half_precision(tmp_path, copy_translation_data):
    def train(name, *extra):
        result = run_cli([console_script("fairseq-train"), copy_translation_data, "--user-dir", USER_DIR,
                          "--task", "translation", "--arch", "mega_tiny", "--share-all-embeddings",
                          "--optimizer", "adam", "--lr", "5e-3", "--criterion", "label_smoothed_cross_entropy",
                          "--label-smoothing", "0.1", "--max-tokens", "1000", "--cpu", "--seed", "1",
                          "--no-progress-bar", "--log-format", "simple", "--max-update", "8",
                          "--no-epoch-checkpoints", "--disable-validation", "--num-workers", "0",
                          "--save-dir", tmp_path / name, *extra], env=ONE_THREAD)
        log = result.stdout + result.stderr
        assert "num_updates 8" in log and "done training" in log, log[-3000:]
        return log, _final_train_stats(log)

    _, (loss32, ppl32) = train("fp32")
    for flag in ("--fp16", "--bf16"):
        log, (loss, ppl) = train(flag, flag)
        difference = _max_weight_difference(tmp_path / flag / "checkpoint_last.pt", tmp_path / "fp32" / "checkpoint_last.pt")
        print(f"mega_tiny {flag}: train loss {loss} ppl {ppl} vs float32 {loss32} / {ppl32}; "
              f"max weight difference {difference:.3g}")
        assert abs(loss - loss32) < 0.05 and 0 < difference < 0.1
        assert bool(re.search(r"\| loss_scale 128 \|", log)) == (flag == "--fp16")


def _failing(args):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **ONE_THREAD})
    assert result.returncode != 0, result.stdout[-2000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("script, flags, names", [
    ("fairseq-train", ["--fp16", "--bf16"], ["--fp16", "--bf16"]),
    ("fairseq-train", ["--amp", "--memory-efficient-fp16"], ["--amp", "--memory-efficient-fp16"]),
    ("fairseq-eval-lm", ["--amp", "--bf16"], ["--amp", "--bf16"]),
])
def test_bad_combinations_one_error_line(tmp_path, shakespeare_lm_data, script, flags, names):
    if script == "fairseq-train":
        args = [console_script(script), shakespeare_lm_data, *LM_TRAIN, "--max-update", "1", "--no-save", *flags]
    else:
        args = [console_script(script), shakespeare_lm_data, "--user-dir", USER_DIR, "--path",
                tmp_path / "never_read.pt", "--cpu", *flags]
    result = _failing(args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"{script}: error: "), result.stderr[-2000:]
    assert all(name in errors[0] for name in names), errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_hydra_yaml_bf16_trains_and_bad_yaml_is_refused(tmp_path, shakespeare_lm_data):
    """YAML configs never had fairseq's bf16 => tpu implication: bf16 trains on the CPU; a
    config asking for amp and fp16 stops with one error line naming the keys."""
    from omegaconf import OmegaConf

    def config(name, **common):
        OmegaConf.save(OmegaConf.create({
            "common": {"user_dir": str(USER_DIR), "cpu": True, "seed": 1, "log_format": "simple",
                       "log_interval": 1, **common},
            "task": {"_name": "language_modeling", "data": str(shakespeare_lm_data),
                     "tokens_per_sample": 32, "sample_break_mode": "none"},
            "model": {"_name": "mega_lm", "decoder_embed_dim": 32, "decoder_hidden_dim": 32,
                      "decoder_ffn_embed_dim": 32, "decoder_z_dim": 16, "decoder_n_dim": 4,
                      "decoder_layers": 1},
            "criterion": {"_name": "cross_entropy"}, "optimizer": {"_name": "adam"},
            "lr_scheduler": {"_name": "fixed"}, "optimization": {"lr": [0.001], "max_update": 2},
            "dataset": {"batch_size": 4}, "checkpoint": {"no_save": True},
        }), tmp_path / f"{name}.yaml")
        return [console_script("fairseq-hydra-train"), "--config-dir", tmp_path, "--config-name", name,
                f"hydra.run.dir={tmp_path / name}"]

    result = run_cli(config("bf16", bf16=True), env=ONE_THREAD)
    log = result.stdout + result.stderr
    assert re.search(r"num_updates 2\b", log) and "xla" not in log.lower(), log[-3000:]

    bad = _failing(config("amp_fp16", amp=True, fp16=True))
    assert "fairseq-hydra-train: error: common.amp cannot be combined with common.fp16" in bad.stderr
    assert "Traceback" not in bad.stderr

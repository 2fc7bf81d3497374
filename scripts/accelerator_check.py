#!/usr/bin/env python
"""The bookkeeping of the GPU check, ``scripts/check_accelerator.sh`` (which runs the steps):
device facts, the parallel corpus of the translation runs, parsing fairseq-train logs, and
the final report (JSON + Markdown) with its verdict.

    python scripts/accelerator_check.py device-info --device cuda --out OUT/device.json
    python scripts/accelerator_check.py copy-corpus --out-dir OUT/data/mt_text --train-pairs 4000
    python scripts/accelerator_check.py record-run --log OUT/train/lm_fp16.log --rc 0 ...
    python scripts/accelerator_check.py report --out-dir OUT --mode cuda

``device-info`` exits 2 with a one-line explanation when the device is not usable (no CUDA
build of torch, no visible GPU), so the check stops before doing anything else. ``report``
exits 1 when anything failed: the device tests, a training run (non-zero exit, fewer
updates than asked, a non-finite loss, a loss too far from the float32 run's), or the layer
benchmark.

Layout of OUT (the shell script writes it; the report reads it):
  device.json                 device-info's facts
  pytest.xml, pytest.log, pytest.rc, pytest.cmd    the device-test subset
  train/<task>_<precision>.log / .json             one fairseq-train run, its parsed record
  benchmark/benchmark.json, benchmark.log, benchmark.rc, benchmark.cmd   the layer section
  accelerator_check.json, accelerator_check.md     the report
"""

import argparse
import importlib.metadata
import json
import math
import platform
import random
import statistics
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# precision name -> the fairseq-train flag (float32 is fairseq's default, no flag)
PRECISIONS: Dict[str, Optional[str]] = {"fp32": None, "fp16": "--fp16", "bf16": "--bf16", "amp": "--amp"}
TASKS = {"lm": "language modelling, mega_lm_tiny", "mt": "translation, mega_tiny"}
# a half-precision run's final loss may differ from the float32 run's by this fraction
DEFAULT_LOSS_TOLERANCE = 0.15
# the paper (Ma et al. 2022): Mega-chunk vs a transformer at 4k tokens
PAPER_LENGTH = 4096
PAPER_SPEEDUP = 5.5
PAPER_MEMORY = 0.13
LOG_TAIL_LINES = 12
# what fairseq logs when fp16 loss scaling overflows (the update is skipped) or AMP skips a batch
OVERFLOW_NOTES = ("gradient overflow detected", "AMP: overflow detected", "AMP: skipping this batch")


# ------------------------------------------------------------------ device facts
class DeviceUnavailable(RuntimeError):
    """The device asked for cannot be used here (the message says why)."""


def device_facts(name: str) -> dict:
    """Facts about the device ``name`` ("cpu", "cuda", "cuda:N") and the software stack;
    raises DeviceUnavailable with an explanation when CUDA is asked for and not usable."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise DeviceUnavailable(f"{name!r} is not a torch device ({error})") from None
    facts = dict(requested=name, type=device.type, torch=torch.__version__, torch_cuda=torch.version.cuda,
                 python=platform.python_version(), fairseq=_version("fairseq"),
                 mega_fairseq=_version("mega-fairseq"), cpus=_cpu_count(),
                 processor=platform.processor() or platform.machine(),
                 date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    if device.type == "cpu":
        facts["name"] = f"CPU ({facts['processor']}, {facts['cpus']} cores)"
        return facts
    if device.type != "cuda":
        raise DeviceUnavailable(f"device {name}: only cpu and cuda are supported")
    if torch.version.cuda is None:
        raise DeviceUnavailable(
            f"CUDA is not available: torch {torch.__version__} is a CPU-only build (torch.version.cuda is "
            "None). Install a CUDA build of torch 2.13.0 into the environment, or point "
            "MEGA_FAIRSEQ_PYTHON at a python that has one; `--dry-run` runs the check on the CPU.")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"CUDA is not available: torch {torch.__version__} is built with CUDA {torch.version.cuda} but "
            "sees no GPU (check nvidia-smi, the driver and CUDA_VISIBLE_DEVICES); `--dry-run` runs the "
            "check on the CPU.")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    properties = torch.cuda.get_device_properties(index)
    facts.update(
        name=torch.cuda.get_device_name(index), index=index, capability=f"{properties.major}.{properties.minor}",
        memory_gib=round(properties.total_memory / 2 ** 30, 1), device_count=torch.cuda.device_count(),
        cudnn=torch.backends.cudnn.version(), bf16_supported=bool(torch.cuda.is_bf16_supported()),
    )
    return facts


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_count() -> Optional[int]:
    import os

    return os.cpu_count()


# ------------------------------------------------------------------ data
def write_copy_corpus(directory: Path, train_pairs: int, valid_pairs: int = 100, seed: int = 0,
                      vocabulary: int = 64, lengths=(4, 24), languages=("src", "tgt"),
                      words: Optional[Sequence[str]] = None,
                      splits: Optional[Sequence[Tuple[str, int]]] = None) -> Path:
    """<split>.<src>/<tgt>: sentences of random words whose translation is the sentence
    itself (a task a tiny model learns quickly, so the loss falls within a few dozen updates).
    ``words`` defaults to w0 .. w<vocabulary - 1>; ``splits`` to train and valid of
    ``train_pairs`` and ``valid_pairs`` sentences."""
    rng = random.Random(seed)
    words = list(words) if words is not None else [f"w{i}" for i in range(vocabulary)]
    directory.mkdir(parents=True, exist_ok=True)
    source, target = languages
    for split, count in splits or (("train", train_pairs), ("valid", valid_pairs)):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(*lengths))) + "\n" for _ in range(count)]
        (directory / f"{split}.{source}").write_text("".join(lines))
        (directory / f"{split}.{target}").write_text("".join(lines))
    return directory


# ------------------------------------------------------------------ fairseq logs
def json_records(log: str, tag: str) -> List[dict]:
    """The statistics of every ``| <tag> | {...}`` line of a ``--log-format json`` log
    (tag: train_inner, train, valid), values converted to float where they are numbers."""
    marker = f"| {tag} | "
    records = []
    for line in log.splitlines():
        if marker not in line:
            continue
        payload = line.split(marker, 1)[1].strip()
        if not payload.startswith("{"):
            continue
        try:
            raw = json.loads(payload)
        except json.JSONDecodeError:
            continue
        records.append({key: _number(value) for key, value in raw.items()})
    return records


def _number(value):
    if isinstance(value, str):
        try:
            return float(value)  # fairseq writes "13.234", also "inf" and "nan"
        except ValueError:
            return value
    return value


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def parse_train_log(log: str) -> dict:
    """What a ``fairseq-train --log-format json`` log says about a run:

    updates      the last num_updates logged
    final_loss   the training loss of the last train_inner interval (or, without one, of
                 the last epoch summary); base 2, as fairseq logs it
    wps          median words/s over the train_inner intervals after the first (the first
                 includes start-up); the last epoch summary's when there is no later one
    valid_loss   the last validation loss logged (None without validation)
    train_seconds   fairseq's "done training in X seconds"
    overflows    fp16/AMP loss-scale overflows and skipped batches reported
    loss_scale   the last loss scale logged (fp16/AMP; None otherwise)
    intervals    the number of train_inner lines
    """
    inner, epochs, valid = json_records(log, "train_inner"), json_records(log, "train"), json_records(log, "valid")
    parsed = dict(updates=None, final_loss=None, wps=None, valid_loss=None, train_seconds=None,
                  overflows=0, loss_scale=None, intervals=len(inner))
    if inner:
        last = inner[-1]
        parsed.update(updates=_int(last.get("num_updates")), final_loss=last.get("loss"),
                      loss_scale=last.get("loss_scale"))
        after_warmup = [r["wps"] for r in inner[1:] if _finite(r.get("wps"))]
        if after_warmup:
            parsed["wps"] = statistics.median(after_warmup)
    if epochs:
        last_epoch = epochs[-1]
        epoch_updates = _int(last_epoch.get("train_num_updates"))
        if parsed["updates"] is None or (epoch_updates is not None and epoch_updates > parsed["updates"]):
            parsed["updates"] = epoch_updates
        if parsed["final_loss"] is None:
            parsed["final_loss"] = last_epoch.get("train_loss")
        if parsed["wps"] is None and _finite(last_epoch.get("train_wps")):
            parsed["wps"] = last_epoch["train_wps"]
        if parsed["loss_scale"] is None:
            parsed["loss_scale"] = last_epoch.get("train_loss_scale")
    if valid:
        parsed["valid_loss"] = valid[-1].get("valid_loss")
    for line in log.splitlines():
        if any(note in line for note in OVERFLOW_NOTES):
            parsed["overflows"] += 1
        elif "done training in" in line:
            try:
                parsed["train_seconds"] = float(line.split("done training in", 1)[1].split()[0])
            except (IndexError, ValueError):
                pass
    return parsed


def _int(value) -> Optional[int]:
    return int(value) if _finite(value) else None


def last_error_line(log: str) -> str:
    """The line that best explains a failed run: the last exception line of a traceback,
    else the last non-empty line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Exit")) and " " not in head:
            return line
    return lines[-1] if lines else "(empty log)"


def run_record(task: str, precision: str, log: str, returncode: int, max_update: int, wall_s: Optional[float],
               arch: str = "", command: str = "", log_path: str = "") -> dict:
    """One training run: what the log says plus the problems found (empty: the run is fine;
    the comparison with the float32 run is made by :func:`compare_with_fp32`)."""
    parsed = parse_train_log(log)
    problems = []
    if returncode != 0:
        # e.g. 134 and "terminate called without an active exception" after "done training in"
        at_exit = " after training finished" if parsed["train_seconds"] is not None else ""
        problems.append(f"fairseq-train exited with {returncode}{at_exit}: {last_error_line(log)}")
    else:
        if parsed["updates"] != max_update:
            problems.append(f"{parsed['updates']} updates logged, expected {max_update}")
        if not _finite(parsed["final_loss"]):
            problems.append(f"training loss is {parsed['final_loss']}")
        if parsed["valid_loss"] is not None and not _finite(parsed["valid_loss"]):
            problems.append(f"validation loss is {parsed['valid_loss']}")
    return dict(task=task, arch=arch, precision=precision, flag=PRECISIONS.get(precision) or "(none)",
                returncode=returncode, max_update=max_update, wall_s=wall_s, command=command,
                log=log_path, **parsed, problems=problems, ok=not problems)


def compare_with_fp32(records: List[dict], tolerance: float = DEFAULT_LOSS_TOLERANCE) -> List[dict]:
    """Adds loss_vs_fp32 (difference) and loss_ratio_vs_fp32 to every run, and a problem to
    each run whose final loss differs from its task's float32 run by more than
    ``tolerance`` (relative). Returns the records."""
    reference = {r["task"]: r for r in records if r["precision"] == "fp32"}
    for record in records:
        record["loss_vs_fp32"] = record["loss_ratio_vs_fp32"] = None
        base = reference.get(record["task"])
        if base is None or not _finite(base.get("final_loss")) or not _finite(record.get("final_loss")):
            continue
        record["loss_vs_fp32"] = record["final_loss"] - base["final_loss"]
        if base["final_loss"] > 0:
            record["loss_ratio_vs_fp32"] = record["final_loss"] / base["final_loss"]
            if record is not base and abs(record["loss_ratio_vs_fp32"] - 1) > tolerance:
                record["problems"].append(
                    f"final loss {record['final_loss']:.3f} differs from the float32 run's "
                    f"{base['final_loss']:.3f} by more than {tolerance:.0%}")
                record["ok"] = False
    return records


# ------------------------------------------------------------------ pytest
def pytest_summary(junit_xml: Path, returncode: Optional[int], log_tail: str = "") -> dict:
    """Counts from pytest's JUnit XML; ok when pytest exited 0 and something ran."""
    summary = dict(returncode=returncode, tests=None, passed=None, failed=None, errors=None, skipped=None,
                   seconds=None, failures=[], problems=[])
    if junit_xml.exists():
        root = ElementTree.parse(junit_xml).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        totals = {key: sum(int(suite.get(key, 0)) for suite in suites)
                  for key in ("tests", "failures", "errors", "skipped")}
        summary.update(tests=totals["tests"], failed=totals["failures"], errors=totals["errors"],
                       skipped=totals["skipped"],
                       passed=totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"],
                       seconds=sum(float(suite.get("time", 0)) for suite in suites))
        for case in root.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                summary["failures"].append(f"{case.get('classname')}::{case.get('name')}")
    if returncode is None:
        summary["problems"].append("the device tests did not run")
    elif returncode == 5:
        summary["problems"].append("pytest selected no tests (-m device matched nothing)")
    elif returncode != 0:
        detail = (f"{summary['failed']} failed, {summary['errors']} errors" if summary["tests"] is not None
                  else f"no JUnit XML; {last_error_line(log_tail)}")
        summary["problems"].append(f"pytest exited with {returncode} ({detail})")
    summary["ok"] = not summary["problems"]
    return summary


# ------------------------------------------------------------------ layer benchmark
def layer_ratios(benchmark: dict, length: int = PAPER_LENGTH) -> dict:
    """The layer section's speed-up and memory ratios (Mega / transformer) at ``length``
    tokens, or at the longest length measured when ``length`` was not (quick mode)."""
    rows = benchmark.get("sections", {}).get("layer", {}).get("rows", [])
    if not rows:
        return dict(length=None, rows=[])
    lengths = sorted({row["length"] for row in rows})
    at = length if length in lengths else lengths[-1]
    chosen = [dict(side=row["side"], model=row["model"], speedup=row.get("speedup_vs_transformer"),
                   memory=row.get("memory_vs_transformer"), median_s=row.get("median_s"),
                   peak_mib=row.get("peak_mib"))
              for row in rows if row["length"] == at and row["model"] != "transformer"]
    return dict(length=at, rows=chosen)


def benchmark_summary(benchmark_json: Path, returncode: Optional[int], log_tail: str = "") -> dict:
    summary = dict(returncode=returncode, length=None, rows=[], device=None, problems=[],
                   paper=dict(length=PAPER_LENGTH, speedup=PAPER_SPEEDUP, memory=PAPER_MEMORY))
    if returncode is None:
        summary["problems"].append("the layer benchmark did not run")
    elif returncode != 0:
        summary["problems"].append(f"benchmark.py exited with {returncode}: {last_error_line(log_tail)}")
    if benchmark_json.exists():
        benchmark = json.loads(benchmark_json.read_text())
        summary["device"] = benchmark.get("device")
        summary.update(layer_ratios(benchmark))
    if returncode == 0 and not summary["rows"]:
        summary["problems"].append(f"{benchmark_json} holds no layer rows")
    summary["ok"] = not summary["problems"]
    return summary


# ------------------------------------------------------------------ report
def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _returncode(path: Path) -> Optional[int]:
    text = _read(path).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def collect(out_dir: Path, mode: str, tolerance: float = DEFAULT_LOSS_TOLERANCE,
            expected_runs: Sequence[str] = ()) -> dict:
    """The whole report from what the steps left in ``out_dir`` (layout: module docstring)."""
    device_json = out_dir / "device.json"
    device = json.loads(device_json.read_text()) if device_json.exists() else None
    pytest_rc = _returncode(out_dir / "pytest.rc")
    tests = pytest_summary(out_dir / "pytest.xml", pytest_rc, _tail(_read(out_dir / "pytest.log")))
    tests["command"] = _read(out_dir / "pytest.cmd").strip()
    runs = _ordered_runs([json.loads(p.read_text()) for p in sorted((out_dir / "train").glob("*.json"))])
    compare_with_fp32(runs, tolerance)
    bench = benchmark_summary(out_dir / "benchmark" / "benchmark.json", _returncode(out_dir / "benchmark.rc"),
                              _tail(_read(out_dir / "benchmark.log")))
    bench["command"] = _read(out_dir / "benchmark.cmd").strip()
    failures = []
    if device is None:
        failures.append("no device facts (device.json missing)")
    failures += [f"device tests: {p}" for p in tests["problems"]]
    present = {f"{r['task']}_{r['precision']}" for r in runs}
    failures += [f"training run {name}: missing" for name in expected_runs if name not in present]
    for record in runs:
        failures += [f"training {record['task']} {record['precision']}: {p}" for p in record["problems"]]
    failures += [f"layer benchmark: {p}" for p in bench["problems"]]
    return dict(mode=mode, device=device, loss_tolerance=tolerance, pytest=tests, training=runs,
                layer_benchmark=bench, failures=failures, ok=not failures,
                written=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def _ordered_runs(runs: List[dict]) -> List[dict]:
    task_order, precision_order = list(TASKS), list(PRECISIONS)

    def key(record):
        return (task_order.index(record["task"]) if record["task"] in task_order else len(task_order),
                precision_order.index(record["precision"]) if record["precision"] in precision_order else 9)

    return sorted(runs, key=key)


def _fmt(value, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def markdown(report: dict) -> str:
    device = report["device"] or {}
    lines = [f"# Accelerator check ({report['mode']})", "",
             f"Verdict: **{'passed' if report['ok'] else 'FAILED'}** ({report['written']})", "",
             "| device | torch | CUDA (torch build) | fairseq | python |", "|---|---|---|---|---|",
             f"| {device.get('name', '–')} | {device.get('torch', '–')} | {device.get('torch_cuda') or '–'} | "
             f"{device.get('fairseq') or '–'} | {device.get('python', '–')} |", ""]
    if device.get("type") == "cuda":
        lines += [f"Compute capability {device.get('capability')}, {device.get('memory_gib')} GiB, "
                  f"cuDNN {device.get('cudnn')}, bf16 supported: {device.get('bf16_supported')}.", ""]
    tests = report["pytest"]
    lines += ["## Device tests", "", f"`{tests.get('command') or 'pytest -m device'}`", ""]
    if tests["tests"] is not None:
        lines.append(f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped ({_fmt(tests['seconds'], 1)} s); exit code {tests['returncode']}.")
    else:
        lines.append(f"No JUnit XML; exit code {tests['returncode']}.")
    lines += [f"- failed: `{name}`" for name in tests["failures"]]
    lines += ["", "## Training (fairseq-train --user-dir mega_fairseq)", "",
              f"Loss: base 2 as fairseq logs it, of the last logged interval; words/s: median over the "
              f"intervals after the first; a run fails when its loss differs from the float32 run's by "
              f"more than {report['loss_tolerance']:.0%}.", "",
              "| task | precision | flag | updates | loss | loss − fp32 | loss / fp32 | valid loss | words/s "
              "| train s | wall s | overflows | ok |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["training"]:
        lines.append(
            f"| {run['task']} ({run['arch']}) | {run['precision']} | {run['flag']} | {_fmt(run['updates'])} | "
            f"{_fmt(run['final_loss'])} | "
            f"{_fmt(run['loss_vs_fp32'])} | {_fmt(run['loss_ratio_vs_fp32'])} | {_fmt(run['valid_loss'])} | "
            f"{_fmt(run['wps'], 0)} | {_fmt(run['train_seconds'], 1)} | {_fmt(run['wall_s'], 1)} | "
            f"{run['overflows']} | {'yes' if run['ok'] else '**no**'} |")
    bench = report["layer_benchmark"]
    lines += ["", "## Layer benchmark (one block, forward+backward)", "", f"`{bench.get('command') or ''}`", ""]
    if bench["rows"]:
        paper = bench["paper"]
        lines += [f"Mega and Megalodon blocks / transformer at {bench['length']} tokens (speed-up: transformer "
                  f"time / block time; memory: block peak / transformer peak). The Mega paper: Mega-chunk "
                  f"{paper['speedup']}x faster at {paper['memory']}x memory than a transformer at "
                  f"{paper['length']} tokens.", "",
                  "| side | model | speed-up | memory | block s | block peak MiB |", "|---|---|---|---|---|---|"]
        for row in bench["rows"]:
            lines.append(f"| {row['side']} | {row['model']} | {_fmt(row['speedup'], 2, 'x')} | "
                         f"{_fmt(row['memory'], 2, 'x')} | {_fmt(row['median_s'], 4)} | {_fmt(row['peak_mib'], 1)} |")
    else:
        lines.append("(no layer rows)")
    lines += ["", "## Failures", ""]
    lines += [f"- {failure}" for failure in report["failures"]] or ["none"]
    return "\n".join(lines) + "\n"


def headline(report: dict) -> str:
    """The layer section's chunked-Mega ratios in one line each, beside the Mega paper's
    (for the console)."""
    bench = report["layer_benchmark"]
    out = []
    for row in bench["rows"]:
        if row["model"].startswith("mega (chunk"):
            out.append(f"{row['side']} {row['model']} @ {bench['length']}: {_fmt(row['speedup'], 2, 'x')} faster, "
                       f"{_fmt(row['memory'], 2, 'x')} memory (paper: {PAPER_SPEEDUP}x, {PAPER_MEMORY}x at "
                       f"{PAPER_LENGTH})")
    return "\n".join(out)


def jsonable(value):
    """``value`` with every non-finite float written as a string ("nan", "inf"), so the
    JSON stays strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def write_report(out_dir: Path, report: dict) -> Dict[str, Path]:
    paths = dict(json=out_dir / "accelerator_check.json", markdown=out_dir / "accelerator_check.md")
    paths["json"].write_text(json.dumps(jsonable(report), indent=1, allow_nan=False))
    paths["markdown"].write_text(markdown(report))
    return paths


def expected_run_names(tasks: Iterable[str] = TASKS, precisions: Iterable[str] = PRECISIONS) -> List[str]:
    return [f"{task}_{precision}" for task in tasks for precision in precisions]


# ------------------------------------------------------------------ command line
def _cmd_device_info(args) -> int:
    try:
        facts = device_facts(args.device)
    except DeviceUnavailable as error:
        print(f"[check] {error}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(facts, indent=1))
    print(f"[check] device: {facts['name']}; torch {facts['torch']} (CUDA {facts['torch_cuda'] or 'none'}), "
          f"fairseq {facts['fairseq']}")
    return 0


def _cmd_copy_corpus(args) -> int:
    write_copy_corpus(args.out_dir, args.train_pairs, args.valid_pairs, seed=args.seed)
    print(f"[check] copy corpus: {args.train_pairs} training and {args.valid_pairs} validation pairs in {args.out_dir}")
    return 0


def _cmd_record_run(args) -> int:
    log = _read(args.log)
    record = run_record(args.task, args.precision, log, args.rc, args.max_update, args.wall_s,
                        arch=args.arch, command=args.command, log_path=str(args.log))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(jsonable(record), indent=1, allow_nan=False))
    status = "ok" if record["ok"] else "FAILED: " + "; ".join(record["problems"])
    print(f"[check] {args.task} {args.precision}: loss {_fmt(record['final_loss'])} after "
          f"{_fmt(record['updates'])} updates, {_fmt(record['wps'], 0)} words/s, "
          f"{_fmt(record['wall_s'], 1)} s wall -> {status}", flush=True)
    return 0


def _cmd_report(args) -> int:
    report = collect(args.out_dir, args.mode, args.loss_tolerance, expected_run_names())
    paths = write_report(args.out_dir, report)
    print(markdown(report))
    line = headline(report)
    if line:
        print(line)
    print(f"[check] report: {paths['json']}, {paths['markdown']}")
    if not report["ok"]:
        print(f"[check] FAILED: {len(report['failures'])} problem(s)", file=sys.stderr)
        for failure in report["failures"]:
            print(f"[check]   {failure}", file=sys.stderr)
        return 1
    print("[check] passed")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command_name", required=True)

    info = commands.add_parser("device-info", help="device facts; exit 2 when the device is not usable")
    info.add_argument("--device", default="cuda")
    info.add_argument("--out", type=Path, default=None)
    info.set_defaults(handler=_cmd_device_info)

    corpus = commands.add_parser("copy-corpus", help="a parallel corpus whose target is the source")
    corpus.add_argument("--out-dir", type=Path, required=True)
    corpus.add_argument("--train-pairs", type=int, default=4000)
    corpus.add_argument("--valid-pairs", type=int, default=100)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.set_defaults(handler=_cmd_copy_corpus)

    record = commands.add_parser("record-run", help="parse one fairseq-train log into a JSON record")
    record.add_argument("--log", type=Path, required=True)
    record.add_argument("--rc", type=int, required=True, help="fairseq-train's exit code")
    record.add_argument("--task", choices=list(TASKS), required=True)
    record.add_argument("--precision", choices=list(PRECISIONS), required=True)
    record.add_argument("--arch", default="")
    record.add_argument("--max-update", type=int, required=True)
    record.add_argument("--wall-s", type=float, default=None)
    record.add_argument("--command", default="", help="the fairseq-train command line (recorded)")
    record.add_argument("--out", type=Path, required=True)
    record.set_defaults(handler=_cmd_record_run)

    report = commands.add_parser("report", help="write accelerator_check.json/.md; exit 1 when anything failed")
    report.add_argument("--out-dir", type=Path, required=True)
    report.add_argument("--mode", default="cuda")
    report.add_argument("--loss-tolerance", type=float, default=DEFAULT_LOSS_TOLERANCE)
    report.set_defaults(handler=_cmd_report)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

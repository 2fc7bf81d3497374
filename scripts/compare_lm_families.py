#!/usr/bin/env python
"""Megalodon vs Mega vs a fairseq transformer: word-level language models on the bundled
Shakespeare plays, trained by the unmodified ``fairseq-train`` at equal used parameters and
an equal budget of CPU seconds, then scored by ``fairseq-eval-lm`` (and, for the two
Mega-family models, by ``scripts/eval_lm_stateful.py`` with state carried across blocks).

    python scripts/compare_lm_families.py                      # full run (~16 minutes, 2 cores)
    python scripts/compare_lm_families.py --quick --out-dir /tmp/smoke   # a few updates each

Models (``--decoder-chunk-size`` is the same for both Mega-family models and must divide
``--tokens-per-sample``):

* ``megalodon``: ``--arch megalodon_lm_tiny`` (complex EMA, timestep norm, normalized
  attention, two-hop residual, chunked attention);
* ``mega``: ``--arch mega_lm_tiny``;
* ``transformer``: fairseq's ``transformer_lm`` of the tiny presets' width (64) and depth (2),
  tied embeddings (``benchmarking.candidates.transformer_lm_options``), its FFN width searched
  (``count_parameters.closest_ffn_width`` through ``candidates.with_matched_ffn_width``, the
  search of ``scripts/count_parameters.py --match``) so that the parameters a training step
  uses come closest to Megalodon's. The two Mega-family presets are used as they are; their
  used counts differ by the presets' own difference (printed, ~1.4% on this data).

Data: ``scripts/prepare_lm_text.py`` on ``examples/language_model/data/*.txt`` then
``fairseq-preprocess --only-source`` (as tests/conftest.py's ``shakespeare_lm_data``).
Training options are those of ``scripts/main_job.sh`` (Adam (0.9, 0.98), lr 3e-3,
inverse_sqrt with 100 warm-up updates, weight decay 0.01, clip 1.0, dropout 0.1, 16 blocks of
128 tokens, seed 1), the same for all three models, one thread per process, validation at
every epoch end (~39 updates), ``--num-workers 0`` (so the training process is the only
process whose CPU time counts).

Equal CPU time. The budget (``--budget-cpu-seconds``) is the CPU time (user + system: each
child's own resource usage from ``os.wait4``, i.e. its ``getrusage``) of all ``fairseq-train``
processes of a model together: start-ups, data loading, updates, validations and checkpoint
writes. CPU seconds, not wall seconds, because the machine is shared and another process's
load stretches wall time but hardly CPU time. The budget is spent in closed loop, in a few
segments that each resume from the previous one's ``checkpoint_last.pt`` (fairseq restores the
model, the optimizer, the learning-rate schedule, the position in the epoch and the best
validation loss; dropout is seeded by the update count, so a resumed run trains as an
uninterrupted one would):

1. a first segment of ``--first-segment-updates`` updates; at each logged update (every
   ``--log-interval``) the child's CPU time is read from ``/proc/PID/stat``, which gives the CPU
   seconds per update (the slope over the later half of the segment's logged updates; it
   includes the epoch-end validations and checkpoint writes), the start-up cost (before the
   first update) and the tail (final validation, checkpoint, exit);
2. for each of ``--segment-targets`` (fractions of the budget, default 0.85 then 1.0) a resumed
   segment whose ``--max-update`` is sized so that the CPU spent so far, plus the previous
   segment's start-up and tail, plus the updates at its per-update cost, reach that fraction.

Sizing every segment from the CPU really spent (not from an early calibration alone) matters:
on this shared machine the per-update cost drifts by +-10% over a run (the first epoch is the
cheapest), and a one-shot calibration on the first 50 updates overshot a 300 s budget by up to
10%. The last segment covers ~15% of the budget, so its error is ~1-2% of it. Every start-up
(~7.5 CPU s on this machine, one per segment) is charged to the budget, the same for each model.
The models run one after the other (``--jobs 1``, the default): concurrent processes on 2
cores would slow each other's updates (shared caches and memory bandwidth) and so bias the
CPU-time measurements. ``--quick`` runs the three models at once (``--jobs 3``) with two
segments of a few updates: its numbers only show that everything runs.

The test scores are those of ``checkpoint_best.pt`` (the best validation loss within the
budget: on this 67k-word corpus all three models overfit well before 300 CPU s, so this is
early stopping inside the budget). ``results.md`` also lists the best validation perplexity
each model had reached by 25/50/75/100% of the budget, read off the validation curves.

Output in ``--out-dir`` (default work-dirs/compare_lm_families): ``results.json`` (everything,
including the validation curves with the CPU seconds at each validation), ``results.md`` (the
table), ``results.png`` (validation loss against CPU seconds and against updates; skipped
with a note when matplotlib is missing), the logs (``logs/``), data and checkpoints. A model
whose training or evaluation fails is reported with its error (the other models still run) and
the script exits with status 1.
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:  # benchmarking/ and count_parameters are top-level modules here
    sys.path.insert(0, str(SCRIPTS))

from benchmarking.candidates import (  # noqa: E402
    TRANSFORMER_LM_FFN,
    lm_task,
    transformer_lm_options,
    used_parameters,
    with_matched_ffn_width,
)
from atomic_output import AtomicOutputs  # noqa: E402
from benchmarking.training import console_script, fresh_directory, interval_stats  # noqa: E402

BUNDLED_TEXT = REPO / "examples" / "language_model" / "data"
REFERENCE = "megalodon"  # the transformer is sized to this model's used parameters
TINY_WIDTH, TINY_LAYERS = 64, 2  # the width and depth of mega_lm_tiny / megalodon_lm_tiny
THREADS = 1
LOG_TAIL_CHARACTERS = 4000
# scripts/main_job.sh's training options (the batch, optimizer and schedule), minus the length
OPTIMIZATION = ("--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "3e-3",
                "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--weight-decay", "0.01",
                "--clip-norm", "1.0", "--dropout", "0.1", "--batch-size", "16", "--seed", "1")
PERPLEXITY = re.compile(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+)")
EVALUATED = re.compile(r"Evaluated ([0-9,]+) tokens in ([0-9.]+)s \(([0-9.]+) tokens/s\)")
STATEFUL = re.compile(r"^\s*(independent|stateful): (\d+) tokens \| loss \(base 2\) ([0-9.]+) \| "
                      r"perplexity ([0-9.]+)", re.M)


# ------------------------------------------------------------------ options
@dataclass(frozen=True)
class Mode:
    budget: float
    first_segment_updates: int
    segment_targets: Tuple[float, ...]
    log_interval: int
    update_cap: Optional[int]
    jobs: int


FULL = Mode(budget=300.0, first_segment_updates=50, segment_targets=(0.85, 1.0), log_interval=10,
            update_cap=None, jobs=1)
QUICK = Mode(budget=30.0, first_segment_updates=2, segment_targets=(1.0,), log_interval=1, update_cap=4, jobs=3)
MIN_SEGMENT_UPDATES = 2  # a resumed segment shorter than this is not started
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # where results.md reads the validation curves


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: budget {QUICK.budget:g} CPU s, a first segment of "
                        f"{QUICK.first_segment_updates} updates, at most {QUICK.update_cap} updates per model")
    parser.add_argument("--budget-cpu-seconds", type=float, default=None,
                        help=f"CPU seconds of each model's fairseq-train processes together (default "
                        f"{FULL.budget:g}; {QUICK.budget:g} with --quick). The full default run takes "
                        "~16 minutes on 2 cores")
    parser.add_argument("--first-segment-updates", type=int, default=None,
                        help=f"updates of each model's first segment, which measures its CPU cost per "
                        f"update (default {FULL.first_segment_updates}; {QUICK.first_segment_updates} with --quick)")
    parser.add_argument("--segment-targets", default=None,
                        help="comma-separated fractions of the budget that the resumed segments aim at, "
                        f"increasing (default {','.join(map(str, FULL.segment_targets))}; "
                        f"{','.join(map(str, QUICK.segment_targets))} with --quick)")
    parser.add_argument("--log-interval", type=int, default=None,
                        help=f"fairseq-train --log-interval (default {FULL.log_interval}; "
                        f"{QUICK.log_interval} with --quick)")
    parser.add_argument("--update-cap", type=int, default=None,
                        help="upper bound on the updates of a model (default none; "
                        f"{QUICK.update_cap} with --quick)")
    parser.add_argument("--jobs", type=int, default=None,
                        help=f"models trained and evaluated at the same time (default {FULL.jobs}; "
                        f"{QUICK.jobs} with --quick); more than 1 biases the CPU-time comparison")
    parser.add_argument("--tokens-per-sample", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=32,
                        help="--decoder-chunk-size of both Mega-family models (a divisor of "
                        "--tokens-per-sample; default 32)")
    parser.add_argument("--models", default="megalodon,mega,transformer",
                        help="comma-separated subset of megalodon,mega,transformer (default all)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "work-dirs" / "compare_lm_families")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    for name in ("budget_cpu_seconds", "first_segment_updates", "segment_targets", "log_interval", "update_cap",
                 "jobs"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(mode, {"budget_cpu_seconds": "budget"}.get(name, name)))
    if isinstance(args.segment_targets, str):
        try:
            args.segment_targets = tuple(float(part) for part in args.segment_targets.split(",") if part.strip())
        except ValueError:
            parser.error(f"--segment-targets {args.segment_targets!r}: not comma-separated numbers")
    targets = args.segment_targets
    if any(not 0 < t <= 1 for t in targets) or list(targets) != sorted(set(targets)):
        parser.error("--segment-targets must be increasing fractions in (0, 1]")
    if args.budget_cpu_seconds <= 0:
        parser.error("--budget-cpu-seconds must be positive")
    if args.first_segment_updates < 2 * args.log_interval:
        parser.error("--first-segment-updates must span at least two --log-interval")
    if args.log_interval < 1 or args.jobs < 1:
        parser.error("--log-interval and --jobs must be at least 1")
    if args.tokens_per_sample % args.chunk_size:
        parser.error(f"--chunk-size {args.chunk_size} does not divide --tokens-per-sample {args.tokens_per_sample}")
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(args.models) - {"megalodon", "mega", "transformer"})
    if unknown or not args.models:
        parser.error(f"--models: unknown model(s) {unknown}; choose from megalodon, mega, transformer")
    args.out_dir = args.out_dir.resolve()
    return args


# ------------------------------------------------------------------ processes
def child_environment() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), PYTHONUNBUFFERED="1")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a running process so far (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # fields 14 and 15 of proc(5)


@dataclass
class Run:
    command: List[str]
    log_path: Path
    returncode: int
    cpu_seconds: float
    wall_seconds: float
    log: str
    # (kind "train_inner" / "valid" / "train", its JSON statistics, CPU seconds of the child then)
    events: List[Tuple[str, dict, Optional[float]]] = field(default_factory=list)

    def error(self, what: str) -> str:
        return (f"{what} failed (exit code {self.returncode}); command: {' '.join(self.command)}\n"
                f"--- last lines of {self.log_path} ---\n{self.log[-LOG_TAIL_CHARACTERS:]}")


EVENT = re.compile(r"\| (train_inner|valid|train) \| (\{.*\})\s*$")


def run_child(command: List[str], log_path: Path, on_event: Callable[[str, dict], None] = None) -> Run:
    """Runs ``command`` (stdout and stderr into ``log_path``), reading fairseq's JSON log lines
    as they come with the child's CPU time at each. The total CPU time is the child's own
    resource usage (``os.wait4``: user + system seconds of that process and of any children it
    waited for), so it is exact even while other children run."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    events = []
    start = time.monotonic()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=child_environment(), cwd=REPO, bufsize=1)
        for line in child.stdout:
            log.write(line)
            match = EVENT.search(line)
            if match:
                cpu = process_cpu_seconds(child.pid)
                try:
                    stats = json.loads(match.group(2))
                except json.JSONDecodeError:
                    continue
                events.append((match.group(1), stats, cpu))
                if on_event is not None:
                    on_event(match.group(1), stats)
        child.stdout.close()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    cpu_seconds, wall_seconds = usage.ru_utime + usage.ru_stime, time.monotonic() - start
    return Run([str(part) for part in command], log_path, child.returncode, cpu_seconds, wall_seconds,
               log_path.read_text(errors="replace"), events)


def check(run: Run, what: str) -> Run:
    if run.returncode != 0:
        raise RuntimeError(run.error(what))
    return run


# ------------------------------------------------------------------ data and models
def prepare_data(root: Path) -> Path:
    """tests/conftest.py's shakespeare_lm_data: the bundled plays, word-tokenised, binarised."""
    text, binary = fresh_directory(root / "text"), fresh_directory(root / "bin")
    check(run_child([sys.executable, str(SCRIPTS / "prepare_lm_text.py"), "--inputs",
                     *map(str, sorted(BUNDLED_TEXT.glob("*.txt"))), "--out-dir", str(text)],
                    root / "prepare_lm_text.log"), "prepare_lm_text.py")
    check(run_child([console_script("fairseq-preprocess"), "--only-source",
                     "--trainpref", str(text / "train.txt"), "--validpref", str(text / "valid.txt"),
                     "--testpref", str(text / "test.txt"), "--destdir", str(binary), "--workers", "1"],
                    root / "preprocess.log"), "fairseq-preprocess")
    return binary


def model_options(task: Tuple[str, ...], names: List[str], chunk: int) -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, int]]:
    """({model: fairseq model options}, {model: used parameters}); the transformer's FFN width
    matched to Megalodon's used parameters."""
    import logging

    import torch

    torch.set_num_threads(THREADS)
    logging.disable(logging.INFO)  # fairseq logs every model build
    options = {"megalodon": ("--arch", "megalodon_lm_tiny", "--decoder-chunk-size", str(chunk)),
               "mega": ("--arch", "mega_lm_tiny", "--decoder-chunk-size", str(chunk))}
    used = {name: used_parameters(task, options[name]) for name in options}
    options["transformer"], used["transformer"] = with_matched_ffn_width(
        task, used[REFERENCE], transformer_lm_options(TINY_WIDTH, TINY_LAYERS), TRANSFORMER_LM_FFN)
    logging.disable(logging.NOTSET)
    return {name: options[name] for name in names}, {name: used[name] for name in names}


def train_command(data: Path, model_args: Tuple[str, ...], tokens_per_sample: int, max_update: int,
                  log_interval: int, save_dir: Path) -> List[str]:
    """fairseq-train's command; with a checkpoint_last.pt in ``save_dir`` it resumes from it."""
    return [console_script("fairseq-train"), str(data), "--user-dir", str(REPO / "mega_fairseq"),
            "--task", "language_modeling", "--tokens-per-sample", str(tokens_per_sample),
            "--sample-break-mode", "none", *model_args, *OPTIMIZATION, "--max-update", str(max_update),
            "--cpu", "--num-workers", "0", "--log-format", "json", "--log-interval", str(log_interval),
            "--no-epoch-checkpoints", "--save-dir", str(save_dir)]


# ------------------------------------------------------------------ segments
@dataclass
class Segment:
    """One fairseq-train process of a model: the updates it ran (from ``start_update`` to
    ``end_update``), its CPU and wall seconds, and its cost model: CPU seconds per update,
    before the first update (start-up) and after the last (tail)."""

    start_update: int
    end_update: int
    cpu_seconds: float
    wall_seconds: float
    per_update_cpu_seconds: float
    startup_cpu_seconds: float
    tail_cpu_seconds: float
    command: List[str]
    log: str

    def updates_for(self, cpu_seconds: float) -> int:
        """Updates that a segment like this one can run within ``cpu_seconds``."""
        return math.floor((cpu_seconds - self.startup_cpu_seconds - self.tail_cpu_seconds)
                          / self.per_update_cpu_seconds)


def cpu_points(run: Run) -> List[Tuple[int, float]]:
    """(num_updates, child CPU seconds) at every train_inner line with a CPU reading."""
    return [(int(stats["num_updates"]), cpu) for kind, stats, cpu in run.events
            if kind == "train_inner" and cpu is not None]


def last_update(run: Run) -> int:
    keys = {"train_inner": "num_updates", "train": "train_num_updates", "valid": "valid_num_updates"}
    counts = [int(stats[keys[kind]]) for kind, stats, _ in run.events if keys[kind] in stats]
    return max(counts, default=0)


def slope(points: List[Tuple[int, float]]) -> float:
    (first_update, first_cpu), (last_update_, last_cpu) = points[0], points[-1]
    return (last_cpu - first_cpu) / (last_update_ - first_update)


def measure_segment(run: Run, start_update: int) -> Segment:
    end_update = last_update(run)
    points = cpu_points(run)
    if len(points) >= 2 and points[-1][0] > points[0][0]:
        overall = slope(points)
        recent = points[len(points) // 2:] if len(points) >= 4 else points  # the cost drifts: the latest
        per_update = slope(recent)
        startup = max(0.0, points[0][1] - (points[0][0] - start_update) * overall)
        tail = max(0.0, run.cpu_seconds - points[-1][1] - (end_update - points[-1][0]) * overall)
    else:  # no /proc (or too few log lines): the whole run's CPU shared out over its updates
        per_update = run.cpu_seconds / max(1, end_update - start_update)
        startup = tail = 0.0
    return Segment(start_update, end_update, run.cpu_seconds, run.wall_seconds, per_update, startup, tail,
                   run.command, str(run.log_path))


RESUMED = re.compile(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)")


def train_in_segments(name: str, model_args: Tuple[str, ...], args, data: Path, progress: bool
                      ) -> Tuple[List[Tuple[Run, float]], List[Segment], Path]:
    """Trains one model within the CPU budget; returns ([(run, CPU seconds spent before it)],
    the segments, the save dir)."""
    save_dir = fresh_directory(args.out_dir / "checkpoints" / name)
    budget, cap = args.budget_cpu_seconds, args.update_cap
    runs: List[Tuple[Run, float]] = []
    segments: List[Segment] = []
    spent, updates = 0.0, 0

    def run_segment(max_update: int) -> None:
        nonlocal spent, updates
        index = len(segments) + 1
        command = train_command(data, model_args, args.tokens_per_sample, max_update, args.log_interval, save_dir)
        bar = tqdm(total=max_update, initial=updates, desc=f"train {name} ({index})", unit="upd",
                   disable=not progress, leave=False)

        def on_event(kind: str, stats: dict) -> None:
            if kind == "train_inner":
                bar.update(int(stats["num_updates"]) - bar.n)
                bar.set_postfix_str(f"loss {stats['loss']}")
            elif kind == "valid":
                bar.set_postfix_str(f"valid loss {stats['valid_loss']}")

        run = run_child(command, args.out_dir / "logs" / f"{name}_train_{index}.log", on_event)
        bar.close()
        check(run, f"fairseq-train ({name}, segment {index})")
        if updates:
            resumed = RESUMED.search(run.log)
            if resumed is None or int(resumed.group(1)) != updates:
                raise RuntimeError(f"fairseq-train ({name}, segment {index}) did not resume from update {updates}: "
                                   f"{resumed.group(0) if resumed else 'no Loaded checkpoint line'} in {run.log_path}")
        segment = measure_segment(run, updates)
        runs.append((run, spent))
        segments.append(segment)
        spent, updates = spent + run.cpu_seconds, segment.end_update
        tqdm.write(f"[{name}] segment {index}: updates {segment.start_update}-{segment.end_update}, "
                   f"{run.cpu_seconds:.1f} CPU s ({segment.per_update_cpu_seconds:.3f}/update, start-up "
                   f"{segment.startup_cpu_seconds:.1f}), {spent:.1f} of {budget:g} spent")

    run_segment(min(args.first_segment_updates, cap) if cap else args.first_segment_updates)
    for target in args.segment_targets:
        if cap is not None and updates >= cap:
            break
        more = segments[-1].updates_for(target * budget - spent)
        if cap is not None:
            more = min(more, cap - updates)
        if more >= MIN_SEGMENT_UPDATES:
            run_segment(updates + more)
    return runs, segments, save_dir


# ------------------------------------------------------------------ evaluation
def eval_lm(data: Path, checkpoint: Path, tokens_per_sample: int, log_path: Path) -> dict:
    run = check(run_child([console_script("fairseq-eval-lm"), str(data), "--user-dir", str(REPO / "mega_fairseq"),
                           "--path", str(checkpoint), "--gen-subset", "test", "--tokens-per-sample",
                           str(tokens_per_sample), "--batch-size", "16", "--cpu", "--num-workers", "0"],
                          log_path), "fairseq-eval-lm")
    loss, perplexity = PERPLEXITY.search(run.log).groups()
    evaluated = EVALUATED.search(run.log)
    return {"loss_base2": float(loss), "perplexity": float(perplexity),
            "tokens": int(evaluated.group(1).replace(",", "")) if evaluated else None,
            "command": run.command}


def eval_stateful(data: Path, checkpoint: Path, block_size: int, log_path: Path) -> dict:
    run = check(run_child([sys.executable, str(SCRIPTS / "eval_lm_stateful.py"), str(data), "--path",
                           str(checkpoint), "--user-dir", str(REPO / "mega_fairseq"), "--gen-subset", "test",
                           "--block-size", str(block_size), "--cpu", "--no-progress-bar"], log_path),
                "eval_lm_stateful.py")
    scores = {mode: {"tokens": int(tokens), "loss_base2": float(loss), "perplexity": float(ppl)}
              for mode, tokens, loss, ppl in STATEFUL.findall(run.log)}
    if "stateful" not in scores:
        raise RuntimeError(f"eval_lm_stateful.py printed no stateful score\n{run.log[-LOG_TAIL_CHARACTERS:]}")
    return {**scores, "command": run.command}


# ------------------------------------------------------------------ one model
def median(values: List[float]) -> Optional[float]:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def training_summary(runs: List[Tuple[Run, float]], budget: float) -> dict:
    """Updates, CPU seconds, throughput and the curves of a model's segments (CPU seconds of
    the curves counted from the first segment's start)."""
    valid, train_loss, wps, per_update_windows = [], [], [], []
    for run, offset in runs:
        inner = interval_stats(run.log)
        wps += [float(s["wps"]) for s in inner[1:]]  # each segment's first interval: warm-up
        train_loss += [{"num_updates": int(s["num_updates"]), "loss_base2": float(s["loss"])} for s in inner]
        valid += [{"num_updates": int(stats["valid_num_updates"]),
                   "cpu_seconds": None if cpu is None else offset + cpu,
                   "loss_base2": float(stats["valid_loss"]), "perplexity": float(stats["valid_ppl"])}
                  for kind, stats, cpu in run.events if kind == "valid"]
        points = cpu_points(run)
        if len(points) >= 2 and points[-1][0] > points[0][0]:
            per_update_windows.append((points[-1][0] - points[0][0], points[-1][1] - points[0][1]))
        wpb = median([float(s["wpb"]) for s in inner])
    updates_logged = sum(u for u, _ in per_update_windows)
    cpu_per_update = sum(c for _, c in per_update_windows) / updates_logged if updates_logged else None
    best = min(valid, key=lambda v: v["loss_base2"]) if valid else None
    timed = [v for v in valid if v["cpu_seconds"] is not None]
    within = {f"{fraction:g}": min((v["perplexity"] for v in timed if v["cpu_seconds"] <= fraction * budget
                                    or fraction == 1.0), default=None)
              for fraction in BUDGET_FRACTIONS}
    return {
        "updates": last_update(runs[-1][0]),
        "cpu_seconds": sum(run.cpu_seconds for run, _ in runs),
        "wall_seconds": sum(run.wall_seconds for run, _ in runs),
        "segments_run": len(runs),
        "cpu_seconds_per_update": cpu_per_update,
        # fairseq's wall-clock words/s: the median over the log intervals (each segment's first left out)
        "wps": median(wps) or median([float(s["wps"]) for run, _ in runs for s in interval_stats(run.log)]),
        "words_per_cpu_second": wpb / cpu_per_update if wpb and cpu_per_update else None,
        "best_valid": best,
        "last_valid": valid[-1] if valid else None,
        "best_valid_perplexity_within_budget_fraction": within,
        "finite_train_loss": all(math.isfinite(point["loss_base2"]) for point in train_loss),
        "valid_curve": valid,
        "train_curve": train_loss,
    }


def compare_one(name: str, model_args: Tuple[str, ...], args, data: Path, progress: bool) -> dict:
    root = args.out_dir
    result: dict = {"model_args": list(model_args)}
    try:
        runs, segments, save_dir = train_in_segments(name, model_args, args, data, progress)
        result["segments"] = [asdict(segment) for segment in segments]
        result.update(training_summary(runs, args.budget_cpu_seconds))
        tqdm.write(f"[{name}] {result['updates']} updates in {result['cpu_seconds']:.1f} CPU s "
                   f"({result['wall_seconds']:.1f} s wall, {len(segments)} segments)")
        checkpoint = save_dir / "checkpoint_best.pt"
        result["checkpoint"] = str(checkpoint)
        result["test"] = eval_lm(data, checkpoint, args.tokens_per_sample, root / "logs" / f"{name}_eval_lm.log")
        if name != "transformer":
            result["stateful"] = eval_stateful(data, checkpoint, args.tokens_per_sample,
                                               root / "logs" / f"{name}_eval_stateful.log")
        tqdm.write(f"[{name}] test perplexity {result['test']['perplexity']:.2f}"
                   + (f", stateful {result['stateful']['stateful']['perplexity']:.2f}" if "stateful" in result else ""))
    except Exception as error:  # reported per model; the other models still run
        result["error"] = f"{type(error).__name__}: {error}"
        tqdm.write(f"[{name}] FAILED: {result['error'][:LOG_TAIL_CHARACTERS]}")
    return result


# ------------------------------------------------------------------ report
def _number(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def markdown(results: dict) -> str:
    settings = results["settings"]
    budget = settings["budget_cpu_seconds"]
    lines = [
        "# Megalodon vs Mega vs transformer: Shakespeare word-level LM at equal parameters and CPU time",
        "",
        f"Budget: {budget:g} CPU seconds per model, all its fairseq-train processes together "
        f"(one thread; start-ups, updates, validations and checkpoints included), "
        f"{settings['tokens_per_sample']}-token blocks, batch 16, chunk {settings['chunk_size']} "
        f"for the Mega-family models. Vocabulary {settings['vocabulary']:,} "
        f"(the uniform perplexity); add-one unigram test perplexity "
        f"{_number(settings['unigram_test_perplexity'], 1)}.",
        "",
        "| model | arch | used params | vs megalodon | updates | CPU s | wall s | wps | words/CPU s "
        "| best valid ppl (update) | last valid ppl | test ppl (eval-lm) | stateful test ppl |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = results["models"].get(REFERENCE, {}).get("used_parameters")
    arches = {}
    for name, row in results["models"].items():
        used = row.get("used_parameters")
        relative = f"{100.0 * (used - reference) / reference:+.2f}%" if used and reference else "–"
        arch = row["model_args"][row["model_args"].index("--arch") + 1]
        if arch == "transformer_lm":
            arch += f" (FFN {row['model_args'][row['model_args'].index('--decoder-ffn-embed-dim') + 1]})"
        arches[name] = arch
        if "error" in row:
            lines.append(f"| {name} | {arch} | {_number(used)} | {relative} | **failed** (see results.json) "
                         "| | | | | | | | |")
            continue
        best, last = row.get("best_valid") or {}, row.get("last_valid") or {}
        stateful = row.get("stateful", {}).get("stateful", {}).get("perplexity")
        lines.append(
            f"| {name} | {arch} | {_number(used)} | {relative} | {_number(row['updates'])} | "
            f"{_number(row['cpu_seconds'])} | {_number(row['wall_seconds'])} | {_number(row['wps'], 0)} | "
            f"{_number(row['words_per_cpu_second'], 0)} | {_number(best.get('perplexity'), 2)} "
            f"({_number(best.get('num_updates'))}) | {_number(last.get('perplexity'), 2)} | "
            f"{_number(row['test']['perplexity'], 2)} | {_number(stateful, 2)} |")
    fractions = [f"{fraction:g}" for fraction in BUDGET_FRACTIONS]
    lines += [
        "",
        "Best validation perplexity reached within a share of the budget (from the validation curves):",
        "",
        "| model | " + " | ".join(f"≤ {float(f) * budget:g} CPU s" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for name, row in results["models"].items():
        within = row.get("best_valid_perplexity_within_budget_fraction") or {}
        lines.append(f"| {name} | " + " | ".join(_number(within.get(f), 2) for f in fractions) + " |")
    lines += [
        "",
        "- used params: parameters that get a gradient in a training step "
        "(scripts/count_parameters.py's 'used'); the transformer's FFN width is matched to megalodon's "
        "(the two Mega-family presets are used as they are).",
        f"- updates: the budget is spent in segments that resume from checkpoint_last.pt: "
        f"{settings['first_segment_updates']} updates, then segments sized from the CPU spent so far and "
        f"the last segment's CPU s per update to reach {', '.join(f'{t:.0%}' for t in settings['segment_targets'])} "
        "of the budget.",
        "- CPU s: user + system CPU seconds of the model's fairseq-train processes (their rusage); "
        "wall s: their wall time (the machine is shared).",
        "- wps: fairseq's training words/s (wall clock), median over the log intervals (each segment's "
        "first left out); words/CPU s: words per batch / CPU seconds per update.",
        "- test ppl: `fairseq-eval-lm --gen-subset test --tokens-per-sample "
        f"{settings['tokens_per_sample']}` on checkpoint_best.pt (independent blocks); stateful: "
        "scripts/eval_lm_stateful.py on the same checkpoint with the EMA / timestep-norm state and the "
        "attention chunk carried across blocks (not applicable to the transformer).",
        "",
        f"Command: `{settings['command']}`; total wall time {results['wall_seconds_total']:.0f} s.",
    ]
    if results.get("plot"):
        lines.append(f"\nPlot: {results['plot']}.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Optional[str]:
    """Validation loss against CPU seconds and against updates; returns a note when skipped."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: no plot"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_cpu, by_updates) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, row in results["models"].items():
        curve = row.get("valid_curve") or []
        if not curve:
            continue
        label = f"{name} ({_number(row.get('used_parameters'))} params)"
        timed = [point for point in curve if point["cpu_seconds"] is not None]
        if timed:
            by_cpu.plot([p["cpu_seconds"] for p in timed], [p["loss_base2"] for p in timed], marker=".", label=label)
        by_updates.plot([p["num_updates"] for p in curve], [p["loss_base2"] for p in curve], marker=".", label=label)
    for axis, x_label in ((by_cpu, "CPU seconds of the model's fairseq-train processes"), (by_updates, "updates")):
        axis.set_xlabel(x_label)
        axis.set_ylabel("validation loss (base 2)")
        axis.grid(True, alpha=0.3)
        if axis.get_lines():
            axis.legend(fontsize=8)
    by_cpu.axvline(results["settings"]["budget_cpu_seconds"], color="grey", linestyle="--", linewidth=1)
    by_cpu.set_title(f"equal budget of {results['settings']['budget_cpu_seconds']:g} CPU s", fontsize=10)
    by_updates.set_title("same curves against updates", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress_bar
    command = " ".join(["python", "scripts/compare_lm_families.py", *(sys.argv[1:] if argv is None else argv)])

    tqdm.write("preparing the data")
    data = prepare_data(args.out_dir / "data")
    task = lm_task(data, args.tokens_per_sample) + ("--sample-break-mode", "none")
    tqdm.write("counting used parameters / matching the transformer's FFN width")
    options, used = model_options(task, args.models, args.chunk_size)
    vocabulary = sum(1 for _ in open(data / "dict.txt")) + 4  # fairseq's 4 special symbols
    from mega_fairseq.evaluation.count_baselines import unigram_perplexity

    results = {
        "settings": {
            "command": command,
            "budget_cpu_seconds": args.budget_cpu_seconds,
            "first_segment_updates": args.first_segment_updates,
            "segment_targets": list(args.segment_targets),
            "log_interval": args.log_interval,
            "update_cap": args.update_cap,
            "jobs": args.jobs,
            "tokens_per_sample": args.tokens_per_sample,
            "chunk_size": args.chunk_size,
            "threads_per_process": THREADS,
            "optimization": list(OPTIMIZATION),
            "data": str(data),
            "vocabulary": vocabulary,
            "unigram_test_perplexity": unigram_perplexity(data, "test"),
            "parameter_reference": REFERENCE,
            "matched_with": "benchmarking.candidates.with_matched_ffn_width "
                            "(count_parameters.closest_ffn_width over --decoder-ffn-embed-dim)",
        },
        "models": {},
    }
    stages = tqdm(total=len(args.models), desc="models", unit="model", disable=not progress)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each model's steps run in order
        futures = {name: pool.submit(compare_one, name, options[name], args, data, progress and args.jobs == 1)
                   for name in args.models}
        for future in as_completed(futures.values()):
            future.result()
            stages.update(1)
    stages.close()
    for name in args.models:
        results["models"][name] = {"used_parameters": used[name], **futures[name].result()}

    results["wall_seconds_total"] = time.monotonic() - started
    note = plot(results, args.out_dir / "results.png")
    results["plot"] = "results.png" if note is None else note
    with AtomicOutputs() as outputs:  # both files or neither
        outputs.path(args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        outputs.path(args.out_dir / "results.md").write_text(markdown(results))
    print(markdown(results))
    failed = [name for name, row in results["models"].items() if "error" in row]
    if failed:
        print(f"failed: {', '.join(failed)} (errors in {args.out_dir / 'results.json'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

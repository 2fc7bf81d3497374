"""Section "training": training throughput (words/s, fairseq-train's ``wps``) of Mega
against fairseq transformers with the same number of used parameters, through the
unmodified ``fairseq-train`` console script (``--user-dir mega_fairseq``, ``--cpu``) on
random word sequences from a 1000-word vocabulary, binarized with fairseq-preprocess.

a. language modelling at 512 ``--tokens-per-sample`` (Mega with full attention): 4-layer
   ``mega_lm`` against ``transformer_lm`` at widths 256 and 512, and ``mega_lm_tiny`` (2
   layers, 64 wide); at 2048 (Mega chunked): ``mega_lm_tiny``. Every batch holds the same
   number of tokens (``--max-tokens``). Each comparison also trains ``megalodon_lm`` of the
   same sizes and chunking (``megalodon_lm_options``, ``megalodon_lm_tiny``), reported
   without a bar;
b. translation: ``mega`` (mega_tiny's 2+2 blocks) against ``transformer`` at widths 128 and
   512.

Each model trains a few dozen updates per run (the wide models fewer); runs alternate between the models
(the order rotating each repetition). A run's throughput is the median ``wps`` of its
``train_inner`` log intervals after the first (warm-up); a model's is the median over runs.
The transformer's FFN width is searched so that the parameters a training step uses
match Mega's (:mod:`benchmarking.candidates`), for each data set and sequence length;
Megalodon's FFN width is searched the same way, to the same count.
``SectionOptions.training_only`` (``benchmark.py --training-only REGEX``) runs only the
comparisons whose label matches.
"""

import itertools
import json
import logging
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from tqdm import tqdm

from benchmarking.candidates import (
    MEGA_LM,
    MEGALODON_LM,
    MEGALODON_LM_FFN,
    TRANSFORMER_LM,
    TRANSFORMER_LM_FFN,
    TRANSFORMER_MT_FFN,
    VOCABULARY,
    lm_task,
    mega_lm_options,
    mega_mt_options,
    megalodon_lm_options,
    mt_task,
    transformer_lm_options,
    transformer_mt_options,
    used_parameters,
    vocabulary_words,
    with_matched_ffn_width,
)
from benchmarking.measure import alternate, ratio
from benchmarking.results import SectionOptions, SectionResult, Target, at_least, informative, reported

SECTION = "training"
REPO = Path(__file__).resolve().parents[2]
SEED = 1
# One thread per run: with 2 threads on this shared 2-core machine, throughput fell ten-fold
# in the intervals where another process ran (threads wait for each other at every op).
THREADS = 1
LOG_TAIL_CHARACTERS = 4000
LM_DATA, MT_DATA = "lm_bin", "mt_bin"  # the binarized corpora, in the section's work folder

OPTIMIZATION = ("--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "1e-3",
                "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10", "--dropout", "0.1")
MT_CRITERION = ("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")


WIDE_LM_LAYERS = 4
SPEED_BAR = 1.0  # Mega's wps over the transformer's, LM at the short length and translation
LONG_BAR = 1.5  # LM at the long length (chunked Mega)


@dataclass(frozen=True)
class Plan:
    """Sizes of one mode. lm_lengths: the short and long --tokens-per-sample; long_chunk:
    Mega's --decoder-chunk-size at the long one; lm_widths, mt_widths: the widths of the
    4-layer LMs (short length) and of the translation models; each run trains max_update
    updates (wide_max_update for models wider than 128), logged every log_interval
    (wide_log_interval); the corpora hold lm_train_tokens words and mt_train_pairs pairs."""

    lm_lengths: Tuple[int, int]
    long_chunk: int
    lm_widths: Tuple[int, ...]
    mt_widths: Tuple[int, ...]
    max_tokens: int
    max_update: int
    log_interval: int
    wide_max_update: int
    wide_log_interval: int
    lm_train_tokens: int
    mt_train_pairs: int
    preprocess_workers: int


def plan_for(quick: bool) -> Plan:
    if quick:
        return Plan(lm_lengths=(64, 128), long_chunk=32, lm_widths=(64,), mt_widths=(64,), max_tokens=512,
                    max_update=3, log_interval=1, wide_max_update=3, wide_log_interval=1,
                    lm_train_tokens=6000, mt_train_pairs=200, preprocess_workers=1)
    return Plan(lm_lengths=(512, 2048), long_chunk=128, lm_widths=(256, 512), mt_widths=(128, 512),
                max_tokens=4096, max_update=40, log_interval=10, wide_max_update=15, wide_log_interval=5,
                lm_train_tokens=400_000, mt_train_pairs=8000, preprocess_workers=2)


@dataclass
class Comparison:
    """One side-by-side: the data (fairseq's task options), Mega's and the baseline's model
    options (the baseline's FFN width filled in by :func:`match_baseline`), the target's bar
    (None: reported without one) and the run length; megalodon_args: a Megalodon trained
    alongside (its FFN width matched too), or None."""

    label: str
    task_args: Tuple[str, ...]
    mega_args: Tuple[str, ...]
    baseline_args: Tuple[str, ...]
    baseline_ffn: Tuple[str, ...]
    bar: Optional[float]
    max_update: int
    log_interval: int
    extra_args: Tuple[str, ...] = ()
    tokens_per_sample: Optional[int] = None
    megalodon_args: Optional[Tuple[str, ...]] = None
    used: Dict[str, int] = field(default_factory=dict)

    def models(self) -> Dict[str, Tuple[str, ...]]:
        """{name: model options}: mega, megalodon (where trained), the transformer last."""
        models = {"mega": self.mega_args}
        if self.megalodon_args is not None:
            models["megalodon"] = self.megalodon_args
        models["transformer"] = self.baseline_args
        return models


# ----------------------------------------------------------------------- data
def random_lines(rng: random.Random, words: List[str], total_words: int, lengths=(10, 50)) -> List[str]:
    """Lines of random words (uniform lengths in ``lengths``) with about ``total_words`` words."""
    lines, count = [], 0
    while count < total_words:
        length = rng.randint(*lengths)
        lines.append(" ".join(rng.choice(words) for _ in range(length)))
        count += length
    return lines


def write_lines(path: Path, lines: List[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"console script {name} not found next to {sys.executable}")
    return str(path)


def fresh_directory(path: Path) -> Path:
    """``path``, emptied (fairseq-preprocess refuses to overwrite a dictionary)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_logged(command: List[str], log_path: Path, what: str, cwd: Path) -> str:
    """Runs ``command`` with its output in ``log_path``; raises with the log's tail if it
    fails. Returns the log."""
    environment = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS),
                       PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=environment)
    output = log_path.read_text()
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed (exit code {completed.returncode}); command: "
                           f"{' '.join(command)}\n--- last lines of {log_path} ---\n"
                           f"{output[-LOG_TAIL_CHARACTERS:]}")
    return output


def prepare_lm_data(root: Path, plan: Plan) -> Path:
    """Random-word LM corpus binarized with fairseq-preprocess; returns the data dir."""
    rng = random.Random(SEED)
    words = vocabulary_words()
    text = root / "lm_text"
    text.mkdir(parents=True, exist_ok=True)
    write_lines(text / "train.txt", random_lines(rng, words, plan.lm_train_tokens))
    write_lines(text / "valid.txt", random_lines(rng, words, 2000))
    destination = fresh_directory(root / LM_DATA)
    run_logged([console_script("fairseq-preprocess"), "--only-source",
                "--trainpref", str(text / "train.txt"), "--validpref", str(text / "valid.txt"),
                "--destdir", str(destination), "--workers", str(plan.preprocess_workers)],
               root / "preprocess_lm.log", "fairseq-preprocess (LM data)", root)
    return destination


def prepare_mt_data(root: Path, plan: Plan) -> Path:
    """Random-word parallel corpus (unrelated source and target sentences of 10-50 words),
    binarized with a joined dictionary; returns the data dir."""
    rng = random.Random(SEED + 1)
    words = vocabulary_words()
    text = root / "mt_text"
    text.mkdir(parents=True, exist_ok=True)
    for split, pairs in (("train", plan.mt_train_pairs), ("valid", 50)):
        for language in ("en", "de"):
            lines = [" ".join(rng.choice(words) for _ in range(rng.randint(10, 50)))
                     for _ in range(pairs)]
            write_lines(text / f"{split}.{language}", lines)
    destination = fresh_directory(root / MT_DATA)
    run_logged([console_script("fairseq-preprocess"), "--source-lang", "en", "--target-lang", "de",
                "--trainpref", str(text / "train"), "--validpref", str(text / "valid"),
                "--destdir", str(destination), "--joined-dictionary",
                "--workers", str(plan.preprocess_workers)],
               root / "preprocess_mt.log", "fairseq-preprocess (translation data)", root)
    return destination


# -------------------------------------------------------------- comparisons
def comparisons_for(plan: Plan, lm_data: Path, mt_data: Path) -> List[Comparison]:
    short, long = plan.lm_lengths

    def lm_stream(length: int) -> Tuple[str, ...]:
        return lm_task(lm_data, length) + ("--sample-break-mode", "none")

    def run_length(width: int) -> Tuple[int, int]:
        return (plan.wide_max_update, plan.wide_log_interval) if width > 128 else (plan.max_update, plan.log_interval)

    # Megalodon with Mega's attention: full at the short length (megalodon_lm's own chunk, 2048
    # and megalodon_lm_tiny's 64, overridden), chunks of long_chunk at the long one
    full, chunked = ("--decoder-chunk-size", "-1"), ("--decoder-chunk-size", str(plan.long_chunk))
    comparisons = [
        Comparison(f"LM @ {short}, width {width}", lm_stream(short), mega_lm_options(width, WIDE_LM_LAYERS),
                   transformer_lm_options(width, WIDE_LM_LAYERS), TRANSFORMER_LM_FFN, SPEED_BAR, *run_length(width),
                   tokens_per_sample=short, megalodon_args=megalodon_lm_options(width, WIDE_LM_LAYERS) + full)
        for width in plan.lm_widths
    ]
    comparisons += [
        Comparison(f"LM @ {short}, mega_lm_tiny", lm_stream(short), MEGA_LM, TRANSFORMER_LM, TRANSFORMER_LM_FFN,
                   None, plan.max_update, plan.log_interval, tokens_per_sample=short,
                   megalodon_args=MEGALODON_LM + full),
        Comparison(f"LM @ {long}, mega_lm_tiny", lm_stream(long), MEGA_LM + chunked, TRANSFORMER_LM,
                   TRANSFORMER_LM_FFN, LONG_BAR, plan.max_update, plan.log_interval, tokens_per_sample=long,
                   megalodon_args=MEGALODON_LM + chunked),
    ]
    comparisons += [
        Comparison(f"translation, width {width}", mt_task(mt_data), mega_mt_options(width),
                   transformer_mt_options(width), TRANSFORMER_MT_FFN, SPEED_BAR, *run_length(width),
                   extra_args=MT_CRITERION)
        for width in plan.mt_widths
    ]
    return comparisons


def selected(comparisons: List[Comparison], pattern: Optional[str]) -> List[Comparison]:
    """The comparisons whose label matches ``pattern`` (``re.search``; None: all of them)."""
    if pattern is None:
        return comparisons
    chosen = [comparison for comparison in comparisons if re.search(pattern, comparison.label)]
    if not chosen:
        raise ValueError(f"--training-only {pattern!r} matches none of the comparisons: "
                         + "; ".join(comparison.label for comparison in comparisons))
    return chosen


def match_baseline(comparison: Comparison) -> None:
    """Sets the baseline's FFN width so its used parameters come closest to Mega's, and
    Megalodon's (where trained) the same way, to the same count."""
    mega_used = used_parameters(comparison.task_args, comparison.mega_args)
    comparison.baseline_args, baseline_used = with_matched_ffn_width(
        comparison.task_args, mega_used, comparison.baseline_args, comparison.baseline_ffn)
    comparison.used = {"mega": mega_used, "transformer": baseline_used}
    if comparison.megalodon_args is not None:
        comparison.megalodon_args, comparison.used["megalodon"] = with_matched_ffn_width(
            comparison.task_args, mega_used, comparison.megalodon_args, MEGALODON_LM_FFN)


# ---------------------------------------------------------------- training
def train_command(comparison: Comparison, model_args: Tuple[str, ...], plan: Plan,
                  save_dir: Path) -> List[str]:
    return [console_script("fairseq-train"), *comparison.task_args, "--user-dir",
            str(REPO / "mega_fairseq"), *model_args, *comparison.extra_args, *OPTIMIZATION,
            "--max-tokens", str(plan.max_tokens), "--max-update", str(comparison.max_update),
            "--log-format", "json", "--log-interval", str(comparison.log_interval), "--cpu",
            "--seed", str(SEED), "--num-workers", "0", "--disable-validation", "--no-save",
            "--save-dir", str(save_dir)]


def interval_stats(log: str) -> List[dict]:
    """The JSON statistics of every ``train_inner`` line of a --log-format json log."""
    marker = "| train_inner | "
    return [json.loads(line.split(marker, 1)[1]) for line in log.splitlines() if marker in line]


def run_throughput(log: str, log_path: Path) -> Tuple[float, float]:
    """(median wps, median words per batch) over the log intervals after the first."""
    intervals = interval_stats(log)[1:]
    if not intervals:
        raise RuntimeError(f"{log_path}: fewer than two train_inner log lines, nothing to measure "
                           f"after the warm-up interval\n--- last lines ---\n{log[-LOG_TAIL_CHARACTERS:]}")
    return (statistics.median(float(s["wps"]) for s in intervals),
            statistics.median(float(s["wpb"]) for s in intervals))


def train_once(comparison: Comparison, model: str, repetition: int, plan: Plan, root: Path) -> Tuple[float, float]:
    """One fairseq-train run; returns (wps, words per batch)."""
    name = f"{comparison.label}_{model}_{repetition}".replace(" ", "").replace("@", "_")
    log_path = root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = train_command(comparison, comparison.models()[model], plan, root / "checkpoints" / name)
    log = run_logged(command, log_path, f"fairseq-train ({comparison.label}, {model})", root)
    return run_throughput(log, log_path)


def measure(comparison: Comparison, plan: Plan, repeats: int, root: Path, progress: tqdm) -> List[dict]:
    """Alternating runs of the models (:func:`benchmarking.measure.alternate`); one row per
    model (Megalodon's also with its wps over Mega's)."""
    names = list(comparison.models())

    def runs_of(name: str) -> Callable[[], Tuple[float, float]]:
        repetitions = itertools.count()  # the k-th run of a model is in repetition k

        def run_once() -> Tuple[float, float]:
            progress.set_postfix_str(f"{comparison.label}: {name}")
            outcome = train_once(comparison, name, next(repetitions), plan, root)
            progress.update(1)
            return outcome

        return run_once

    outcomes = alternate({name: runs_of(name) for name in names}, repeats)
    runs: Dict[str, List[float]] = {name: [wps for wps, _ in outcomes[name]] for name in names}
    batches: Dict[str, List[float]] = {name: [words for _, words in outcomes[name]] for name in names}
    baseline = statistics.median(runs["transformer"])
    rows = []
    for name in names:
        median = statistics.median(runs[name])
        row = dict(
            label=f"{comparison.label}: {name}", comparison=comparison.label,
            arch=" ".join(comparison.models()[name]), parameters_used=comparison.used[name],
            tokens_per_sample=comparison.tokens_per_sample, words_per_batch=statistics.median(batches[name]),
            wps_median=median, wps_runs=runs[name], wps_vs_transformer=ratio(median, baseline),
        )
        if name == "megalodon":
            row["wps_vs_mega"] = ratio(median, statistics.median(runs["mega"]))
        rows.append(row)
    return rows


def targets_for(rows: List[dict], comparisons: List[Comparison]) -> List[Target]:
    """Mega's wps over the transformer's, with the comparison's bar (or informative);
    Megalodon's over the transformer's and over Mega's, reported."""
    by_label = {row["label"]: row for row in rows}
    targets = []
    for comparison in comparisons:
        name = f"training wps mega vs transformer, {comparison.label}"
        measured = by_label[f"{comparison.label}: mega"]["wps_vs_transformer"]
        targets.append(informative(name, measured) if comparison.bar is None
                       else at_least(name, measured, comparison.bar))
        megalodon = by_label.get(f"{comparison.label}: megalodon")
        if megalodon is not None:
            targets.append(reported(f"training wps megalodon vs transformer, {comparison.label}",
                                    megalodon["wps_vs_transformer"]))
            targets.append(reported(f"training wps megalodon vs mega, {comparison.label}", megalodon["wps_vs_mega"]))
    return targets


def notes_for(comparisons: List[Comparison], plan: Plan, repeats: int, pattern: Optional[str] = None) -> List[str]:
    notes = [
        f"fairseq-train --cpu, {THREADS} thread per run (OMP_NUM_THREADS), --max-tokens "
        f"{plan.max_tokens}, adam, dropout 0.1, {plan.max_update} updates per run logged every "
        f"{plan.log_interval} ({plan.wide_max_update} every {plan.wide_log_interval} for models wider than "
        f"128); wps = median over the intervals after the first, then over "
        f"{repeats} alternating run(s) per model; translation wps counts target tokens",
        f"data: random words from a {VOCABULARY}-word vocabulary (LM: {plan.lm_train_tokens:,} "
        f"training words, --sample-break-mode none; translation: {plan.mt_train_pairs:,} pairs "
        "of unrelated 10-50-word sentences, joined dictionary)",
        f"mega_lm: {WIDE_LM_LAYERS} layers of candidates.mega_sizes (hidden 2C, FFN 2C, z C/4, EMA dims 16), tied "
        f"embeddings; transformer_lm: the same width and depth, 64-dim heads (at least 2), tied embeddings; "
        "mega_lm_tiny: 2 layers, 64 wide, against a 2-layer 64-wide transformer_lm with 4 heads; mega: 2+2 "
        "blocks of candidates.mega_sizes, shared embeddings; transformer: 2+2 layers of the same width; every "
        "baseline with the FFN width whose used-parameter count is closest to Mega's",
        "megalodon_lm (LM comparisons): megalodon_lm's blocks (complex EMA, timestep norm, normalized attention, "
        "no update gate, two-hop residual, rotary positions) with Mega's sizes (4-layer: candidates.mega_sizes, "
        "timestep-norm groups candidates.timestep_norm_groups; tiny: megalodon_lm_tiny) and attention (full "
        "at the short length, Mega's chunk at the long one); its FFN width, too, is the one whose used-parameter "
        "count is closest to Mega's; reported without a bar",
    ]
    if pattern is not None:
        notes.append(f"only the comparisons matching --training-only {pattern!r}")
    for comparison in comparisons:
        megalodon = ("" if comparison.megalodon_args is None else
                     f", megalodon {comparison.used['megalodon']:,} (FFN width {comparison.megalodon_args[-1]})")
        notes.append(f"{comparison.label}: used parameters mega {comparison.used['mega']:,}, "
                     f"transformer {comparison.used['transformer']:,} "
                     f"(FFN width {comparison.baseline_args[-1]}){megalodon}")
    return notes


def run(options: SectionOptions) -> SectionResult:
    """Parts a and b (see the module docstring); quick: tiny data, 3 updates per run."""
    plan = plan_for(options.quick)
    root = Path(options.work_dir).resolve() / SECTION  # the commands run with cwd=root
    root.mkdir(parents=True, exist_ok=True)
    lm_data, mt_data = root / LM_DATA, root / MT_DATA
    comparisons = selected(comparisons_for(plan, lm_data, mt_data), options.training_only)
    # only the data the chosen comparisons train on
    if any(str(lm_data) in comparison.task_args for comparison in comparisons):
        prepare_lm_data(root, plan)
    if any(str(mt_data) in comparison.task_args for comparison in comparisons):
        prepare_mt_data(root, plan)
    previous_disable = logging.root.manager.disable
    logging.disable(logging.INFO)  # fairseq's model-building messages while counting
    try:
        for comparison in comparisons:
            match_baseline(comparison)
    finally:
        logging.disable(previous_disable)
    result = SectionResult(SECTION)
    total_runs = sum(len(comparison.models()) for comparison in comparisons) * options.repeats
    with tqdm(total=total_runs, desc=SECTION, disable=not options.progress) as progress:
        for comparison in comparisons:
            result.rows.extend(measure(comparison, plan, options.repeats, root, progress))
    result.targets.extend(targets_for(result.rows, comparisons))
    result.notes.extend(notes_for(comparisons, plan, options.repeats, options.training_only))
    return result

"""Section "generation": inference speed of untrained models (eval mode, no gradients),
built in-process exactly as fairseq-train builds them from the command line, on a
generated 1000-word dictionary.

a. LM sampling through fairseq's ``SequenceGenerator`` (sampling, beam 1, a forced number
   of new tokens after a short prompt, batch of prompts): 2-layer ``mega_lm`` (full attention
   and chunked) against a ``transformer_lm`` with the same used-parameter count, at widths
   128 and 512.
b. Translation beam 5 through ``SequenceGenerator`` with a forced output length: ``mega``
   (mega_tiny's 2+2 blocks) against a ``transformer`` of the same used-parameter count, at
   widths 128 and 512.
c. Greedy decoding with ``mega_lm_tiny``'s incremental state against re-running the whole
   prefix at every step; both must produce the same tokens.
d. Step time against position when a chunked ``mega_lm_tiny`` generates a long sequence
   incrementally (flat for chunked attention), and for the unchunked model as a contrast.

The models and the matching of the transformers' used parameters to Mega's are those of
:mod:`benchmarking.candidates`.
"""

import functools
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from tqdm import tqdm

from benchmarking.candidates import (
    MEGA_LM,
    TRANSFORMER_LM_FFN,
    TRANSFORMER_MT_FFN,
    VOCABULARY,
    build_counted,
    lm_task,
    mega_lm_options,
    mega_mt_options,
    mt_task,
    transformer_lm_options,
    transformer_mt_options,
    with_matched_ffn_width,
    write_dictionary,
)
from benchmarking.measure import alternate, compare, ratio
from benchmarking.results import SectionOptions, SectionResult, at_least, at_most

SECTION = "generation"
SEED = 0
LM_BATCH = 8
PROMPT_LENGTH = 16
MT_BATCH = 8
SOURCE_LENGTH = 30  # tokens per source sentence, EOS included
BEAM = 5
LM_MAX_POSITIONS = 2048  # --tokens-per-sample of the LMs: covers prompt + longest generation
POSITION_CHUNK = 64  # chunk of the models in parts a and d
# Decoding runs one token at a time through small matrices: with several threads on a
# shared machine, every parallel region waits for descheduled threads (steps became 100x
# slower under load), so both sides run on one thread.
THREADS = 1

MEGA_LM_CHUNKED = MEGA_LM + ("--decoder-chunk-size", str(POSITION_CHUNK))
LM_LAYERS = 2
WIDTHS = (128, 512)  # of parts a and b
QUICK_WIDTHS = (64,)
SPEED_BAR = 1.0  # Mega's tokens/s over the transformer's, parts a and b


@dataclass(frozen=True)
class Sizes:
    """new_tokens: tokens sampled (a) and decoded greedily (c) per prompt; mt_length:
    forced translation length (b); long_tokens: tokens generated in d, whose first and last
    ``edge`` positions are compared."""

    new_tokens: int
    mt_length: int
    long_tokens: int
    edge: int


def sizes_for(quick: bool) -> Sizes:
    if quick:
        return Sizes(new_tokens=16, mt_length=16, long_tokens=64, edge=16)
    return Sizes(new_tokens=256, mt_length=200, long_tokens=1024, edge=128)


# --------------------------------------------------------------------- models
def write_dictionaries(work_dir: Path) -> Tuple[Path, Path]:
    """fairseq dictionaries of VOCABULARY words: ``lm/dict.txt`` and the joined
    ``mt/dict.{en,de}.txt`` (all that the tasks' setup reads). Returns (lm_dir, mt_dir)."""
    return (write_dictionary(work_dir / "generation" / "lm"),
            write_dictionary(work_dir / "generation" / "mt", ("dict.en.txt", "dict.de.txt")))


def lm_common(lm_dir: Path) -> Tuple[str, ...]:
    """Task options of the LMs: positions for the prompt and the longest generation."""
    return lm_task(lm_dir, LM_MAX_POSITIONS)


def build(common: Sequence[str], model_args: Sequence[str]):
    """(model in eval mode, task, used parameters) as fairseq-train builds them."""
    model, task, used = build_counted(tuple(common), tuple(model_args), SEED)
    return model.eval(), task, used


@dataclass
class Candidate:
    """A model to measure: label, its options, the model (eval mode), used parameters."""

    label: str
    model_args: Tuple[str, ...]
    model: torch.nn.Module
    dictionary: object
    used: int


def build_candidate(label: str, common: Tuple[str, ...], model_args: Tuple[str, ...]) -> Candidate:
    model, task, used = build(common, model_args)
    return Candidate(label, model_args, model, task.target_dictionary, used)


def matched_transformer(label: str, common: Tuple[str, ...], reference_used: int,
                        model_args: Tuple[str, ...], ffn_options: Tuple[str, ...]) -> Candidate:
    matched_args, _ = with_matched_ffn_width(common, reference_used, model_args, ffn_options)
    return build_candidate(label, common, matched_args)


# ------------------------------------------------------------------- inputs
def random_words(dictionary, batch: int, length: int, seed: int) -> torch.Tensor:
    """batch x length word ids (no special symbols)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(dictionary.nspecial, len(dictionary), (batch, length), generator=generator)


def source_sentences(dictionary, batch: int, length: int) -> Dict[str, torch.Tensor]:
    """SequenceGenerator input: ``batch`` sources of ``length`` tokens ending with EOS."""
    words = random_words(dictionary, batch, length - 1, SEED + 1)
    eos = torch.full((batch, 1), dictionary.eos(), dtype=torch.long)
    return {"src_tokens": torch.cat([words, eos], dim=1),
            "src_lengths": torch.full((batch,), length, dtype=torch.long)}


# ----------------------------------------------------- a/b: SequenceGenerator
def lm_sampler(candidate: Candidate, prompts: torch.Tensor, new_tokens: int) -> Callable[[], int]:
    """A call samples ``new_tokens`` tokens after each prompt (B x P) with beam 1 (EOS
    forbidden until then, forced after) and returns the new tokens generated (B *
    new_tokens; EOS not counted). SequenceGenerator feeds the prompt one token per step."""
    from fairseq import search
    from fairseq.sequence_generator import SequenceGenerator

    dictionary = candidate.dictionary
    total = prompts.size(1) + new_tokens
    generator = SequenceGenerator(
        [candidate.model], dictionary, beam_size=1, max_len_a=0, max_len_b=total, min_len=total,
        search_strategy=search.Sampling(dictionary),
    )
    sample = {"net_input": {"src_tokens": prompts,
                            "src_lengths": torch.full((prompts.size(0),), prompts.size(1))}}

    def sample_once() -> int:
        hypotheses = generator.generate([candidate.model], sample, prefix_tokens=prompts,
                                        bos_token=dictionary.eos())
        return count_new_tokens(hypotheses, prompts.size(1), new_tokens, candidate.label)

    return sample_once


def mt_beam_search(candidate: Candidate, net_input: Dict[str, torch.Tensor], length: int) -> Callable[[], int]:
    """A call translates the batch with beam BEAM and a forced output length and returns
    the tokens of the best hypotheses (batch * length; EOS not counted)."""
    from fairseq.sequence_generator import SequenceGenerator

    generator = SequenceGenerator([candidate.model], candidate.dictionary, beam_size=BEAM,
                                  max_len_a=0, max_len_b=length, min_len=length)
    sample = {"net_input": net_input}

    def translate_once() -> int:
        hypotheses = generator.generate([candidate.model], sample)
        return count_new_tokens(hypotheses, 0, length, candidate.label)

    return translate_once


def count_new_tokens(hypotheses: List[List[dict]], prefix: int, expected: int, label: str) -> int:
    """Tokens after the prefix in each best hypothesis (its final EOS not counted); raises
    if a hypothesis does not have the forced length."""
    lengths = [len(beams[0]["tokens"]) - prefix - 1 for beams in hypotheses]
    if any(n != expected for n in lengths):
        raise RuntimeError(f"{label}: generated lengths {lengths}, expected {expected} each "
                           "(min_len/max_len did not force the length)")
    return sum(lengths)


def generation_rows(part: str, candidates: List[Candidate], calls: Dict[str, Callable[[], int]],
                    repeats: int, warmup: int, sentences: int) -> List[dict]:
    """Times each candidate's call (alternating them) and returns one row per candidate,
    with speed ratios against the last candidate (the transformer)."""
    produced = {label: call() for label, call in calls.items()}  # also checks the lengths
    measured = compare(calls, repeats, warmup=warmup, memory=False)
    baseline = candidates[-1].label
    rows = []
    for candidate in candidates:
        seconds = measured[candidate.label].median_s
        rows.append(dict(
            label=f"{part}: {candidate.label}", part=part, model=" ".join(candidate.model_args),
            parameters_used=candidate.used, tokens=produced[candidate.label], median_s=seconds,
            times_s=measured[candidate.label].times,
            tokens_per_s=produced[candidate.label] / seconds, sentences_per_s=sentences / seconds,
            speed_vs_transformer=ratio(measured[baseline].median_s, seconds),
        ))
    return rows


# ------------------------------------------------ c/d: manual greedy decoding
def greedy_decode(decoder, prompts: torch.Tensor, steps: int, incremental: bool,
                  step_seconds: List[float] = None) -> torch.Tensor:
    """Greedy decoding of ``steps`` tokens after the prompts (B x P); returns B x steps.

    incremental: the decoder keeps its state and runs only the new token each step (the
    first call runs the whole prompt); otherwise it re-runs the whole prefix every step.
    ``step_seconds`` (if given) receives the time of each step, argmax included."""
    batch, prompt_length = prompts.shape
    tokens = torch.empty(batch, prompt_length + steps, dtype=torch.long)
    tokens[:, :prompt_length] = prompts
    state: Dict = {}
    with torch.no_grad():
        for step in range(steps):
            end = prompt_length + step
            start = time.perf_counter()
            logits, _ = decoder(tokens[:, :end], incremental_state=state if incremental else None)
            tokens[:, end] = logits[:, -1].argmax(dim=-1)
            if step_seconds is not None:
                step_seconds.append(time.perf_counter() - start)
    return tokens[:, prompt_length:]


def check_same_tokens(incremental: torch.Tensor, recomputed: torch.Tensor) -> None:
    if not torch.equal(incremental, recomputed):
        differing = (incremental != recomputed).any(dim=0).nonzero()
        raise RuntimeError(
            "greedy decoding with the incremental state differs from re-running the prefix: "
            f"first differing step {int(differing[0])} of {incremental.size(1)}")


def step_time_profile(decoder, prompts: torch.Tensor, steps: int) -> List[float]:
    """Seconds of each incremental step when generating ``steps`` tokens."""
    times: List[float] = []
    greedy_decode(decoder, prompts, steps, incremental=True, step_seconds=times)
    return times


# ------------------------------------------------------------------ parts
class Progress:
    """A tqdm bar over the section's measurements (disabled unless options.progress)."""

    def __init__(self, options: SectionOptions, total: int):
        self.bar = tqdm(total=total, desc=SECTION, disable=not options.progress)

    def step(self, what: str) -> None:
        self.bar.set_postfix_str(what)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def lm_sampling(result: SectionResult, options: SectionOptions, lm_dir: Path, sizes: Sizes,
                warmup: int) -> None:
    """Part a: mega_lm (full, chunked) vs the matched transformer_lm at each width."""
    common = lm_common(lm_dir)
    for width in QUICK_WIDTHS if options.quick else WIDTHS:
        mega_args = mega_lm_options(width, LM_LAYERS)
        mega = build_candidate(f"mega_lm {width} wide", common, mega_args)
        chunked = build_candidate(f"mega_lm {width} wide chunk {POSITION_CHUNK}", common,
                                  mega_args + ("--decoder-chunk-size", str(POSITION_CHUNK)))
        transformer = matched_transformer(f"transformer_lm {width} wide", common, chunked.used,
                                          transformer_lm_options(width, LM_LAYERS), TRANSFORMER_LM_FFN)
        candidates = [mega, chunked, transformer]
        prompts = random_words(mega.dictionary, LM_BATCH, PROMPT_LENGTH, SEED)
        calls = {c.label: lm_sampler(c, prompts, sizes.new_tokens) for c in candidates}
        rows = generation_rows("LM sampling", candidates, calls, options.repeats, warmup, LM_BATCH)
        result.rows.extend(rows)
        result.notes.append(
            f"a. LM sampling, width {width}: {LM_LAYERS} layers; transformer_lm FFN width "
            f"{transformer.model_args[-1]} matches the chunked mega_lm's {chunked.used:,} used parameters "
            f"({transformer.used:,}; the unchunked mega_lm has {mega.used:,}: its 'simple' relative position "
            f"bias covers --tokens-per-sample {LM_MAX_POSITIONS} positions instead of one chunk)")
        for row in rows[:2]:
            result.targets.append(at_least(
                f"LM sampling tokens/s {row['label'].split(': ')[1]} vs transformer_lm", row["speed_vs_transformer"],
                SPEED_BAR))
    result.notes.append(
        f"a. LM sampling: batch {LM_BATCH} prompts of {PROMPT_LENGTH} tokens, {sizes.new_tokens} new "
        "tokens each (min_len = max_len), beam 1, unrestricted sampling, fairseq SequenceGenerator; "
        "tokens/s counts new tokens. mega_lm: candidates.mega_sizes, tied embeddings; transformer_lm: "
        "the same width and depth, 64-dim heads (at least 2), tied embeddings")


def mt_beam(result: SectionResult, options: SectionOptions, mt_dir: Path, sizes: Sizes,
            warmup: int) -> None:
    """Part b: mega (2+2 blocks) vs the matched transformer, beam 5, at each width."""
    common = mt_task(mt_dir)
    for width in QUICK_WIDTHS if options.quick else WIDTHS:
        mega = build_candidate(f"mega {width} wide", common, mega_mt_options(width))
        transformer = matched_transformer(f"transformer {width} wide", common, mega.used,
                                          transformer_mt_options(width), TRANSFORMER_MT_FFN)
        net_input = source_sentences(mega.dictionary, MT_BATCH, SOURCE_LENGTH)
        calls = {c.label: mt_beam_search(c, net_input, sizes.mt_length) for c in (mega, transformer)}
        rows = generation_rows("MT beam 5", [mega, transformer], calls, options.repeats, warmup, MT_BATCH)
        result.rows.extend(rows)
        result.notes.append(
            f"b. translation, width {width}: transformer FFN width {transformer.model_args[-1]} matches "
            f"mega's {mega.used:,} used parameters ({transformer.used:,})")
        result.targets.append(at_least(f"MT beam 5 tokens/s {mega.label} vs transformer",
                                       rows[0]["speed_vs_transformer"], SPEED_BAR))
    result.notes.append(
        f"b. translation: batch {MT_BATCH} sources of {SOURCE_LENGTH} tokens, beam {BEAM}, output "
        f"forced to {sizes.mt_length} tokens (min_len = max_len_b); tokens/s counts the best "
        "hypotheses' tokens. mega: 2+2 blocks of candidates.mega_sizes; transformer: 2+2 layers of the "
        "same width, 64-dim heads (at least 2), shared embeddings")


def incremental_vs_recompute(result: SectionResult, options: SectionOptions, lm_dir: Path,
                             sizes: Sizes, warmup: int) -> None:
    """Part c: greedy decoding with and without the incremental state (mega_lm_tiny)."""
    mega = build_candidate("mega_lm_tiny", lm_common(lm_dir), MEGA_LM)
    prompts = random_words(mega.dictionary, LM_BATCH, PROMPT_LENGTH, SEED)
    decoder, steps = mega.model.decoder, sizes.new_tokens
    check_same_tokens(greedy_decode(decoder, prompts, steps, incremental=True),
                      greedy_decode(decoder, prompts, steps, incremental=False))
    measured = compare({
        "incremental": lambda: greedy_decode(decoder, prompts, steps, incremental=True),
        "recompute": lambda: greedy_decode(decoder, prompts, steps, incremental=False),
    }, options.repeats, warmup=warmup, memory=False)
    speedup = ratio(measured["recompute"].median_s, measured["incremental"].median_s)
    for name, measurement in measured.items():
        result.rows.append(dict(
            label=f"greedy {name}: mega_lm_tiny", part="incremental vs recompute",
            model=" ".join(MEGA_LM), parameters_used=mega.used, tokens=LM_BATCH * steps,
            median_s=measurement.median_s, times_s=measurement.times,
            tokens_per_s=LM_BATCH * steps / measurement.median_s, same_tokens=True,
            incremental_speedup=speedup,
        ))
    result.targets.append(at_least(f"greedy decoding of {steps} tokens: incremental vs recomputing "
                                   "the prefix (speed-up)", speedup, 5,
                                   "both produced the same tokens"))
    result.notes.append(
        f"c. greedy decoding of {steps} tokens after {LM_BATCH} prompts of {PROMPT_LENGTH} tokens "
        "with mega_lm_tiny's decoder: incremental_state (one new token per step) vs the whole "
        "prefix re-run every step; identical tokens checked")


def step_time_vs_position(result: SectionResult, options: SectionOptions, lm_dir: Path,
                          sizes: Sizes, warmup: int) -> None:
    """Part d: per-step time in the first and last ``edge`` positions of a long generation."""
    common = lm_common(lm_dir)
    models = [build_candidate(f"mega_lm_tiny chunk {POSITION_CHUNK}", common, MEGA_LM_CHUNKED),
              build_candidate("mega_lm_tiny (no chunking)", common, MEGA_LM)]
    prompts = random_words(models[0].dictionary, LM_BATCH, PROMPT_LENGTH, SEED)
    profiles: Dict[str, List[List[float]]] = alternate(
        {m.label: functools.partial(step_time_profile, m.model.decoder, prompts, sizes.long_tokens)
         for m in models}, options.repeats, warmup=warmup)
    for model in models:
        first, last = edge_medians(profiles[model.label], sizes.edge)
        result.rows.append(dict(
            label=f"step time vs position: {model.label}", part="step time vs position",
            model=" ".join(model.model_args), parameters_used=model.used, tokens=sizes.long_tokens,
            first_positions_median_ms=1e3 * first, last_positions_median_ms=1e3 * last,
            last_vs_first=ratio(last, first),
            tokens_per_s=LM_BATCH / statistics.median(t for p in profiles[model.label] for t in p),
        ))
    chunked = result.rows[-2]
    result.targets.append(at_most(
        f"chunked mega_lm_tiny step time, last {sizes.edge} vs first {sizes.edge} of "
        f"{sizes.long_tokens} positions", chunked["last_vs_first"], 1.25,
        f"medians {chunked['first_positions_median_ms']:.2f} ms and "
        f"{chunked['last_positions_median_ms']:.2f} ms per step (batch {LM_BATCH})"))
    result.notes.append(
        f"d. incremental greedy generation of {sizes.long_tokens} tokens (batch {LM_BATCH}), each "
        f"step timed; median step time over the first and last {sizes.edge} positions across "
        f"{options.repeats} run(s); the unchunked model is a contrast, not a target")


def edge_medians(profiles: List[List[float]], edge: int) -> Tuple[float, float]:
    """Median step time over the first and over the last ``edge`` steps of all runs."""
    first = [t for profile in profiles for t in profile[:edge]]
    last = [t for profile in profiles for t in profile[-edge:]]
    return statistics.median(first), statistics.median(last)


def run(options: SectionOptions) -> SectionResult:
    """Parts a-d (see the module docstring); quick: tiny lengths, no warm-up."""
    previous_disable = logging.root.manager.disable
    logging.disable(logging.INFO)  # fairseq's model-building messages
    sizes = sizes_for(options.quick)
    warmup = 0 if options.quick else 1
    lm_dir, mt_dir = write_dictionaries(Path(options.work_dir))
    result = SectionResult(SECTION)
    progress = Progress(options, total=4)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for name, part in (("LM sampling", lm_sampling), ("MT beam 5", mt_beam),
                           ("incremental vs recompute", incremental_vs_recompute),
                           ("step time vs position", step_time_vs_position)):
            part(result, options, mt_dir if part is mt_beam else lm_dir, sizes, warmup)
            progress.step(name)
    finally:
        progress.close()
        torch.set_num_threads(previous_threads)
        logging.disable(previous_disable)
    result.notes.append(f"untrained models in eval mode, no gradients, {THREADS} torch thread "
                        f"(of {previous_threads}: decoding steps are small and latency-bound), "
                        f"vocabulary {VOCABULARY} words")
    return result

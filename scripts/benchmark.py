#!/usr/bin/env python
"""Mega against the baselines users would pick instead, measured side by side.

    python scripts/benchmark.py                    # every section (~1 h on 2 CPU cores)
    python scripts/benchmark.py --sections layer,ema --repeats 5
    python scripts/benchmark.py --quick            # tiny sizes, one repetition (CI smoke run)
    python scripts/benchmark.py --sections layer --device cuda   # the layer section on a GPU

Sections:
  layer       one Mega block (full attention; chunk 128/256), and one Megalodon block of
              the same widths and chunking, vs one fairseq transformer encoder/decoder
              layer of the same width: forward+backward time and peak memory over
              sequence lengths 256 ... 8192 at constant tokens per batch
  ema         our EMA vs a straightforward one (all powers materialised, linear FFT
              convolution as in the original research code), lengths up to 16k
  hf          our Mega layer vs the Hugging Face port (transformers==4.40.2) on identical
              weights: outputs compared, forward+backward time and memory
  generation  incremental decoding tokens/s (LM sampling, MT beam 5) vs fairseq's
              transformer; incremental vs recomputing the prefix; per-token cost vs position
  training    fairseq-train words/s of mega_lm and megalodon_lm vs transformer_lm (512
              and 2048 tokens per sample) and mega vs transformer (translation), matched
              parameters (--training-only REGEX: the comparisons whose label matches)
  lm          forward+backward time of 4-layer mega_lm vs transformer_lm (matched used
              parameters) at widths 128/256/512 and 512 tokens (full attention), 2048
              tokens (chunk 128), and each one's matrix-multiply FLOP/s as a fraction of
              the fp32 matmul rate measured alongside

Every section runs on the CPU; the layer section also runs on a GPU (--device cuda: the
device is synchronised around every timed call and peak memory is CUDA's own
max_memory_allocated). Every comparison runs its candidates in one process, alternating
them, and reports the median of the repetitions and the ratios. Results go to OUT_DIR: benchmark.json (every
row and target), benchmark.md (the tables) and benchmark.png (time and memory vs length).
"""

import argparse
import importlib
import json
import platform
import re
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))


SECTIONS = {
    "layer": "benchmarking.layer_scaling",
    "ema": "benchmarking.ema_kernel",
    "hf": "benchmarking.hf_port",
    "generation": "benchmarking.generation",
    "training": "benchmarking.training",
    "lm": "benchmarking.lm_step",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repetition (smoke run)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per candidate (default 3; 1 with --quick)")
    parser.add_argument("--out-dir", type=Path, default=Path("work-dirs/benchmark"),
                        help="where benchmark.json, benchmark.md and benchmark.png go")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="scratch space for generated data and checkpoints (default: OUT_DIR/scratch)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu",
                        help="torch device of the layer section: cpu (default), cuda, cuda:N; "
                             "the other sections run on the CPU only")
    parser.add_argument("--training-only", metavar="REGEX", default=None,
                        help="the training section runs only the comparisons whose label matches "
                             "(re.search), e.g. 'width 256|mega_lm_tiny' (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections: unknown section(s) {unknown or args.sections!r}; choose from {', '.join(SECTIONS)}")
    args.sections = sections
    # absolute, so the sections may run their commands in other working directories
    args.out_dir = args.out_dir.resolve()
    if args.work_dir is not None:
        args.work_dir = args.work_dir.resolve()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.training_only is not None:
        try:
            re.compile(args.training_only)
        except re.error as error:
            parser.error(f"--training-only {args.training_only!r} is not a regular expression ({error})")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    problem = device_problem(args.device, sections)
    if problem:
        parser.error(problem)
    return args


DEVICE_SECTIONS = ("layer",)  # the sections that run on a device other than the CPU


def device_problem(name: str, sections) -> str:
    """Why ``--device name`` cannot run ``sections`` here (a message for the user), or ""."""
    if name == "cpu":
        return ""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        return f"--device {name!r} is not a torch device ({error}); use cpu, cuda or cuda:N"
    if device.type == "cpu":
        return ""
    if device.type != "cuda":
        return f"--device {name}: only cpu and cuda devices are supported"
    cpu_only = [section for section in sections if section not in DEVICE_SECTIONS]
    if cpu_only:
        return (f"--device {name}: section(s) {', '.join(cpu_only)} run on the CPU only; "
                f"choose --sections {','.join(DEVICE_SECTIONS)}")
    if not torch.cuda.is_available():
        build = (f"built with CUDA {torch.version.cuda}, but it sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"
                 if torch.version.cuda else "a CPU-only build")
        return f"--device {name}: CUDA is not available: torch {torch.__version__} is {build}"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)"
    return ""


def machine_facts(device: str = "cpu") -> dict:
    import os

    import torch

    facts = dict(python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads(),
                 cpus=os.cpu_count(), processor=platform.processor() or platform.machine(),
                 date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), device=device)
    if torch.device(device).type == "cuda":
        facts.update(gpu=torch.cuda.get_device_name(torch.device(device)), cuda=torch.version.cuda)
    from benchmarking.measure import MATMUL_SIZE, matmul_gflops

    facts[f"cpu_fp32_matmul_gflops_{MATMUL_SIZE}"] = round(matmul_gflops(MATMUL_SIZE), 1)
    return facts


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarking.report import plot, section_text, targets_table
    from benchmarking.results import SectionOptions

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    options = SectionOptions(quick=args.quick, repeats=args.repeats, work_dir=args.work_dir or args.out_dir / "scratch",
                             progress=not args.no_progress, device=args.device, training_only=args.training_only)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_facts(args.device), "quick": args.quick, "repeats": args.repeats,
              "device": args.device, "training_only": args.training_only, "sections": {}}
    results = []
    for name in args.sections:
        started = time.perf_counter()
        print(f"== section {name}", flush=True)
        result = importlib.import_module(SECTIONS[name]).run(options)
        results.append(result)
        report["sections"][name] = dict(result.to_json(), seconds=time.perf_counter() - started)
        print(section_text(result), flush=True)
        (args.out_dir / "benchmark.json").write_text(json.dumps(report, indent=1))

    summary = targets_table(results)
    markdown = "\n".join(section_text(result) for result in results) + "\n## targets\n\n" + summary + "\n"
    (args.out_dir / "benchmark.md").write_text(markdown)
    print("== targets\n" + summary)
    if plot(results, args.out_dir / "benchmark.png"):
        print(f"plot: {args.out_dir / 'benchmark.png'}")
    print(f"results: {args.out_dir / 'benchmark.json'}, {args.out_dir / 'benchmark.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

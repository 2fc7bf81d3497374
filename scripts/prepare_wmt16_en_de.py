#!/usr/bin/env python
"""Binarise the WMT'16 English-German data (Google's preprocessed release, 32k joined BPE)
for ``fairseq-train --task translation`` with a joined dictionary.

The data is the tarball ``wmt16_en_de.tar.gz`` linked from fairseq's
``examples/scaling_nmt/README.md`` ("preprocessed WMT'16 En-De data provided by Google").
Extracted, it holds (among others) these files, all Moses-tokenised with BPE applied:

    train.tok.clean.bpe.32000.{en,de}     training pairs (about 4.5M)
    newstest2013.tok.bpe.32000.{en,de}    validation
    newstest2014.tok.bpe.32000.{en,de}    test
    bpe.32000, vocab.bpe.32000            BPE codes and vocabulary (not needed here)

The script checks that the six text files exist, are UTF-8 (a bad byte is reported with
its file, line and byte offset) and that every en/de pair has the same number of lines,
then runs ``fairseq-preprocess --source-lang en --target-lang de
--joined-dictionary`` (the console script of this Python environment) into ``--destdir``
and prints the next commands (training, generation, scoring).

Usage:
  python scripts/prepare_wmt16_en_de.py wmt16_en_de_bpe32k --destdir data-bin/wmt16_en_de_bpe32k
  python scripts/prepare_wmt16_en_de.py --tarball wmt16_en_de.tar.gz          # extracts first
  python scripts/prepare_wmt16_en_de.py DIR --max-lines 2000 --destdir /tmp/slice   # a quick slice
"""

import argparse
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from atomic_output import AtomicOutputs
from text_input import TextDecodeError, check_text, iter_lines

SRC, TGT = "en", "de"
SPLIT_PREFIXES = {
    "train": "train.tok.clean.bpe.32000",
    "valid": "newstest2013.tok.bpe.32000",
    "test": "newstest2014.tok.bpe.32000",
}
BPE_FILES = ("bpe.32000", "vocab.bpe.32000")
DEFAULT_TEXT_DIR = "wmt16_en_de_bpe32k"
DEFAULT_DESTDIR = "data-bin/wmt16_en_de_bpe32k"
DEFAULT_NWORDS = 33000  # the authors' README.mt.md (fairseq's scaling_nmt example uses 32768)


class DataError(Exception):
    """A problem with the input data, reported as one clear line."""


def required_files() -> List[str]:
    """The text files fairseq-preprocess reads, by file name."""
    return [f"{prefix}.{lang}" for prefix in SPLIT_PREFIXES.values() for lang in (SRC, TGT)]


def console_script(name: str) -> str:
    """A console script installed next to this interpreter (the virtualenv's bin)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DataError(f"{name} not found next to {sys.executable}; install fairseq in this environment")
    return str(path)


def extract_tarball(tarball: Path, text_dir: Path) -> None:
    """Extract the data files of Google's tarball into ``text_dir`` (flat, by base name).

    Only the six parallel files and the two BPE files are written, wherever they sit in
    the archive (top level, as in the released tarball, or under one folder); all of them
    or, when the archive cannot be read to its end, none.
    """
    if not tarball.is_file():
        raise DataError(f"tarball not found: {tarball}")
    try:
        _extract_members(tarball, text_dir)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{tarball}: extraction failed ({error}); no file was extracted") from None


def _extract_members(tarball: Path, text_dir: Path) -> None:
    """The extraction of :func:`extract_tarball`: every file written, or none."""
    wanted = set(required_files()) | set(BPE_FILES)
    found = set()
    with AtomicOutputs() as outputs, tarfile.open(tarball, "r:*") as archive:
        for member in archive:
            name = os.path.basename(member.name)
            if not member.isfile() or name not in wanted or name in found:
                continue
            source = archive.extractfile(member)
            with open(outputs.path(text_dir / name), "wb") as out:
                while True:
                    block = source.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
            found.add(name)
        if not found:
            raise DataError(f"{tarball} holds none of the expected files ({', '.join(sorted(wanted))})")
    for name in sorted(found):
        print(f"extracted {name} -> {text_dir / name}")


def count_lines(path: Path) -> int:
    """Number of lines of a text file (a last line without newline counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while True:
            block = handle.read(1 << 22)
            if not block:
                break
            count += block.count(b"\n")
            last = block[-1:]
    return count + (0 if last == b"\n" else 1)


def check_files(text_dir: Path) -> Dict[str, int]:
    """Check that every parallel file exists and that each en/de pair has equal, non-zero
    line counts; return the line count of each split."""
    if not text_dir.is_dir():
        raise DataError(f"data directory not found: {text_dir}")
    missing = [name for name in required_files() if not (text_dir / name).is_file()]
    if missing:
        raise DataError(
            f"missing file(s) in {text_dir}: {', '.join(missing)} "
            f"(expected Google's WMT'16 En-De layout: {', '.join(required_files())})"
        )
    for name in required_files():
        try:
            check_text(text_dir / name)
        except TextDecodeError as error:
            raise DataError(str(error)) from None
    counts = {}
    for split, prefix in SPLIT_PREFIXES.items():
        src_n = count_lines(text_dir / f"{prefix}.{SRC}")
        tgt_n = count_lines(text_dir / f"{prefix}.{TGT}")
        if src_n != tgt_n:
            raise DataError(
                f"line counts differ for {split}: {prefix}.{SRC} has {src_n} lines, "
                f"{prefix}.{TGT} has {tgt_n}"
            )
        if src_n == 0:
            raise DataError(f"{prefix}.{SRC} and {prefix}.{TGT} are empty")
        counts[split] = src_n
    for name in BPE_FILES:
        if not (text_dir / name).is_file():
            print(f"note: {name} not found in {text_dir}; it is not needed for binarising, only "
                  f"to apply the same BPE to new input", file=sys.stderr)
    return counts


def write_slice(text_dir: Path, out_dir: Path, max_lines: int) -> None:
    """Copy the first ``max_lines`` lines of every parallel file into ``out_dir``."""
    for name in required_files():
        with open(out_dir / name, "w", encoding="utf-8") as out:
            for index, line in enumerate(iter_lines(text_dir / name)):
                if index >= max_lines:
                    break
                out.write(line if line.endswith("\n") else line + "\n")


def preprocess_command(text_dir: Path, destdir: Path, workers: int, nwords: int) -> List[str]:
    """The fairseq-preprocess command line (joined dictionary, en -> de)."""
    return [
        console_script("fairseq-preprocess"),
        "--source-lang", SRC, "--target-lang", TGT,
        "--trainpref", str(text_dir / SPLIT_PREFIXES["train"]),
        "--validpref", str(text_dir / SPLIT_PREFIXES["valid"]),
        "--testpref", str(text_dir / SPLIT_PREFIXES["test"]),
        "--destdir", str(destdir),
        "--nwordssrc", str(nwords), "--nwordstgt", str(nwords),
        "--joined-dictionary", "--workers", str(workers),
    ]


def check_destdir(destdir: Path) -> None:
    """Refuse a destination that already holds dictionaries (fairseq-preprocess would stop)."""
    existing = [name for name in (f"dict.{SRC}.txt", f"dict.{TGT}.txt") if (destdir / name).exists()]
    if existing:
        raise DataError(
            f"{destdir} already holds {', '.join(existing)}; remove it or choose another --destdir"
        )


def next_commands(destdir: Path) -> str:
    """The commands that follow binarisation (as in examples/translation/README.md (section "Full-scale recipe"))."""
    data = shlex.quote(str(destdir))
    return f"""
Next steps (full recipe: examples/translation/README.md (section "Full-scale recipe")):

  # train Mega-base: 8 GPUs x --max-tokens 8192; with G GPUs use --update-freq $((8 / G))
  fairseq-train {data} --user-dir mega_fairseq --task translation -s en -t de \\
      --arch mega_wmt_en_de --share-all-embeddings --encoder-layers 6 --decoder-layers 6 \\
      --activation-fn silu --attention-activation-fn softmax --encoder-n-dim 16 --encoder-chunk-size -1 \\
      --normalization-type layernorm --truncation-length 0 \\
      --dropout 0.15 --attention-dropout 0.1 --hidden-dropout 0.1 --activation-dropout 0.1 \\
      --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 1.0 --weight-decay 0.05 \\
      --lr 1e-3 --lr-scheduler polynomial_decay --power 1 --warmup-updates 4000 \\
      --total-num-update 500000 --end-learning-rate 0.0 --max-update 500000 \\
      --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \\
      --max-tokens 8192 --batch-size 1024 --update-freq 1 \\
      --eval-bleu --eval-bleu-remove-bpe '@@ ' --eval-tokenized-bleu --eval-bleu-detok space \\
      --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \\
      --save-interval-updates 5000 --keep-interval-updates 1 --keep-last-epochs 5 \\
      --seed 1 --num-workers 0 --fp16 --log-format simple --log-interval 100 \\
      --save-dir checkpoints/mega_wmt16_en_de

  # translate newstest2014
  fairseq-generate {data} --user-dir mega_fairseq --gen-subset test -s en -t de \\
      --path checkpoints/mega_wmt16_en_de/checkpoint_best.pt \\
      --batch-size 300 --beam 5 --lenpen 0.5 --remove-bpe '@@ ' > gen.out

  # tokenized BLEU (compound splitting) and detokenized sacreBLEU (needs: pip install sacremoses)
  sacrebleu -t wmt14/full -l en-de --echo ref > newstest2014.raw.de
  python scripts/score_translation.py gen.out --sacrebleu-ref newstest2014.raw.de --json scores.json
"""


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text_dir", nargs="?", default=None,
                        help="folder with the extracted files (with --tarball: where to extract; "
                             f"default {DEFAULT_TEXT_DIR})")
    parser.add_argument("--tarball", default=None, help="wmt16_en_de.tar.gz to extract into TEXT_DIR first")
    parser.add_argument("--destdir", default=DEFAULT_DESTDIR, help=f"binarised output (default {DEFAULT_DESTDIR})")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="fairseq-preprocess worker processes")
    parser.add_argument("--nwords", type=int, default=DEFAULT_NWORDS,
                        help=f"joined dictionary size (--nwordssrc/--nwordstgt; default {DEFAULT_NWORDS}, "
                             "-1 keeps every type)")
    parser.add_argument("--max-lines", type=int, default=None,
                        help="use only the first N lines of every split (for a quick test on a slice)")
    parser.add_argument("--dry-run", action="store_true", help="check the files and print the command only")
    args = parser.parse_args(argv)
    if args.text_dir is None:
        if args.tarball is None:
            parser.error("give the data folder (TEXT_DIR) or --tarball wmt16_en_de.tar.gz")
        args.text_dir = DEFAULT_TEXT_DIR
    if args.max_lines is not None and args.max_lines < 1:
        parser.error("--max-lines must be a positive number")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def run(args: argparse.Namespace) -> None:
    """Extract (optionally), check, slice (optionally) and binarise."""
    text_dir, destdir = Path(args.text_dir), Path(args.destdir)
    if args.tarball:
        extract_tarball(Path(args.tarball), text_dir)
    counts = check_files(text_dir)
    print("lines per split: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    check_destdir(destdir)
    with tempfile.TemporaryDirectory(prefix="wmt16-slice-") as slice_dir:
        source_dir = text_dir
        if args.max_lines is not None:
            source_dir = Path(slice_dir)
            write_slice(text_dir, source_dir, args.max_lines)
            print(f"using the first {args.max_lines} lines of every split")
        command = preprocess_command(source_dir, destdir, args.workers, args.nwords)
        print("+ " + " ".join(shlex.quote(part) for part in command), flush=True)
        if args.dry_run:
            if args.max_lines is not None:
                print("(dry run: with --max-lines the command reads a temporary slice of the files)")
            return
        result = subprocess.run(command)
        if result.returncode != 0:
            raise DataError(f"fairseq-preprocess failed with exit status {result.returncode}")
    print(f"binarised data written to {destdir}")
    print(next_commands(destdir))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: exit status 1 with one clear message on a data problem."""
    args = parse_args(argv)
    try:
        run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

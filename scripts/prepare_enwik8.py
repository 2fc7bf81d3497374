#!/usr/bin/env python
"""Prepare enwik8 (or any byte file) for byte-level language modelling with fairseq.

The standard split of the Hutter-prize file: the first 90M bytes for training, the next
5M for validation, the last 5M for test.  Every byte becomes one token (its decimal value);
each input line becomes one output line (the newline byte is kept as token ``10`` at the
end of the line), so ``fairseq-preprocess --only-source`` sees exactly 256 possible symbols
and bits-per-character = loss in base 2 per token.

Usage:  python scripts/prepare_enwik8.py --input enwik8 --out-dir data/enwik8
        (smaller files: --train-bytes/--valid-bytes, e.g. for a quick test)

The three files appear together once all are written; a failure leaves ``--out-dir`` as
it was.
"""

import argparse
import os
import sys

from tqdm import tqdm

from atomic_output import AtomicOutputs

MB = 1_000_000


def byte_lines(data: bytes):
    """Yield each line (newline included) of ``data`` as space-separated byte values."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        yield " ".join(str(b) for b in data[start:end])
        start = end


def split(data: bytes, train_bytes: int, valid_bytes: int):
    if train_bytes < 1 or valid_bytes < 1:
        raise ValueError(f"--train-bytes ({train_bytes}) and --valid-bytes ({valid_bytes}) must be "
                         "positive: an empty split cannot be binarised for training")
    if train_bytes + valid_bytes >= len(data):
        raise ValueError(
            f"--train-bytes {train_bytes} + --valid-bytes {valid_bytes} leave no test data "
            f"in a file of {len(data)} bytes"
        )
    return {
        "train": data[:train_bytes],
        "valid": data[train_bytes : train_bytes + valid_bytes],
        "test": data[train_bytes + valid_bytes :],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="the enwik8 file (unzipped)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--train-bytes", type=int, default=90 * MB)
    parser.add_argument("--valid-bytes", type=int, default=5 * MB)
    args = parser.parse_args(argv)
    with open(args.input, "rb") as handle:
        data = handle.read()
    try:
        parts = split(data, args.train_bytes, args.valid_bytes)
    except ValueError as error:
        sys.exit(f"error: {error}")
    with AtomicOutputs() as outputs:
        for name, part in parts.items():
            path = os.path.join(args.out_dir, f"{name}.txt")
            with open(outputs.path(path), "w", encoding="ascii") as out:
                for line in tqdm(byte_lines(part), desc=name, unit=" lines", mininterval=2):
                    out.write(line + "\n")
    for name, part in parts.items():
        print(f"{name}: {len(part)} bytes -> {os.path.join(args.out_dir, f'{name}.txt')}")


if __name__ == "__main__":
    main()

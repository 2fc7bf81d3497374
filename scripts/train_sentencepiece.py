#!/usr/bin/env python
"""Learn a joint sentencepiece model and apply it, line by line, for fairseq.

Subcommands:

  learn   train one model on the text of several files (e.g. ``train.en train.de``)::

              python scripts/train_sentencepiece.py learn --inputs train.en train.de \\
                  --model-prefix spm/spm --vocab-size 8000

          writes ``spm/spm.model`` and ``spm/spm.vocab``.  Training runs on one thread with
          a fixed random seed (``--seed``), so the same inputs give the same model.

  encode  write each input line as space-separated pieces (``▁Hallo ▁Welt``)::

              python scripts/train_sentencepiece.py encode --model spm/spm.model \\
                  --inputs train.en train.de --outputs train.spm.en train.spm.de

          This is the input ``fairseq-preprocess`` expects; after generation fairseq's
          ``--post-process sentencepiece`` (or ``--eval-bleu-remove-bpe sentencepiece``) joins the
          pieces back into text.  Lines are never dropped or merged: an empty input line gives
          an empty output line, lines are split on ``\\n`` only, and the line counts of every
          input/output pair are checked.

  decode  the reverse of ``encode`` (pieces back to text), mostly for checking.

Uses the ``sentencepiece`` Python package (``SentencePieceTrainer.train``); the ``spm_train``
command-line tool is not needed.

Inputs must be UTF-8: a file that is not stops the command with its name, line and byte
offset (sentencepiece itself would train on it silently).  ``encode`` and ``decode`` write
all-or-nothing: the ``--outputs`` files appear only when every pair succeeded.
"""

import argparse
import os
import sys
from typing import Iterator, List, Optional, Sequence

import sentencepiece

from atomic_output import AtomicOutputs
from text_input import check_text, iter_lines

ENCODE_BATCH_LINES = 10000


def read_lines(path: str) -> Iterator[str]:
    """Lines of a UTF-8 file without their terminator, split on ``\\n`` only (a Unicode line
    separator inside a line stays inside it); a final line without ``\\n`` counts too."""
    for line in iter_lines(path, newline="\n"):
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        yield line


def count_lines(path: str) -> int:
    """Number of lines as ``read_lines`` sees them."""
    return sum(1 for _ in read_lines(path))


def learn(inputs: Sequence[str], model_prefix: str, vocab_size: int, model_type: str = "unigram",
          character_coverage: float = 1.0, seed: int = 1, input_sentence_size: int = 0,
          normalization_rule_name: str = "nmt_nfkc", hard_vocab_limit: bool = True,
          verbose: bool = False) -> str:
    """Train a joint model on all ``inputs``; returns the path of the ``.model`` file.
    Every input is checked to be UTF-8 first (sentencepiece would train on it silently)."""
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file {path} does not exist")
        check_text(path)
    directory = os.path.dirname(model_prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    sentencepiece.set_random_generator_seed(seed)
    sentencepiece.SentencePieceTrainer.train(
        input=list(inputs),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        normalization_rule_name=normalization_rule_name,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=input_sentence_size > 0,
        hard_vocab_limit=hard_vocab_limit,
        num_threads=1,
        minloglevel=0 if verbose else 1,
    )
    return model_prefix + ".model"


def load_model(model_path: str) -> sentencepiece.SentencePieceProcessor:
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"sentencepiece model {model_path} does not exist")
    return sentencepiece.SentencePieceProcessor(model_file=model_path)


def encode_lines(processor: sentencepiece.SentencePieceProcessor, lines: List[str]) -> List[str]:
    """Each line as its pieces joined by single spaces ('' for an empty line)."""
    return [" ".join(pieces) for pieces in processor.encode(lines, out_type=str)]


def decode_lines(processor: sentencepiece.SentencePieceProcessor, lines: List[str]) -> List[str]:
    """Each line of space-separated pieces back as text."""
    return [processor.decode_pieces(line.split()) if line.strip() else "" for line in lines]


def batched(lines: Iterator[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def transform_file(processor, transform, input_path: str, output_path: str,
                   write_path: Optional[str] = None) -> int:
    """Apply ``transform`` (encode_lines or decode_lines) to every line of ``input_path``,
    writing ``output_path`` (or ``write_path``, a temporary file standing for it); returns
    the line count after checking both files agree."""
    if write_path is None:
        directory = os.path.dirname(output_path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        write_path = output_path
    written = 0
    with open(write_path, "w", encoding="utf-8", newline="\n") as out:
        for batch in batched(read_lines(input_path), ENCODE_BATCH_LINES):
            results = transform(processor, batch)
            if len(results) != len(batch):
                raise RuntimeError(f"{input_path}: got {len(results)} results for {len(batch)} lines")
            for line in results:
                if "\n" in line or "\r" in line:  # fairseq would see two lines
                    raise RuntimeError(f"{input_path}: a result contains a line break: {line!r}")
                out.write(line + "\n")
            written += len(results)
    expected, actual = count_lines(input_path), count_lines(write_path)
    if not expected == written == actual:
        raise RuntimeError(f"line count mismatch: {input_path} has {expected} lines, "
                           f"{output_path} has {actual} ({written} written)")
    return actual


def transform_files(model: str, inputs: Sequence[str], outputs: Sequence[str], transform) -> List[int]:
    """Apply ``transform`` to every input/output pair with one loaded model; the outputs
    are replaced together once every pair succeeded."""
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} --inputs but {len(outputs)} --outputs: give one output per input")
    if any(os.path.abspath(i) == os.path.abspath(o) for i, o in zip(inputs, outputs)):
        raise ValueError("an output file is also an input file")
    processor = load_model(model)
    with AtomicOutputs() as atomic:
        return [transform_file(processor, transform, i, o, str(atomic.path(o)))
                for i, o in zip(inputs, outputs)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    learn_parser = commands.add_parser("learn", help="train a joint model on several files")
    learn_parser.add_argument("--inputs", nargs="+", required=True, help="text files, one sentence per line")
    learn_parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    learn_parser.add_argument("--vocab-size", type=int, default=8000, help="pieces in the model (default 8000)")
    learn_parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    learn_parser.add_argument("--character-coverage", type=float, default=1.0,
                              help="share of characters the model covers (default 1.0: all)")
    learn_parser.add_argument("--seed", type=int, default=1, help="random generator seed (default 1)")
    learn_parser.add_argument("--input-sentence-size", type=int, default=0,
                              help="train on a random sample of this many lines (default 0: all)")
    learn_parser.add_argument("--normalization-rule-name", default="nmt_nfkc",
                              help="sentencepiece normalisation (default nmt_nfkc; 'identity' for none)")
    learn_parser.add_argument("--soft-vocab-limit", action="store_true",
                              help="allow fewer pieces than --vocab-size when the text is too small")
    learn_parser.add_argument("--verbose", action="store_true", help="show sentencepiece's training log")

    for name, help_text in (("encode", "text -> space-separated pieces"),
                            ("decode", "space-separated pieces -> text")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--model", required=True, help="the .model file written by learn")
        sub.add_argument("--inputs", nargs="+", required=True)
        sub.add_argument("--outputs", nargs="+", required=True, help="one per input, same order")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "learn":
            model = learn(args.inputs, args.model_prefix, args.vocab_size, args.model_type,
                          args.character_coverage, args.seed, args.input_sentence_size,
                          args.normalization_rule_name, not args.soft_vocab_limit, args.verbose)
            print(f"wrote {model} ({load_model(model).get_piece_size()} pieces)")
        else:
            transform = encode_lines if args.command == "encode" else decode_lines
            counts = transform_files(args.model, args.inputs, args.outputs, transform)
            for output, count in zip(args.outputs, counts):
                print(f"wrote {output} ({count} lines)")
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

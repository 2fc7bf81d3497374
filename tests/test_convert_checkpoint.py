"""``scripts/convert_checkpoint.py --source-format original``: the original research code's
checkpoints (tests/fixtures/original_mega, with the outputs the original computed) become
fairseq checkpoint folders that the safe loader reads, that reproduce the original's
outputs, and that fairseq's own console scripts evaluate: ``fairseq-eval-lm`` (LM),
``fairseq-generate --score-reference`` (translation) and ``fairseq-validate`` (LRA), each
compared with the same numbers computed directly from the model."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, console_script, run_cli

FIXTURES = REPO / "tests" / "fixtures" / "original_mega"
SCRIPT = REPO / "scripts" / "convert_checkpoint.py"
TOLERANCE = dict(atol=1e-5, rtol=1e-5)
ENV = {"OMP_NUM_THREADS": "1"}
PAD, EOS = 1, 2


def convert(fixture: str, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--source-format", "original",
                           str(FIXTURES / fixture / "checkpoint.pt"), str(out), *extra],
                          capture_output=True, text=True, timeout=300, env=dict(_environ(), **ENV))


def _environ():
    import os
    return dict(os.environ)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{fixture: output folder} for the three original checkpoints."""
    root = tmp_path_factory.mktemp("converted")
    folders = {}
    for name in ("lm_a", "mt_a", "lra_a"):
        result = convert(name, root / name)
        assert result.returncode == 0, result.stderr
        folders[name] = root / name
    return folders


def _load(folder: Path):
    import mega_fairseq  # noqa: F401
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(folder / "model.pt")])
    return models[0].eval(), task


def _io(name: str):
    return torch.load(FIXTURES / name / "io.pt", map_location="cpu", weights_only=True)


def test_folders_hold_a_safe_checkpoint_and_the_dictionaries(converted):
    assert sorted(p.name for p in converted["lm_a"].iterdir()) == ["dict.txt", "model.pt"]
    assert sorted(p.name for p in converted["mt_a"].iterdir()) == ["dict.src.txt", "dict.tgt.txt", "model.pt"]
    assert {str(p.relative_to(converted["lra_a"])) for p in converted["lra_a"].rglob("*.txt")} == {
        "input0/dict.txt", "label/dict.txt"}
    for folder in converted.values():
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)  # no allow-list
        assert state["cfg"]["model"]["_name"] in ("mega_lm", "mega", "mega_encoder")
        assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    # the original's LRA dictionary appends <CLS>: the written one keeps it
    assert (converted["lra_a"] / "input0" / "dict.txt").read_text().splitlines()[-1] == "<CLS> 1"


def test_converter_logs_the_defects_it_does_not_reproduce(tmp_path):
    result = convert("mt_a", tmp_path / "mt")
    assert result.returncode == 0, result.stderr
    assert "incremental decoding ignores --truncation-length 1024" in result.stderr
    assert "cross-attention source positions" in result.stderr


def test_loaded_checkpoints_reproduce_the_original_outputs(converted):
    lm, _ = _load(converted["lm_a"])
    io = _io("lm_a")
    tokens = io["inputs"]["src_tokens"]
    real = tokens.ne(PAD)
    with torch.no_grad():
        logits = lm(tokens)[0]
    torch.testing.assert_close(logits[real], io["outputs"]["logits"][real], **TOLERANCE)

    mt, _ = _load(converted["mt_a"])
    io = _io("mt_a")
    inputs = io["inputs"]
    unpadded = int(inputs["src_tokens"].eq(PAD).any(dim=1).logical_not().nonzero()[0])
    real = inputs["prev_output_tokens"][unpadded].ne(PAD)
    with torch.no_grad():
        logits = mt(inputs["src_tokens"], inputs["src_lengths"], inputs["prev_output_tokens"])[0]
    torch.testing.assert_close(logits[unpadded][real], io["outputs"]["logits"][unpadded][real], **TOLERANCE)

    lra, task = _load(converted["lra_a"])
    io = _io("lra_a")
    from mega_fairseq.tasks.lra_common import classification_head_name
    with torch.no_grad():
        logits = lra(io["inputs"]["src_tokens"], io["inputs"]["src_lengths"],
                     classification_head_name=classification_head_name(task.cfg))[0]
    torch.testing.assert_close(logits, io["outputs"]["logits"], **TOLERANCE)


# ------------------------------------------------------------------ console scripts
def _words(dictionary_file: Path, count: int):
    return [line.split()[0] for line in dictionary_file.read_text().splitlines()[:count]]


def _lines(words, number: int, length: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(words), (number, length), generator=generator)
    lengths = torch.randint(3, length + 1, (number,), generator=generator)
    return [" ".join(words[i] for i in row[: int(n)]) for row, n in zip(rows.tolist(), lengths)]


def _preprocess(*options):
    run_cli([console_script("fairseq-preprocess"), "--workers", "1", *options], env=ENV)


def test_fairseq_eval_lm_scores_the_converted_lm(converted, tmp_path):
    folder = converted["lm_a"]
    lines = _lines(_words(folder / "dict.txt", 40), 6, 20, seed=3)
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    _preprocess("--only-source", "--srcdict", folder / "dict.txt", "--testpref", tmp_path / "test.txt",
                "--destdir", tmp_path / "bin")
    result = run_cli([console_script("fairseq-eval-lm"), tmp_path / "bin", "--path", folder / "model.pt",
                      "--user-dir", REPO / "mega_fairseq", "--gen-subset", "test", "--cpu",
                      "--sample-break-mode", "eos", "--tokens-per-sample", "64", "--batch-size", "4"],
                     env=ENV)
    reported = float(re.search(r"Loss \(base 2\): ([0-9.]+)", result.stdout + result.stderr).group(1))

    model, task = _load(folder)
    total, count = 0.0, 0
    with torch.no_grad():
        for line in lines:
            ids = task.dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long()
            source = torch.cat([torch.tensor([EOS]), ids[:-1]]).unsqueeze(0)
            lprobs = F.log_softmax(model(source)[0].float(), dim=-1)[0]
            total -= lprobs.gather(-1, ids.unsqueeze(-1)).sum().item()
            count += ids.numel()
    assert reported == pytest.approx(total / count / math.log(2), abs=1e-3)


def test_fairseq_generate_scores_the_reference_with_the_converted_translation_model(converted, tmp_path):
    folder = converted["mt_a"]
    words = _words(folder / "dict.src.txt", 40)
    sources, targets = _lines(words, 5, 8, seed=4), _lines(words, 5, 8, seed=5)
    (tmp_path / "test.src").write_text("\n".join(sources) + "\n")
    (tmp_path / "test.tgt").write_text("\n".join(targets) + "\n")
    _preprocess("--source-lang", "src", "--target-lang", "tgt", "--srcdict", folder / "dict.src.txt",
                "--tgtdict", folder / "dict.tgt.txt", "--testpref", tmp_path / "test", "--destdir", tmp_path / "bin")
    result = run_cli([console_script("fairseq-generate"), tmp_path / "bin", "--path", folder / "model.pt",
                      "--user-dir", REPO / "mega_fairseq", "--gen-subset", "test", "--cpu",
                      "--score-reference", "--batch-size", "5", "--source-lang", "src", "--target-lang", "tgt"],
                     env=ENV)
    positional = {int(m.group(1)): [float(v) for v in m.group(2).split()]
                  for m in re.finditer(r"^P-(\d+)\t(.*)$", result.stdout, re.M)}
    assert sorted(positional) == list(range(5))

    model, task = _load(folder)
    with torch.no_grad():
        for index, (source, target) in enumerate(zip(sources, targets)):
            src = task.src_dict.encode_line(source, add_if_not_exist=False).long().unsqueeze(0)
            tgt = task.tgt_dict.encode_line(target, add_if_not_exist=False).long()
            prev = torch.cat([torch.tensor([EOS]), tgt[:-1]]).unsqueeze(0)
            logits = model(src, torch.tensor([src.size(1)]), prev)[0]
            direct = F.log_softmax(logits.float(), dim=-1)[0].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            assert positional[index] == pytest.approx((direct / math.log(2)).tolist(), abs=2e-4)


def test_fairseq_interactive_translates_with_the_converted_folder(converted):
    """The converted folder is itself the data folder fairseq-interactive needs (its
    dict.src.txt / dict.tgt.txt); greedy output equals a direct greedy decoding under
    fairseq's rules (no </s> first, at most --max-len-b 6 tokens, no <pad>/<unk>)."""
    folder = converted["mt_a"]
    source = " ".join(_words(folder / "dict.src.txt", 12)[3:9])
    result = run_cli([console_script("fairseq-interactive"), folder, "--path", folder / "model.pt",
                      "--user-dir", REPO / "mega_fairseq", "--source-lang", "src", "--target-lang", "tgt",
                      "--beam", "1", "--max-len-b", "6", "--cpu"], input_text=source + "\n", env=ENV)
    hypothesis = re.search(r"^H-0\t\S+\t(.*)$", result.stdout, re.M).group(1)

    model, task = _load(folder)
    src = task.src_dict.encode_line(source, add_if_not_exist=False).long().unsqueeze(0)
    prev = torch.tensor([[EOS]])
    with torch.no_grad():
        for position in range(6):
            step = model(src, torch.tensor([src.size(1)]), prev)[0][:, -1]
            step[:, task.tgt_dict.pad()] = -math.inf
            step[:, task.tgt_dict.unk()] = -math.inf
            if position == 0:
                step[:, EOS] = -math.inf
            token = int(step.argmax(-1))
            if token == EOS:
                break
            prev = torch.cat([prev, torch.tensor([[token]])], dim=1)
    assert hypothesis == task.tgt_dict.string(prev[0, 1:])


def test_fairseq_validate_evaluates_the_converted_lra_classifier(converted, tmp_path):
    folder = converted["lra_a"]
    inputs = _lines(_words(folder / "input0" / "dict.txt", 40), 8, 12, seed=6)
    labels = [str(i % 10) for i in range(8)]
    data = tmp_path / "bin"
    for key, lines, dictionary in (("input0", inputs, folder / "input0" / "dict.txt"),
                                   ("label", labels, folder / "label" / "dict.txt")):
        (tmp_path / f"test.{key}").write_text("\n".join(lines) + "\n")
        _preprocess("--only-source", "--srcdict", dictionary, "--testpref", tmp_path / f"test.{key}",
                    "--destdir", data / key)
    result = run_cli([console_script("fairseq-validate"), data, "--path", folder / "model.pt",
                      "--user-dir", REPO / "mega_fairseq", "--task", "lra-text", "--num-classes", "10",
                      "--criterion", "lra_cross_entropy", "--valid-subset", "test", "--cpu",
                      "--batch-size", "8"], env=ENV)
    output = result.stdout + result.stderr
    reported_accuracy = float(re.search(r"accuracy ([0-9.]+)", output).group(1))

    model, task = _load(folder)
    from mega_fairseq.tasks.lra_common import classification_head_name
    correct = 0
    with torch.no_grad():
        for line, label in zip(inputs, labels):
            tokens = task.source_dictionary.encode_line(line, add_if_not_exist=False).long().unsqueeze(0)
            logits = model(tokens, classification_head_name=classification_head_name(task.cfg))[0]
            correct += int(logits.argmax(-1).item() == int(label))
    assert reported_accuracy == pytest.approx(100.0 * correct / len(inputs), abs=0.01)


# ------------------------------------------------------------------ bad input
def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    result = subprocess.run([sys.executable, str(SCRIPT), "--source-format", "original", str(junk),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "error: INPUT" in result.stderr and "is not a PyTorch checkpoint" in result.stderr
    assert not (tmp_path / "out").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = convert("lm_a", busy)
    assert result.returncode == 1 and "exists and is not an empty folder" in result.stderr
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    result = convert("lm_a", tmp_path / "nodict", "--data", str(tmp_path / "empty"))
    assert result.returncode == 1 and "dict.txt" in result.stderr, result.stderr
    assert not (tmp_path / "nodict").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]

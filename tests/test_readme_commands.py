"""Every command README.md shows in a ``bash`` block is tested as written, with its default
options, from the repository root.

Commands that would write into the checkout's own files run in a folder laid out like
the repository root (``mega_fairseq``, ``scripts`` and ``examples`` linked into it), so
relative paths and working directories behave exactly as for a user; the two set-up
commands run as they are. Every README command must appear in ``COVERAGE`` with the test
that runs it, so a command added to the README without a test fails here."""

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, REPO
from mega_fairseq.evaluation.count_baselines import unigram_perplexity

README = REPO / "README.md"

# README command (whitespace normalised) -> the test (file::function) that runs it as written
COVERAGE = {
    "bash scripts/main_job.sh": "test_readme_commands.py::test_main_job",
    "bash scripts/run_tests.sh": ".ci/run (CI runs exactly this command on a clean clone)",
    "bash scripts/check_accelerator.sh":
        "test_check_accelerator.py::test_check_script_without_cuda_stops_at_once",
    "bash scripts/check_accelerator.sh --dry-run": "test_check_accelerator.py::test_dry_run_end_to_end",
    "pip install -e \".[benchmark]\"":
        "test_readme_commands.py::test_benchmark_extra_is_installed_with_the_test_extra",
    "python scripts/benchmark.py --quick": "test_readme_commands.py::test_quick_benchmark_as_written",
    # the full sizes take about 50 minutes: CI runs the same sections at the --quick sizes
    # and checks here that these options are accepted as written
    "python scripts/benchmark.py": "test_readme_commands.py::test_full_benchmark_options_parse",
    "python scripts/benchmark.py --sections layer,hf --repeats 5 --out-dir work-dirs/bench":
        "test_readme_commands.py::test_full_benchmark_options_parse",
    "fairseq-train bin --user-dir mega_fairseq --task segment_language_modeling --arch megalodon_lm_tiny "
    "--tokens-per-sample 128 --decoder-chunk-size 32 --optimizer adam --lr 3e-3 --batch-size 16 "
    "--max-update 100 --cpu --save-dir checkpoints/megalodon":
        "test_readme_megalodon.py::test_megalodon_segment_training_as_written",
    "python scripts/eval_lm_stateful.py bin --path checkpoints/megalodon/checkpoint_best.pt --block-size 128 --cpu":
        "test_readme_megalodon.py::test_megalodon_segment_training_as_written",
    **{f"python scripts/convert_checkpoint.py --source-format original "
       f"tests/fixtures/original_mega/{name}/checkpoint.pt converted/{name}":
       "test_readme_commands.py::test_pretrained_weights_conversions" for name in ("lm_a", "mt_a", "lra_a")},
}
LM_BLOCK_TEST = "test_readme_commands.py::test_language_modelling_in_brief"


def readme_blocks(text: str):
    """The ``bash`` code blocks of ``text`` as (heading, [command]) with continuation lines
    joined and trailing comments removed; heading: the section title above the block."""
    blocks, heading, block = [], "", None
    for line in text.splitlines():
        if block is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```bash":
                block = []
        elif line.strip() == "```":
            joined = "\n".join(block).replace("\\\n", " ")
            commands = [re.sub(r"(^|\s+)#\s.*$", "", c).strip() for c in joined.splitlines()]
            blocks.append((heading, [c for c in commands if c]))
            block = None
        else:
            block.append(line)
    return blocks


def normalised(command: str) -> str:
    return " ".join(command.split())


def lm_block():
    blocks = [commands for heading, commands in readme_blocks(README.read_text())
              if heading == "Language modelling in brief"]
    assert len(blocks) == 1, "README.md has no (or more than one) 'Language modelling in brief' block"
    return blocks[0]


def _environment() -> dict:
    """The environment a user of this checkout's venv has: its console scripts and python first."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MEGA_FAIRSEQ_TRACEBACK", None)
    return env


def run_as_written(command: str, cwd: Path, timeout: int = 900, input_text=None):
    """``command`` through bash in ``cwd``; fails the test with its output on a non-zero exit."""
    result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=_environment(), input=input_text)
    assert result.returncode == 0, (
        f"README command failed ({result.returncode}): {command}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")
    return result


def folder_with_lm_text(root: Path, shakespeare_lm_data: Path) -> Path:
    """:func:`repository_like_folder` holding the word-tokenised ``train/valid/test.txt``
    that the "Language modelling in brief" block starts from."""
    root = repository_like_folder(root)
    for split in ("train", "valid", "test"):
        shutil.copy(shakespeare_lm_data.parent / "text" / f"{split}.txt", root / f"{split}.txt")
    return root


def repository_like_folder(root: Path) -> Path:
    """A folder where the README's relative paths resolve as in the repository root."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("mega_fairseq", "scripts", "examples"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    return root


# ------------------------------------------------------------------ the table itself
def test_every_readme_command_is_tested():
    commands = [normalised(c) for heading, block in readme_blocks(README.read_text())
                if heading != "Language modelling in brief" for c in block]
    assert commands, "no bash blocks found in README.md"
    untested = sorted(set(commands) - set(COVERAGE))
    assert not untested, f"README commands without a test (add one and list it in COVERAGE): {untested}"
    stale = sorted(set(COVERAGE) - set(commands))
    assert not stale, f"COVERAGE lists commands that the README no longer shows: {stale}"
    # every test named exists
    for test in {*COVERAGE.values(), LM_BLOCK_TEST}:
        if "::" not in test:
            continue
        file, function = test.split(" ")[0].split("::")
        assert re.search(rf"^def {function}\(", (REPO / "tests" / file).read_text(), re.M), test


def test_readme_blocks_parse_continuations_and_comments():
    text = "# Title\n```bash\nfoo a \\\n    b   # comment\n\n# a note\nbar  # x\n```\n"
    assert readme_blocks(text) == [("Title", ["foo a      b", "bar"])]


# ------------------------------------------------------------------ the commands
@pytest.mark.slow
def test_language_modelling_in_brief(tmp_path, shakespeare_lm_data):
    """The README's language-modelling block, every line as written, in order."""
    root = folder_with_lm_text(tmp_path / "repo", shakespeare_lm_data)
    preprocess, train, evaluate, stateful, interactive = lm_block()

    run_as_written(preprocess, root)
    assert (root / "bin" / "dict.txt").is_file() and (root / "bin" / "test.bin").is_file()

    run_as_written(train, root)
    assert (root / "checkpoints" / "checkpoint_best.pt").is_file()
    assert (root / "checkpoints" / "checkpoint_last.pt").is_file()

    # well below a context-free unigram model of the same split (about 344 here)
    baseline = unigram_perplexity(root / "bin", "test")
    result = run_as_written(evaluate, root)
    perplexity = float(re.search(r"Perplexity: ([0-9.]+)", result.stdout + result.stderr).group(1))
    print(f"README LM block: test perplexity {perplexity:.1f}, unigram {baseline:.1f}")
    assert perplexity < 0.8 * baseline, (perplexity, baseline)

    # carried state over 128-token blocks: at least as good as independent blocks of 128
    result = run_as_written(stateful, root)
    scores = dict(re.findall(r"(independent|stateful): \d+ tokens \| loss \(base 2\) ([0-9.]+)",
                             result.stdout + result.stderr))
    assert "stateful" in scores, result.stdout[-3000:]
    assert 2 ** float(scores["stateful"]) < 0.8 * baseline

    # the prompt arrives through the pipe and is continued
    result = run_as_written(interactive, root)
    hypotheses = re.findall(r"^H-0\t\S+\t(.*)$", result.stdout, re.M)
    assert len(hypotheses) == 1 and hypotheses[0].startswith("To be , or not to be"), result.stdout[-2000:]
    assert len(hypotheses[0].split()) > len("To be , or not to be".split())


@pytest.mark.slow
def test_quick_benchmark_as_written(tmp_path):
    """``python scripts/benchmark.py --quick`` from the repository root, default output folder
    (``work-dirs/benchmark``, relative): every section runs, checks its own correctness (the
    EMA and Hugging Face comparisons raise when outputs differ) and writes its results.
    Timings are never asserted."""
    root = repository_like_folder(tmp_path / "repo")
    completed = run_as_written("python scripts/benchmark.py --quick", root)
    out = root / "work-dirs" / "benchmark"
    report = json.loads((out / "benchmark.json").read_text())
    assert report["quick"] is True and report["repeats"] == 1
    assert report["machine"]["cpu_fp32_matmul_gflops_2048"] > 0  # the matmul rate recorded with every run
    assert set(report["sections"]) == {"layer", "ema", "hf", "generation", "training", "lm"}
    for name, section in report["sections"].items():
        assert section["rows"], f"section {name} produced no rows"
        assert section["targets"], f"section {name} reported no targets"
        for target in section["targets"]:
            assert target["name"] and (target["informative"] or target["bar"][:2] in (">=", "<="))
    layer_rows = report["sections"]["layer"]["rows"]
    assert {row["model"] for row in layer_rows} >= {"transformer", "mega (full)"}
    assert all(row["median_s"] > 0 and row["parameters"] > 0 for row in layer_rows)
    for row in report["sections"]["ema"]["rows"]:
        assert row["max_relative_difference"] < 1e-4
    training_rows = report["sections"]["training"]["rows"]
    # each LM comparison trains megalodon_lm too (mega, megalodon, transformer), translation two models
    models = {"LM @ 64, width 64": 3, "LM @ 64, mega_lm_tiny": 3, "LM @ 128, mega_lm_tiny": 3,
              "translation, width 64": 2}
    assert [row["comparison"] for row in training_rows] == [
        label for label, count in models.items() for _ in range(count)]
    for label in models:
        mega, *others = [row for row in training_rows if row["comparison"] == label]
        assert mega["arch"].startswith("--arch mega ") or mega["arch"].startswith("--arch mega_lm")
        assert others[-1]["arch"].startswith("--arch transformer")
        if len(others) == 2:
            assert others[0]["arch"].startswith("--arch megalodon_lm")
        for other in others:
            assert abs(other["parameters_used"] - mega["parameters_used"]) / mega["parameters_used"] < 0.01
            assert mega["words_per_batch"] == other["words_per_batch"]  # same batches
            assert other["wps_median"] > 0
        assert mega["wps_median"] > 0
    for row in report["sections"]["hf"]["rows"]:
        assert row["max_relative_difference"] <= 1e-5
    lm_rows = report["sections"]["lm"]["rows"]
    assert len(lm_rows) == 8 and all(0 < row["efficiency"] < 1 and row["matmul_gflops"] > 0 for row in lm_rows)
    assert "## targets" in (out / "benchmark.md").read_text()
    assert (out / "benchmark.png").stat().st_size > 10_000
    assert "== targets" in completed.stdout


def test_pretrained_weights_conversions(tmp_path):
    """The README's conversions of the original code's checkpoints, as written: each
    writes a folder whose model.pt the safe loader reads and whose outputs are the
    original's (the LM's logits at real positions, within 1e-5)."""
    import torch

    root = repository_like_folder(tmp_path / "repo")
    (root / "tests").symlink_to(REPO / "tests", target_is_directory=True)
    blocks = [commands for heading, commands in readme_blocks(README.read_text())
              if heading == "Pretrained weights"]
    assert len(blocks) == 1 and len(blocks[0]) == 3, blocks
    for command in blocks[0]:
        run_as_written(command, root, timeout=300)
    for name in ("lm_a", "mt_a", "lra_a"):
        state = torch.load(root / "converted" / name / "model.pt", map_location="cpu", weights_only=True)
        assert state["model"], name

    import mega_fairseq  # noqa: F401
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(root / "converted" / "lm_a" / "model.pt")])
    io = torch.load(REPO / "tests" / "fixtures" / "original_mega" / "lm_a" / "io.pt", weights_only=True)
    tokens = io["inputs"]["src_tokens"]
    with torch.no_grad():
        logits = models[0].eval()(tokens)[0]
    real = tokens.ne(1)
    torch.testing.assert_close(logits[real], io["outputs"]["logits"][real], atol=1e-5, rtol=1e-5)


def test_full_benchmark_options_parse():
    """The README's full-size benchmark commands (50 minutes and more) are accepted as
    written; they run the code the quick benchmark above runs, at larger sizes."""
    import benchmark  # scripts/ is on sys.path (conftest)

    for command in ("python scripts/benchmark.py",
                    "python scripts/benchmark.py --sections layer,hf --repeats 5 --out-dir work-dirs/bench"):
        assert command in README.read_text()
        options = benchmark.parse_args(command.split()[2:])
        assert options.quick is False
    assert options.sections == ["layer", "hf"] and options.repeats == 5
    assert options.out_dir == Path("work-dirs/bench").resolve()
    # the Megalodon section's rerun of the two sections with Megalodon rows
    command = "python scripts/benchmark.py --sections layer,training"
    assert f"`{command}`" in README.read_text()
    assert benchmark.parse_args(command.split()[2:]).sections == ["layer", "training"]


def test_benchmark_extra_is_installed_with_the_test_extra():
    """``pip install -e ".[benchmark]"`` installs nothing that the test set-up
    (scripts/setup_env.sh installs ``.[test]``) lacks, and it is installed here."""
    import importlib.metadata

    requirements = importlib.metadata.requires("mega-fairseq") or []
    extras = {}
    for requirement in requirements:
        match = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if match:
            extras.setdefault(match.group(1), set()).add(requirement.split(";")[0].strip())
    assert extras.get("benchmark") and extras["benchmark"] <= extras["test"], extras
    assert "test" in (REPO / "scripts" / "setup_env.sh").read_text()
    import transformers

    assert transformers.__version__ == "4.40.2"


@pytest.mark.slow
def test_main_job():
    """``bash scripts/main_job.sh`` exactly as written, from the repository root. It writes
    to its documented folder ``work-dirs/main_job`` (ignored by git) and ends by checking
    the test perplexity against a unigram model of the same data."""
    result = run_as_written("bash scripts/main_job.sh", REPO, timeout=1200)
    match = re.search(r"test perplexity ([0-9.]+) vs ([0-9.]+) for a unigram model", result.stdout)
    assert match, result.stdout[-3000:]
    perplexity, unigram = map(float, match.groups())
    assert math.isfinite(perplexity) and perplexity < 0.8 * unigram

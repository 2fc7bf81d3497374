"""scripts/benchmark.py's command line refuses bad options clearly. The quick benchmark
itself runs as the README writes it in tests/test_readme_commands.py."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_unknown_section_is_refused_with_the_choices(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--sections", "layer,speed",
         "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert "unknown section(s) ['speed']" in completed.stderr
    assert "layer, ema, hf, generation, training, lm" in completed.stderr


def test_bad_repeats_is_refused(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--repeats", "0", "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2 and "--repeats must be at least 1" in completed.stderr


def test_bad_training_only_pattern_is_refused(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--sections", "training", "--training-only", "(",
         "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2 and "--training-only '(' is not a regular expression" in completed.stderr


def test_training_only_is_parsed():
    import benchmark  # scripts/ is on sys.path (conftest)

    assert benchmark.parse_args([]).training_only is None
    assert benchmark.parse_args(["--training-only", "width 256|mega_lm_tiny"]).training_only == "width 256|mega_lm_tiny"

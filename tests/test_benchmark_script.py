"""scripts/benchmark.py in its --quick mode, through its command line, so that it cannot
rot. Timings are never asserted: only that every section ran, checked its own
correctness (the EMA and Hugging Face comparisons raise when outputs differ) and wrote
its results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("layer", "ema", "hf", "generation", "training")


@pytest.mark.slow
def test_quick_benchmark_runs_every_section(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--no-progress",
         "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["quick"] is True and report["repeats"] == 1
    assert set(report["sections"]) == set(SECTIONS)
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
    assert [row["comparison"] for row in training_rows] == [
        "LM @ 64", "LM @ 64", "LM @ 128", "LM @ 128", "translation", "translation"]
    for mega, transformer in zip(training_rows[::2], training_rows[1::2]):
        assert mega["arch"].startswith("--arch mega") and transformer["arch"].startswith("--arch transformer")
        assert abs(transformer["parameters_used"] - mega["parameters_used"]) / mega["parameters_used"] < 0.01
        assert mega["words_per_batch"] == transformer["words_per_batch"]  # same batches
        assert mega["wps_median"] > 0 and transformer["wps_median"] > 0
    for row in report["sections"]["hf"]["rows"]:
        assert row["max_relative_difference"] <= 1e-5
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "## targets" in markdown
    assert (tmp_path / "benchmark.png").stat().st_size > 10_000
    assert "== targets" in completed.stdout


def test_unknown_section_is_refused_with_the_choices(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--sections", "layer,speed",
         "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert "unknown section(s) ['speed']" in completed.stderr
    assert "layer, ema, hf, generation, training" in completed.stderr


def test_bad_repeats_is_refused(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--repeats", "0", "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2 and "--repeats must be at least 1" in completed.stderr

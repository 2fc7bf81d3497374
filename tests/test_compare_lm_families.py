"""scripts/compare_lm_families.py --quick end to end: Megalodon, Mega and the matched
transformer each trained by fairseq-train in two CPU-budgeted segments (the second resumed
from the first's checkpoint) and scored by fairseq-eval-lm (and the Mega-family models by
eval_lm_stateful.py)."""

import json
import math
import sys

import pytest

from conftest import REPO, run_cli


@pytest.mark.slow
def test_quick_comparison_end_to_end(tmp_path):
    out = tmp_path / "compare"
    run_cli([sys.executable, REPO / "scripts" / "compare_lm_families.py", "--quick", "--no-progress-bar",
             "--out-dir", out], timeout=300)
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert list(models) == ["megalodon", "mega", "transformer"]
    reference = models["megalodon"]["used_parameters"]
    for name, row in models.items():
        assert "error" not in row, (name, row.get("error"))
        assert abs(row["used_parameters"] - reference) <= 0.02 * reference, (name, row["used_parameters"], reference)
        # two segments: the second resumed from the first's checkpoint_last.pt
        assert row["segments_run"] == 2, (name, row["segments"])
        assert [s["end_update"] for s in row["segments"]] == [2, 4], (name, row["segments"])
        assert row["updates"] == 4 and row["finite_train_loss"], name
        assert row["cpu_seconds"] == pytest.approx(sum(s["cpu_seconds"] for s in row["segments"]))
        assert row["valid_curve"] and row["wps"] > 0, name
        assert math.isfinite(row["test"]["perplexity"]) and row["test"]["perplexity"] > 1, (name, row["test"])
        if name == "transformer":
            assert "stateful" not in row
        else:
            stateful = row["stateful"]
            assert math.isfinite(stateful["stateful"]["perplexity"]), (name, stateful)
            # the stateful script's independent mode scores the same blocks as fairseq-eval-lm
            assert stateful["independent"]["perplexity"] == pytest.approx(row["test"]["perplexity"], rel=1e-3)
    transformer = models["transformer"]["model_args"]
    assert transformer[transformer.index("--arch") + 1] == "transformer_lm"
    assert "--decoder-ffn-embed-dim" in transformer
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in models)
    assert (out / "results.png").exists() or "matplotlib is not installed" in results["plot"]


def test_full_comparison_options_as_the_readme_shows():
    """The README's full command (about 16 minutes) parses as written to the documented
    budget: 300 CPU seconds per model, the three models, 128-token blocks, chunk 32."""
    import compare_lm_families  # scripts/ is on sys.path (conftest)

    command = "python scripts/compare_lm_families.py"
    assert f"`{command}`" in (REPO / "README.md").read_text()
    args = compare_lm_families.parse_args(command.split()[2:])
    assert args.budget_cpu_seconds == 300 and args.models == ["megalodon", "mega", "transformer"]
    assert (args.tokens_per_sample, args.chunk_size, args.jobs) == (128, 32, 1)


def test_bad_options_are_refused(capsys):
    import compare_lm_families

    for argv, message in ((["--models", "mega,gpt"], "unknown model(s) ['gpt']"),
                          (["--chunk-size", "48"], "--chunk-size 48 does not divide --tokens-per-sample 128"),
                          (["--segment-targets", "0.9,0.5"], "increasing fractions")):
        with pytest.raises(SystemExit) as exited:
            compare_lm_families.parse_args(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err, argv

"""The benchmark section "generation" (scripts/benchmarking/) runs end to end
in quick mode and return well-formed rows and targets. Timings are never asserted: only
that they were measured (finite, positive) and that the checks built into the sections
passed (the incremental and the recomputing greedy decoders produced the same tokens)."""

import json
import math

from benchmarking.results import SectionOptions  # scripts/ is on sys.path (conftest)


def _quick_options(tmp_path) -> SectionOptions:
    return SectionOptions(quick=True, repeats=1, work_dir=tmp_path, progress=False)


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _assert_well_formed(result, name):
    assert result.name == name
    assert result.rows and result.targets and result.notes
    json.dumps(result.to_json())  # what benchmark.py writes
    for row in result.rows:
        assert isinstance(row["label"], str) and row["label"]
        assert isinstance(row["parameters_used"], int) and row["parameters_used"] > 0
    for target in result.targets:
        assert target.name
        if not target.informative:
            assert target.bar.split()[0] in (">=", "<=") and float(target.bar.split()[1]) > 0
        assert _positive_finite(target.measured), target
        assert isinstance(target.met, bool)


def _rows(result, part):
    return [row for row in result.rows if row["part"] == part]


def test_generation_section_quick(tmp_path):
    from benchmarking import generation

    result = generation.run(_quick_options(tmp_path))
    _assert_well_formed(result, "generation")
    for row in result.rows:
        assert _positive_finite(row["tokens_per_s"]), row

    sampling, beam = _rows(result, "LM sampling"), _rows(result, "MT beam 5")
    assert len(sampling) == 3 and len(beam) == 2
    for rows in (sampling, beam):
        transformer = rows[-1]
        assert "transformer" in transformer["model"] and transformer["speed_vs_transformer"] == 1.0
        for row in rows[:-1]:
            assert _positive_finite(row["speed_vs_transformer"])
            # the baseline is matched on used parameters (the chunked LM in part a)
            assert abs(transformer["parameters_used"] - row["parameters_used"]) / row["parameters_used"] < 0.05

    greedy = _rows(result, "incremental vs recompute")
    assert len(greedy) == 2 and all(row["same_tokens"] for row in greedy)
    assert _positive_finite(greedy[0]["incremental_speedup"])

    positions = _rows(result, "step time vs position")
    assert len(positions) == 2
    for row in positions:
        assert _positive_finite(row["first_positions_median_ms"])
        assert _positive_finite(row["last_positions_median_ms"])
        assert _positive_finite(row["last_vs_first"])
    bars = {target.bar for target in result.targets}
    assert {">= 5", "<= 1.25"} <= bars
    assert sum(target.informative for target in result.targets) == 3  # a (x2) and b: no bar

# the training section runs (quick) in tests/test_benchmark_script.py, checked there

"""The benchmark sections "generation" and "lm" (scripts/benchmarking/) run end to end
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
    bars = [target.bar for target in result.targets]
    assert {">= 5", "<= 1.25"} <= set(bars)
    assert bars.count(">= 1") == 3  # a (full, chunked) and b at the quick width
    assert not any(target.informative for target in result.targets)


def test_lm_section_quick(tmp_path):
    from benchmarking import lm_step

    result = lm_step.run(_quick_options(tmp_path))
    _assert_well_formed(result, "lm")
    configs = lm_step.configurations_for(quick=True)
    assert len(result.rows) == 2 * len(configs)
    for mega, transformer in zip(result.rows[::2], result.rows[1::2]):
        assert (mega["model"], transformer["model"]) == ("mega", "transformer")
        assert (mega["width"], mega["length"], mega["batch"]) == (transformer["width"], transformer["length"],
                                                                  transformer["batch"])
        assert abs(transformer["parameters_used"] - mega["parameters_used"]) / mega["parameters_used"] < 0.01
        for row in (mega, transformer):
            assert _positive_finite(row["median_s"]) and _positive_finite(row["matmul_gflops"])
            assert 0 < row["efficiency"] < 1
            # the efficiency is the achieved rate over the matmul rate of the same alternation
            assert math.isclose(row["efficiency"], row["achieved_gflops"] / row["matmul_gflops"])
        assert math.isclose(mega["speedup_vs_transformer"], transformer["median_s"] / mega["median_s"])
    widest = max(config.width for config in configs)
    assert sum("efficiency" in target.name for target in result.targets) == sum(c.width == widest for c in configs)
    assert {row["dropout"] for row in result.rows} == {"dropout everywhere", "--dropout only"}


def test_lm_section_counts_the_matrix_products_torch_runs(tmp_path):
    """The analytic multiply-add count behind the efficiency column equals the FLOPs torch's
    own counter records for the matrix products of a forward + backward pass (within 1%:
    the count leaves out the EMA kernel's small products), for Mega with full and chunked
    attention and for the transformer."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarking import lm_step
    from benchmarking.candidates import lm_task, with_matched_ffn_width

    work_dir = lm_step.write_dictionary(tmp_path)
    for config in (lm_step.Configuration(64, 64, 2, 0), lm_step.Configuration(64, 128, 2, 32)):
        common = lm_task(work_dir, config.length)
        mega, used = lm_step.build(common, lm_step.mega_options(config))
        transformer_args, _ = with_matched_ffn_width(common, used, lm_step.transformer_options(config),
                                                     ("--decoder-ffn-embed-dim",))
        transformer, _ = lm_step.build(common, transformer_args)
        ffn = int(transformer_args[transformer_args.index("--decoder-ffn-embed-dim") + 1])
        tokens = torch.randint(4, 1004, (config.batch, config.length))
        for kind, model, ffn_width in (("mega", mega, 2 * config.width), ("transformer", transformer, ffn)):
            with FlopCounterMode(display=False) as counter:
                model(tokens)[0].sum().backward()
            analytic = (2 * lm_step.FORWARD_BACKWARD * lm_step.matmul_macs_per_token(kind, config, ffn_width)
                        * config.batch * config.length)
            assert abs(analytic / counter.get_total_flops() - 1) < 0.01, (kind, config)

# the training section runs (quick) in tests/test_benchmark_script.py, checked there

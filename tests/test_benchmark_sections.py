"""The benchmark sections "generation", "lm" and "layer" (scripts/benchmarking/) run end to
end in quick mode and return well-formed rows and targets, Megalodon's rows
among them. Timings are never asserted: only that they were measured (finite, positive)
and that the checks built into the sections passed (the incremental and the recomputing
greedy decoders produced the same tokens)."""

import json
import math

import pytest

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

def test_layer_section_quick_has_megalodon_twins(tmp_path):
    """Every Mega variant of the layer section (full, chunked) has a Megalodon twin at every
    length and side, measured like it; the twins' ratios are reported (no bar) and the plot
    draws them."""
    from benchmarking import layer_scaling
    from benchmarking.report import plot

    result = layer_scaling.run(_quick_options(tmp_path))
    assert result.name == "layer" and result.notes
    json.dumps(result.to_json())
    rows = {(row["side"], row["model"], row["length"]): row for row in result.rows}
    megas = [key for key in rows if key[1].startswith("mega (")]
    assert {key[1] for key in megas} == {"mega (full)", "mega (chunk 16)"}
    assert {(side, length) for side, _, length in megas} == {
        (side, length) for side in ("encoder", "decoder") for length in layer_scaling.QUICK_LENGTHS}
    for side, model, length in megas:
        twin = rows[(side, "megalodon" + model[len("mega"):], length)]
        mega = rows[(side, model, length)]
        for key in ("median_s", "peak_mib", "speedup_vs_transformer", "memory_vs_transformer", "time_vs_mega",
                    "memory_vs_mega"):
            assert _positive_finite(twin[key]), (key, twin)
        assert len(twin["times_s"]) == len(mega["times_s"]) and twin["batch"] == mega["batch"]
        assert math.isclose(twin["time_vs_mega"], twin["median_s"] / mega["median_s"])
        # same widths; Megalodon has no update gate, so fewer weights
        assert 0.85 * mega["parameters"] < twin["parameters"] < mega["parameters"]
    assert len(result.rows) == len(rows) == 2 * len(megas) + 2 * len(layer_scaling.QUICK_LENGTHS)
    megalodon_targets = [target for target in result.targets if "megalodon" in target.name]
    assert len(megalodon_targets) == 6  # speed-up, memory and time vs Mega, each side
    for target in megalodon_targets:
        assert target.informative and target.bar == "(no bar)" and _positive_finite(target.measured), target
    assert sum(not target.informative for target in result.targets) == 6  # Mega's bars, as before
    assert plot([result], tmp_path / "layer.png") and (tmp_path / "layer.png").stat().st_size > 10_000


# the training section's quick run, Megalodon's rows included, is checked by
# tests/test_readme_commands.py::test_quick_benchmark_as_written


def test_training_only_matching_nothing_is_refused(tmp_path):
    from benchmarking import training

    options = SectionOptions(quick=True, repeats=1, work_dir=tmp_path, progress=False, training_only="nothing")
    with pytest.raises(ValueError, match="matches none of the comparisons: LM @ 64, width 64;"):
        training.run(options)
    assert not (tmp_path / "training" / training.LM_DATA).exists()  # refused before any work

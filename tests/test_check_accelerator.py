"""The GPU check (scripts/check_accelerator.sh with its bookkeeping in
scripts/accelerator_check.py) and the benchmark's --device option.

The log parsing is tested on lines captured from real fairseq-train runs of this stack
(--log-format json). The end-to-end test runs the README's dry-run command on the CPU. The
tests marked ``device`` belong to the device subset the check itself runs; they run the
layer benchmark's candidates on the chosen device (--device, default cpu)."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

import accelerator_check as check  # noqa: E402
from benchmarking import layer_scaling, measure  # noqa: E402

NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="checks the message given where CUDA is missing")

# fairseq-train mega_lm_tiny --cpu, 50 updates, --log-interval 10: crosses an epoch boundary
LM_50_UPDATES = """\
2026-12-01 22:02:28 | INFO | fairseq_cli.train | num. shared model params: 559,550 (num. trained: 559,550)
2026-12-01 22:02:29 | INFO | fairseq_cli.train | Start iterating over samples
2026-12-01 22:02:54 | INFO | train_inner | {"epoch": 1, "update": 0.256, "loss": "12.754", "ppl": "6906.45", "wps": "815.2", "ups": "0.4", "wpb": "2042.7", "bsz": "16", "num_updates": "10", "lr": "0.003", "gnorm": "1.294", "clip": "100", "train_wall": "26", "wall": "27"}
2026-12-01 22:03:20 | INFO | train_inner | {"epoch": 1, "update": 0.513, "loss": "10.15", "ppl": "1136.23", "wps": "814.8", "ups": "0.4", "wpb": "2048", "bsz": "16", "num_updates": "20", "lr": "0.00212132", "gnorm": "0.903", "clip": "30", "train_wall": "25", "wall": "52"}
2026-12-01 22:03:35 | INFO | train_inner | {"epoch": 1, "update": 0.769, "loss": "9.028", "ppl": "521.96", "wps": "1248.8", "ups": "0.65", "wpb": "1907.2", "bsz": "14.9", "num_updates": "30", "lr": "0.00173205", "gnorm": "0.492", "clip": "0", "train_wall": "15", "wall": "67"}
2026-12-01 22:03:42 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-12-01 22:03:44 | INFO | valid | {"epoch": 1, "valid_loss": "8.267", "valid_ppl": "307.97", "valid_wps": "3375", "valid_wpb": "1438.3", "valid_bsz": "11.3", "valid_num_updates": "39"}
2026-12-01 22:03:44 | INFO | fairseq_cli.train | end of epoch 1 (average epoch stats below)
2026-12-01 22:03:44 | INFO | train | {"epoch": 1, "train_loss": "10.171", "train_ppl": "1152.87", "train_wps": "1061.3", "train_ups": "0.53", "train_wpb": "2010.5", "train_bsz": "15.7", "train_num_updates": "39", "train_lr": "0.00151911", "train_gnorm": "0.775", "train_clip": "33.3", "train_train_wall": "73", "train_wall": "76"}
2026-12-01 22:03:44 | INFO | fairseq_cli.train | Start iterating over samples
2026-12-01 22:03:45 | INFO | train_inner | {"epoch": 2, "update": 1.026, "loss": "8.494", "ppl": "360.65", "wps": "1947.7", "ups": "0.95", "wpb": "2048", "bsz": "16", "num_updates": "40", "lr": "0.0015", "gnorm": "0.368", "clip": "0", "train_wall": "9", "wall": "77"}
2026-12-01 22:03:56 | INFO | train_inner | {"epoch": 2, "update": 1.282, "loss": "8.246", "ppl": "303.63", "wps": "1817.7", "ups": "0.95", "wpb": "1907.2", "bsz": "14.9", "num_updates": "50", "lr": "0.00134164", "gnorm": "0.348", "clip": "0", "train_wall": "10", "wall": "88"}
2026-12-01 22:03:56 | INFO | fairseq_cli.train | Stopping training due to num_updates: 50 >= max_update: 50
2026-12-01 22:03:56 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-12-01 22:03:58 | INFO | valid | {"epoch": 2, "valid_loss": "8.101", "valid_ppl": "274.49", "valid_wps": "2269.2", "valid_wpb": "1438.3", "valid_bsz": "11.3", "valid_num_updates": "50", "valid_best_loss": "8.101"}
2026-12-01 22:03:58 | INFO | fairseq_cli.train | end of epoch 2 (average epoch stats below)
2026-12-01 22:03:58 | INFO | train | {"epoch": 2, "train_loss": "8.252", "train_ppl": "304.93", "train_wps": "1504.9", "train_ups": "0.78", "train_wpb": "1920", "train_bsz": "15", "train_num_updates": "50", "train_lr": "0.00134164", "train_gnorm": "0.349", "train_clip": "0", "train_train_wall": "12", "train_wall": "90"}
2026-12-01 22:03:58 | INFO | fairseq_cli.train | done training in 89.1 seconds
"""

# fairseq-train mega_tiny --cpu --fp16 --fp16-init-scale 1048576, 3 updates: overflows skipped
MT_FP16_OVERFLOWS = """\
2026-12-01 22:01:52 | INFO | fairseq_cli.train | Start iterating over samples
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 524288.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 262144.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 131072.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 65536.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 32768.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 16384.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 8192.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 4096.0
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 2048.0
2026-12-01 22:01:53 | INFO | train_inner | {"epoch": 1, "update": 0.588, "loss": "9.649", "nll_loss": "9.642", "ppl": "798.97", "wps": "0", "ups": "0", "wpb": "189", "bsz": "8", "num_updates": "1", "lr": "0.0005", "gnorm": "1.699", "clip": "100", "loss_scale": "2048", "train_wall": "0", "wall": "1"}
2026-12-01 22:01:53 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 1024.0
2026-12-01 22:01:53 | INFO | train_inner | {"epoch": 1, "update": 0.706, "loss": "9.699", "nll_loss": "9.693", "ppl": "827.75", "wps": "2451.5", "ups": "14.59", "wpb": "168", "bsz": "8", "num_updates": "2", "lr": "0.001", "gnorm": "1.808", "clip": "100", "loss_scale": "1024", "train_wall": "0", "wall": "2"}
2026-12-01 22:01:53 | INFO | train_inner | {"epoch": 1, "update": 0.765, "loss": "9.773", "nll_loss": "9.785", "ppl": "882.31", "wps": "2528", "ups": "18.59", "wpb": "136", "bsz": "8", "num_updates": "3", "lr": "0.0015", "gnorm": "1.939", "clip": "100", "loss_scale": "1024", "train_wall": "0", "wall": "2"}
2026-12-01 22:01:53 | INFO | fairseq_cli.train | Stopping training due to num_updates: 3 >= max_update: 3
2026-12-01 22:01:53 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-12-01 22:01:53 | INFO | valid | {"epoch": 1, "valid_loss": "9.912", "valid_nll_loss": "9.905", "valid_ppl": "958.52", "valid_wps": "12555", "valid_wpb": "112", "valid_bsz": "8", "valid_num_updates": "3"}
2026-12-01 22:01:53 | INFO | fairseq_cli.train | end of epoch 1 (average epoch stats below)
2026-12-01 22:01:53 | INFO | train | {"epoch": 1, "train_loss": "9.701", "train_nll_loss": "9.699", "train_ppl": "831.1", "train_wps": "1904.1", "train_ups": "12.5", "train_wpb": "164.3", "train_bsz": "8", "train_num_updates": "3", "train_lr": "0.0015", "train_gnorm": "1.816", "train_clip": "100", "train_loss_scale": "1024", "train_train_wall": "1", "train_wall": "2"}
2026-12-01 22:01:53 | INFO | fairseq_cli.train | done training in 0.7 seconds
"""

# fairseq-train --fp16 --cpu before the compatibility layer handled it: the end of the log
FP16_CPU_FAILURE = """\
2026-12-01 22:00:26 | INFO | fairseq_cli.train | training on 1 devices (GPUs/TPUs)
Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/fairseq/optim/fp16_optimizer.py", line 38, in build_fp32_params
    devices = [torch.cuda.current_device()]
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/cuda/__init__.py", line 522, in _lazy_init
    raise AssertionError("Torch not compiled with CUDA enabled")
AssertionError: Torch not compiled with CUDA enabled
"""

# the same 3-update LM run, float32 and --bf16 (the last train_inner and the summaries)
LM_FP32_3 = """\
2026-12-01 22:00:22 | INFO | train_inner | {"epoch": 1, "update": 0.005, "loss": "13.332", "ppl": "10308.7", "wps": "153.3", "ups": "1.2", "wpb": "128", "bsz": "2", "num_updates": "3", "lr": "0.0009", "gnorm": "2.144", "clip": "100", "train_wall": "1", "wall": "3"}
2026-12-01 22:00:23 | INFO | valid | {"epoch": 1, "valid_loss": "13.245", "valid_ppl": "9708.29", "valid_wps": "476.5", "valid_wpb": "109.5", "valid_bsz": "2", "valid_num_updates": "3"}
2026-12-01 22:00:23 | INFO | fairseq_cli.train | done training in 2.8 seconds
"""


def _lm_log(loss: str) -> str:
    return LM_FP32_3.replace('"loss": "13.332"', f'"loss": "{loss}"')


def test_parse_train_log_takes_the_last_interval_across_epochs():
    parsed = check.parse_train_log(LM_50_UPDATES)
    assert parsed["updates"] == 50 and parsed["intervals"] == 5
    assert parsed["final_loss"] == pytest.approx(8.246)  # the last train_inner, not the epoch average
    assert parsed["wps"] == pytest.approx((1248.8 + 1817.7) / 2)  # median after the first interval
    assert parsed["valid_loss"] == pytest.approx(8.101)
    assert parsed["train_seconds"] == pytest.approx(89.1)
    assert parsed["overflows"] == 0 and parsed["loss_scale"] is None


def test_parse_train_log_counts_fp16_overflows_and_the_loss_scale():
    parsed = check.parse_train_log(MT_FP16_OVERFLOWS)
    assert parsed["updates"] == 3 and parsed["final_loss"] == pytest.approx(9.773)
    assert parsed["overflows"] == 10 and parsed["loss_scale"] == 1024
    assert parsed["wps"] == pytest.approx((2451.5 + 2528) / 2)
    assert parsed["valid_loss"] == pytest.approx(9.912)


def test_parse_train_log_falls_back_to_the_epoch_summary():
    summary_only = "\n".join(line for line in LM_50_UPDATES.splitlines() if "train_inner" not in line)
    parsed = check.parse_train_log(summary_only)
    assert parsed["updates"] == 50 and parsed["final_loss"] == pytest.approx(8.252)
    assert parsed["wps"] == pytest.approx(1504.9)
    assert check.parse_train_log("no json here")["final_loss"] is None


def test_run_record_of_a_failed_run_names_the_exception():
    record = check.run_record("lm", "fp16", FP16_CPU_FAILURE, 1, 3, 2.9)
    assert not record["ok"] and record["flag"] == "--fp16"
    assert record["problems"] == ["fairseq-train exited with 1: AssertionError: Torch not compiled with CUDA enabled"]


def test_run_record_of_a_crash_at_exit_says_training_had_finished():
    log = LM_FP32_3 + "terminate called without an active exception\n"
    record = check.run_record("lm", "amp", log, 134, 3, 8.1)
    assert not record["ok"] and record["final_loss"] == pytest.approx(13.332)
    assert record["problems"] == ["fairseq-train exited with 134 after training finished: "
                                  "terminate called without an active exception"]


def test_run_record_flags_missing_updates_and_non_finite_losses():
    short = check.run_record("lm", "fp32", LM_FP32_3, 0, 50, 7.0)
    assert not short["ok"] and short["problems"] == ["3 updates logged, expected 50"]
    nan = check.run_record("lm", "fp16", _lm_log("nan"), 0, 3, 7.0)
    assert not nan["ok"] and nan["problems"] == ["training loss is nan"]
    fine = check.run_record("lm", "amp", LM_FP32_3, 0, 3, 7.0)
    assert fine["ok"] and fine["problems"] == [] and fine["flag"] == "--amp"


def test_compare_with_fp32_applies_the_tolerance_per_task():
    records = [check.run_record("lm", "fp32", LM_FP32_3, 0, 3, 1.0),
               check.run_record("lm", "bf16", _lm_log("13.5"), 0, 3, 1.0),
               check.run_record("lm", "fp16", _lm_log("16.0"), 0, 3, 1.0),
               check.run_record("mt", "fp16", MT_FP16_OVERFLOWS, 0, 3, 1.0)]  # no mt fp32 run
    check.compare_with_fp32(records, tolerance=0.15)
    fp32, bf16, fp16, mt = records
    assert fp32["ok"] and fp32["loss_vs_fp32"] == 0 and fp32["loss_ratio_vs_fp32"] == 1
    assert bf16["ok"] and bf16["loss_vs_fp32"] == pytest.approx(13.5 - 13.332)
    assert not fp16["ok"] and "differs from the float32 run's 13.332 by more than 15%" in fp16["problems"][0]
    assert mt["ok"] and mt["loss_vs_fp32"] is None


def _junit(tmp_path: Path, body: str):
    """pytest's own JUnit XML of a small generated test file, and its exit code."""
    test_file = tmp_path / "test_generated.py"
    test_file.write_text(textwrap.dedent(body))
    xml = tmp_path / "generated.xml"
    completed = subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                                f"--junitxml={xml}", f"--rootdir={tmp_path}"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return xml, completed.returncode


def test_pytest_summary_counts_a_real_junit_xml(tmp_path):
    xml, returncode = _junit(tmp_path, """
        import pytest
        def test_ok(): pass
        def test_also_ok(): pass
        def test_bad(): assert False
        @pytest.mark.skip(reason="no")
        def test_skipped(): pass
    """)
    assert returncode == 1
    summary = check.pytest_summary(xml, returncode)
    assert (summary["tests"], summary["passed"], summary["failed"], summary["errors"], summary["skipped"]) == (4, 2, 1, 0, 1)
    assert summary["failures"] == ["test_generated::test_bad"]
    assert not summary["ok"] and summary["problems"] == ["pytest exited with 1 (1 failed, 0 errors)"]

    nothing = check.pytest_summary(tmp_path / "absent.xml", 5)
    assert not nothing["ok"] and "selected no tests" in nothing["problems"][0]
    crashed = check.pytest_summary(tmp_path / "absent.xml", 4, "ERROR: usage: ...\nUsageError: --device cuda: no CUDA")
    assert "no JUnit XML; UsageError: --device cuda: no CUDA" in crashed["problems"][0]


def _layer_rows(length: int, chunk: int, speedup: float, memory: float):
    rows = [dict(side="encoder", model="transformer", length=length, speedup_vs_transformer=1.0,
                 memory_vs_transformer=1.0, median_s=0.08, peak_mib=400.0)]
    rows.append(dict(side="encoder", model=f"mega (chunk {chunk})", length=length, speedup_vs_transformer=speedup,
                     memory_vs_transformer=memory, median_s=0.01, peak_mib=52.0))
    return rows


def _megalodon_row(length: int, chunk: int):
    return dict(side="encoder", model=f"megalodon (chunk {chunk})", length=length, speedup_vs_transformer=6.0,
                memory_vs_transformer=0.2, median_s=0.013, peak_mib=50.0)


def test_layer_ratios_prefer_4096_tokens_else_the_longest_length():
    benchmark = {"sections": {"layer": {"rows": _layer_rows(2048, 128, 4.0, 0.3) + _layer_rows(4096, 128, 8.0, 0.21)
                                        + _layer_rows(8192, 128, 13.7, 0.11)}}}
    ratios = check.layer_ratios(benchmark)
    assert ratios["length"] == 4096
    assert ratios["rows"] == [dict(side="encoder", model="mega (chunk 128)", speedup=8.0, memory=0.21,
                                   median_s=0.01, peak_mib=52.0)]
    quick = {"sections": {"layer": {"rows": _layer_rows(32, 16, 0.5, 1.2) + _layer_rows(64, 16, 0.6, 0.9)}}}
    assert check.layer_ratios(quick)["length"] == 64
    assert check.layer_ratios({"sections": {}}) == dict(length=None, rows=[])


def _fill_out_dir(out: Path, fp16_log: str, pytest_rc: int = 0):
    """What check_accelerator.sh leaves in OUT_DIR, with the given fp16 LM log."""
    (out / "train").mkdir(parents=True)
    assert check.main(["device-info", "--device", "cpu", "--out", str(out / "device.json")]) == 0
    (out / "pytest.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="0" '
        'skipped="0" tests="3" time="1.5"><testcase classname="tests.test_x" name="test_a" time="0.5"/>'
        '<testcase classname="tests.test_x" name="test_b" time="0.5"/><testcase classname="tests.test_x" '
        'name="test_c" time="0.5"/></testsuite></testsuites>')
    (out / "pytest.rc").write_text(f"{pytest_rc}\n")
    (out / "pytest.cmd").write_text("python -m pytest tests -m device --device cpu\n")
    logs = {"fp32": LM_FP32_3, "fp16": fp16_log, "bf16": _lm_log("13.34"), "amp": LM_FP32_3}
    for task in check.TASKS:
        for precision, log in logs.items():
            path = out / "train" / f"{task}_{precision}.log"
            path.write_text(log)
            rc = 1 if "Traceback" in log else 0
            assert check.main(["record-run", "--log", str(path), "--rc", str(rc), "--task", task, "--precision",
                               precision, "--arch", "mega_lm_tiny" if task == "lm" else "mega_tiny",
                               "--max-update", "3", "--wall-s", "7.5",
                               "--out", str(out / "train" / f"{task}_{precision}.json")]) == 0
    (out / "benchmark").mkdir()
    (out / "benchmark" / "benchmark.json").write_text(json.dumps(
        {"device": "cpu", "sections": {"layer": {"rows": _layer_rows(4096, 128, 8.0, 0.21)
                                                + [_megalodon_row(4096, 128)]}}}))
    (out / "benchmark.rc").write_text("0\n")
    (out / "benchmark.cmd").write_text("python scripts/benchmark.py --sections layer --device cpu\n")


def test_report_of_a_clean_check_passes(tmp_path, capsys):
    _fill_out_dir(tmp_path, LM_FP32_3)
    assert check.main(["report", "--out-dir", str(tmp_path), "--mode", "dry-run (cpu)"]) == 0
    report = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert report["ok"] and report["failures"] == []
    assert report["device"]["type"] == "cpu" and report["device"]["torch"] == torch.__version__
    assert (report["pytest"]["passed"], report["pytest"]["failed"]) == (3, 0)
    runs = report["training"]
    assert [(r["task"], r["precision"]) for r in runs] == [(t, p) for t in ("lm", "mt")
                                                          for p in ("fp32", "fp16", "bf16", "amp")]
    assert all(r["ok"] and math.isfinite(r["final_loss"]) and r["updates"] == 3 for r in runs)
    assert runs[2]["loss_vs_fp32"] == pytest.approx(13.34 - 13.332)
    bench = report["layer_benchmark"]
    assert bench["length"] == 4096 and bench["rows"][0]["speedup"] == 8.0 and bench["paper"]["speedup"] == 5.5
    markdown = (tmp_path / "accelerator_check.md").read_text()
    assert "Verdict: **passed**" in markdown and "3 passed, 0 failed" in markdown
    assert "| lm (mega_lm_tiny) | bf16 | --bf16 | 3 | 13.340 | 0.008 | 1.001 | 13.245 |" in markdown
    assert "| encoder | mega (chunk 128) | 8.00x | 0.21x |" in markdown
    assert "5.5x faster at 0.13x memory" in markdown
    out = capsys.readouterr().out
    assert "encoder mega (chunk 128) @ 4096: 8.00x faster, 0.21x memory (paper: 5.5x, 0.13x at 4096)" in out
    # Megalodon's block is in the table, but never set beside the Mega paper's figures
    assert "| encoder | megalodon (chunk 128) | 6.00x | 0.20x |" in markdown and "megalodon (chunk 128) @" not in out
    assert "[check] passed" in out


def test_report_lists_every_failure_and_exits_non_zero(tmp_path, capsys):
    _fill_out_dir(tmp_path, FP16_CPU_FAILURE, pytest_rc=1)
    (tmp_path / "train" / "mt_amp.json").unlink()
    (tmp_path / "benchmark.rc").write_text("2\n")
    (tmp_path / "benchmark.log").write_text("benchmark.py: error: --device cuda: CUDA is not available\n")
    assert check.main(["report", "--out-dir", str(tmp_path), "--mode", "cuda"]) == 1
    report = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert not report["ok"]
    failures = "\n".join(report["failures"])
    assert "device tests: pytest exited with 1" in failures
    assert "training lm fp16: fairseq-train exited with 1: AssertionError: Torch not compiled with CUDA enabled" in failures
    assert "training run mt_amp: missing" in failures
    assert "layer benchmark: benchmark.py exited with 2: benchmark.py: error: --device cuda" in failures
    assert "Verdict: **FAILED**" in (tmp_path / "accelerator_check.md").read_text()
    assert "[check] FAILED: 5 problem(s)" in capsys.readouterr().err


def test_non_finite_values_are_written_as_strict_json(tmp_path):
    record = check.run_record("lm", "fp16", _lm_log("inf"), 0, 3, 1.0)
    assert record["final_loss"] == math.inf and not record["ok"]
    text = json.dumps(check.jsonable(record), allow_nan=False)
    assert json.loads(text)["final_loss"] == "inf"


def test_copy_corpus_targets_are_the_sources(tmp_path):
    assert check.main(["copy-corpus", "--out-dir", str(tmp_path), "--train-pairs", "30", "--valid-pairs", "5"]) == 0
    for split, count in (("train", 30), ("valid", 5)):
        source = (tmp_path / f"{split}.src").read_text().splitlines()
        assert source == (tmp_path / f"{split}.tgt").read_text().splitlines() and len(source) == count
        assert all(4 <= len(line.split()) <= 24 for line in source)


@needs_no_cuda
def test_device_info_without_cuda_explains_and_exits_2(tmp_path, capsys):
    with pytest.raises(check.DeviceUnavailable, match="CUDA is not available: torch .*--dry-run"):
        check.device_facts("cuda")
    assert check.main(["device-info", "--device", "cuda", "--out", str(tmp_path / "device.json")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "device.json").exists()


@needs_no_cuda
def test_check_script_without_cuda_stops_at_once(tmp_path):
    completed = subprocess.run(["bash", "scripts/check_accelerator.sh"], cwd=REPO, capture_output=True, text=True,
                               timeout=300, env=dict(os.environ, OUT_DIR=str(tmp_path / "out"),
                                                     MEGA_FAIRSEQ_PYTHON=sys.executable))
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "== 1/6 device (cuda)" in completed.stdout and "== 2/6" not in completed.stdout
    assert "[check] CUDA is not available: torch" in completed.stderr
    assert "check_accelerator.sh: stopped: device 'cuda' is not usable" in completed.stderr


def test_check_script_refuses_unknown_arguments():
    completed = subprocess.run(["bash", "scripts/check_accelerator.sh", "--dryrun"], cwd=REPO, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 2 and "unknown argument '--dryrun'" in completed.stderr


# ------------------------------------------------------------ benchmark --device
def _benchmark(*arguments, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPTS / "benchmark.py"), *arguments], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@needs_no_cuda
def test_benchmark_device_cuda_without_cuda_is_refused_clearly(tmp_path):
    completed = _benchmark("--sections", "layer", "--device", "cuda", "--out-dir", str(tmp_path))
    assert completed.returncode == 2
    assert "--device cuda: CUDA is not available: torch" in completed.stderr
    assert not (tmp_path / "benchmark.json").exists()


def test_benchmark_device_is_for_the_layer_section_only(tmp_path):
    completed = _benchmark("--sections", "layer,ema", "--device", "cuda", "--out-dir", str(tmp_path))
    assert completed.returncode == 2
    assert "--device cuda: section(s) ema run on the CPU only; choose --sections layer" in completed.stderr
    bad = _benchmark("--sections", "layer", "--device", "gpu0", "--out-dir", str(tmp_path))
    assert bad.returncode == 2 and "--device 'gpu0' is not a torch device" in bad.stderr


def test_benchmark_parses_the_device_option():
    import benchmark

    assert benchmark.parse_args(["--sections", "layer"]).device == "cpu"
    assert benchmark.parse_args(["--sections", "layer", "--device", "cpu", "--quick"]).device == "cpu"
    assert benchmark.device_problem("cpu", ["layer", "ema"]) == ""
    assert benchmark.device_problem("cuda", ["ema"]).startswith("--device cuda: section(s) ema run on the CPU only")


@pytest.mark.slow
def test_benchmark_layer_section_runs_with_device_cpu(tmp_path):
    completed = _benchmark("--sections", "layer", "--device", "cpu", "--quick", "--no-progress",
                           "--out-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["device"] == "cpu" and report["machine"]["device"] == "cpu" and list(report["sections"]) == ["layer"]
    rows = report["sections"]["layer"]["rows"]
    assert {row["model"] for row in rows} == {"transformer", "mega (full)", "mega (chunk 16)",
                                              "megalodon (full)", "megalodon (chunk 16)"}
    assert all(row["median_s"] > 0 and row["peak_mib"] > 0 for row in rows)
    summary = check.benchmark_summary(tmp_path / "benchmark.json", completed.returncode)
    # 2 sides x (2 Mega variants and their Megalodon twins)
    assert summary["ok"] and summary["length"] == 64 and len(summary["rows"]) == 8


def test_measure_synchronises_only_cuda_devices():
    assert not measure.is_cuda(None) and not measure.is_cuda("cpu") and not measure.is_cuda(torch.device("cpu"))
    assert measure.is_cuda("cuda:1") and measure.is_cuda(torch.device("cuda"))
    measure.synchronize("cpu")  # a no-op on the CPU (and no CUDA call)
    measure.synchronize(None)


# ------------------------------------------------------------ the device subset
@pytest.mark.device
def test_layer_benchmark_candidates_train_on_the_device(device):
    widths = layer_scaling.layer_widths(quick=True)
    for causal in (False, True):
        candidates = layer_scaling.candidates_for(32, 64, widths, causal, (16,), device, megalodon=True)
        assert set(candidates) == {"transformer", "mega (full)", "mega (chunk 16)", "megalodon (full)",
                                   "megalodon (chunk 16)"}
        for name, (layer, step) in candidates.items():
            step()
            gradients = [p.grad for p in layer.parameters() if p.grad is not None]
            assert gradients, name
            assert all(g.device.type == device.type and torch.isfinite(g).all() for g in gradients), name


@pytest.mark.device
def test_measure_compare_times_and_sizes_on_the_device(device):
    candidates = layer_scaling.candidates_for(32, 64, layer_scaling.layer_widths(quick=True), True, (16,), device)
    measured = measure.compare({name: step for name, (_, step) in candidates.items()}, repeats=1, device=device)
    for name, measurement in measured.items():
        assert measurement.median_s > 0 and measurement.peak_mib is not None and measurement.peak_mib > 0, name


# ------------------------------------------------------------ end to end
README_DRY_RUN = ["bash", "scripts/check_accelerator.sh", "--dry-run"]


@pytest.mark.slow
def test_dry_run_end_to_end():
    """The README's dry-run command exactly as written, from the repository root with its
    defaults (the .venv, OUT_DIR work-dirs/accelerator_check, the whole device subset)."""
    out = REPO / "work-dirs" / "accelerator_check"
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("OUT_DIR", "MEGA_FAIRSEQ_PYTHON", "ACCELERATOR_CHECK_TESTS",
                                   "MAX_UPDATE", "LOSS_TOLERANCE", "MEGA_FAIRSEQ_TEST_DEVICE")}
    completed = subprocess.run(README_DRY_RUN, cwd=REPO, capture_output=True, text=True, timeout=1200,
                               env=environment)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    for step in range(1, 7):
        assert f"== {step}/6 " in completed.stdout
    assert "[check] passed" in completed.stdout

    report = json.loads((out / "accelerator_check.json").read_text())
    assert report["ok"] and report["failures"] == [] and report["mode"] == "dry-run (cpu)"
    assert report["device"]["type"] == "cpu"
    tests = report["pytest"]
    assert "-m device --device cpu" in tests["command"] and "cuda" not in tests["command"]
    assert tests["passed"] >= 100 and tests["failed"] == 0 and tests["errors"] == 0
    runs = report["training"]
    assert [(r["task"], r["flag"]) for r in runs] == [
        (task, flag) for task in ("lm", "mt") for flag in ("(none)", "--fp16", "--bf16", "--amp")]
    for run in runs:
        assert run["ok"] and run["returncode"] == 0 and run["updates"] == 3, run
        assert math.isfinite(run["final_loss"]) and run["wps"] > 0 and run["wall_s"] > 0, run
        assert abs(run["loss_ratio_vs_fp32"] - 1) <= 0.15, run
        assert "--cpu" in run["command"] and "--user-dir mega_fairseq" in run["command"]
    bench = report["layer_benchmark"]
    assert "--device cpu --quick" in bench["command"] and bench["device"] == "cpu"
    assert bench["length"] == 64 and all(row["speedup"] > 0 and row["memory"] > 0 for row in bench["rows"])

    markdown = (out / "accelerator_check.md").read_text()
    assert "Verdict: **passed**" in markdown and f"{tests['passed']} passed, 0 failed" in markdown
    for flag in ("--fp16", "--bf16", "--amp"):
        assert markdown.count(f"| {flag} |") == 2  # one row per task
    assert "| encoder | mega (chunk 16) |" in markdown and "| decoder | mega (chunk 16) |" in markdown

#!/usr/bin/env python
"""Summarise a classification example (run_vader.sh, run_listops.sh) from the logs in its
work directory: per model the used parameters, training time and updates, best
validation accuracy, test accuracy (fairseq-validate --valid-subset test on the best
checkpoint) and validation speed, plus the majority-class baseline; writes results.json
and results.md (a markdown table) there and prints the table.

Files read in --work, for each model NAME of --models:
    train_NAME.log   fairseq-train (--log-format simple)
    test_NAME.log    fairseq-validate --valid-subset test
    parameters.log   scripts/count_parameters.py output; its last line is JSON with
                     "used" (the first model) and, with --match, "match" (the second)

Validation speed (sentences/s) is fairseq's validation ``wps`` (tokens/s, timed from the
first batch of each validation during training) times ``bsz`` / ``wpb``; the median over
the run's validations. The majority-class baseline predicts the most frequent label of
``LABELS/train.label`` for every line of ``LABELS/test.label``.
"""

import argparse
import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Optional

VALID = re.compile(r"\| valid \| .*\| accuracy ([0-9.]+) .*\| wps ([0-9.]+) \| wpb ([0-9.]+) \| "
                   r"bsz ([0-9.]+) .*\| num_updates (\d+)")


def _search(pattern: str, text: str, path: Path, cast=float):
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"{path}: no line matching {pattern!r}; did that step finish?")
    return cast(match.group(1).replace(",", ""))


def model_results(work: Path, name: str) -> dict:
    train_log, test_log = work / f"train_{name}.log", work / f"test_{name}.log"
    for path in (train_log, test_log):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; did that step run?")
    train = train_log.read_text(errors="replace")
    test = test_log.read_text(errors="replace")
    valid = [tuple(float(x) for x in m) for m in VALID.findall(train)]
    if not valid:
        raise ValueError(f"{train_log}: no validation lines with accuracy (--log-format simple?)")
    test_line = re.search(r"valid on 'test' subset (\|.*)", test)
    if test_line is None:
        raise ValueError(f"{test_log}: no \"valid on 'test' subset\" line; did fairseq-validate finish?")
    return {
        "training_seconds": _search(r"done training in ([0-9.]+) seconds", train, train_log),
        "updates": int(valid[-1][4]),
        "epochs": max((int(e) for e in re.findall(r"end of epoch (\d+) \(average", train)), default=0),
        "validations": len(valid),
        "best_valid_accuracy": max(v[0] for v in valid),
        "test_accuracy": _search(r"\| accuracy ([0-9.]+)", test_line.group(1), test_log),
        "test_loss": _search(r"\| loss ([0-9.]+)", test_line.group(1), test_log),
        "test_sentences": _search(r"loaded ([0-9,]+) examples from: \S*input0[/\\]test", test, test_log, int),
        "valid_sentences_per_second": statistics.median(wps * bsz / wpb for _, wps, wpb, bsz, _ in valid),
        "valid_tokens_per_second": statistics.median(v[1] for v in valid),
    }


def majority_baseline(labels: Path) -> dict:
    def read(split):
        path = labels / f"{split}.label"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    train, test = read("train"), read("test")
    majority, _ = Counter(train).most_common(1)[0]
    return {"class": majority, "test_accuracy": 100.0 * sum(label == majority for label in test) / len(test),
            "test_labels": dict(sorted(Counter(test).items()))}


def summarize(work: Path, models, labels: Optional[Path] = None, title: str = "") -> dict:
    results = {name: model_results(work, name) for name in models}
    parameters_log = work / "parameters.log"
    if parameters_log.is_file():
        counts = json.loads(parameters_log.read_text().strip().splitlines()[-1])
        results[models[0]]["parameters"] = counts["used"]
        if "match" in counts and len(models) > 1:
            results[models[1]]["parameters"] = counts["match"]["used"]
            results[models[1]]["ffn_embed_dim"] = counts["match"]["ffn_embed_dim"]
    summary = {"models": results}
    if labels is not None:
        summary["majority_class"] = majority_baseline(labels)
    (work / "results.json").write_text(json.dumps(summary, indent=1) + "\n")

    rows = [f"### {title}\n" if title else "",
            "| model | parameters | training | updates | best valid acc. | test acc. | "
            "valid sentences/s | valid tokens/s |",
            "|---|---|---|---|---|---|---|---|"]
    for name in models:
        r = results[name]
        parameters = f"{r['parameters']:,}" if "parameters" in r else "?"
        rows.append(
            f"| {name} | {parameters} | {r['training_seconds'] / 60:.1f} min | {r['updates']:,} | "
            f"{r['best_valid_accuracy']:.1f}% | {r['test_accuracy']:.2f}% | "
            f"{r['valid_sentences_per_second']:.0f} | {r['valid_tokens_per_second']:.0f} |"
        )
    if labels is not None:
        m = summary["majority_class"]
        rows.append(f"| majority class ({m['class']}) | 0 | | | | {m['test_accuracy']:.2f}% | | |")
    table = "\n".join(row for row in rows if row) + "\n"
    (work / "results.md").write_text(table)
    print(table)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the example's work directory")
    parser.add_argument("--models", nargs="+", required=True, help="model names (train_NAME.log, ...)")
    parser.add_argument("--labels", type=Path, help="folder with {train,test}.label text files "
                                                    "(majority-class baseline)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    summarize(args.work, args.models, args.labels, args.title)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Summarise run_gettext_en_de.sh: parameters, training budget, sacreBLEU and beam-5
generation speed of each model, from the logs in the work directory; writes
results.json and results.md (a markdown table) there and prints the table."""

import argparse
import json
import re
from pathlib import Path

MODELS = ("mega", "transformer")


def _search(pattern: str, text: str, path: Path, cast=float):
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"{path}: no line matching {pattern!r}; did that step finish?")
    return cast(match.group(1).replace(",", ""))


def model_results(work: Path, name: str) -> dict:
    train_log = work / f"train_{name}.log"
    generate_log = work / f"generate_{name}.log"
    train = train_log.read_text(errors="replace")
    generate = generate_log.read_text(errors="replace")
    valid = re.findall(r"\| valid \| .*\| loss ([0-9.]+) .*\| num_updates (\d+)", train)
    if not valid:
        raise ValueError(f"{train_log}: no validation results")
    return {
        "training_seconds": _search(r"done training in ([0-9.]+) seconds", train, train_log),
        "updates": int(valid[-1][1]),
        "best_valid_loss": min(float(loss) for loss, _ in valid),
        "sacrebleu": _search(r"BLEU = ([0-9.]+)", generate, generate_log),
        "test_sentences": _search(r"Translated ([0-9,]+) sentences", generate, generate_log, int),
        "sentences_per_second": _search(r"\(([0-9.]+) sentences/s", generate, generate_log),
        "tokens_per_second": _search(r"sentences/s, ([0-9.]+) tokens/s", generate, generate_log),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="the example's work directory")
    args = parser.parse_args(argv)
    counts = json.loads((args.work / "parameters.log").read_text().strip().splitlines()[-1])
    results = {name: model_results(args.work, name) for name in MODELS}
    results["mega"]["parameters"] = counts["used"]
    results["transformer"]["parameters"] = counts["match"]["used"]
    results["transformer"]["ffn_embed_dim"] = counts["match"]["ffn_embed_dim"]
    (args.work / "results.json").write_text(json.dumps(results, indent=1))

    rows = [
        "| model | parameters | training | updates | best valid loss | test sacreBLEU (beam 5) | generation sentences/s | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        r = results[name]
        rows.append(
            f"| {name} | {r['parameters']:,} | {r['training_seconds'] / 60:.1f} min | {r['updates']:,} | "
            f"{r['best_valid_loss']:.3f} | {r['sacrebleu']:.2f} | {r['sentences_per_second']:.1f} | "
            f"{r['tokens_per_second']:.0f} |"
        )
    table = "\n".join(rows) + "\n"
    (args.work / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

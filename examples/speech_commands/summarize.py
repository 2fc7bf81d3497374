#!/usr/bin/env python
"""Summarise examples/speech_commands/run.sh from the logs in its work directory: per
model the parameters, training time, updates and clips seen, and the accuracy of its last
checkpoint on the valid and test splits, plus the majority class (the most frequent label
of train.tsv, scored on each split); writes results.json and results.md there and prints
the table.

Files read in --work, for each model NAME of --models:
    train_NAME.log               fairseq-train (--log-format simple)
    valid_NAME.log, test_NAME.log  fairseq-validate --valid-subset valid / test
    data/{train,valid,test}.tsv  the manifests (for the majority class)
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path

PARAMS = re.compile(r"num\. shared model params: ([0-9,]+)")
DONE = re.compile(r"done training in ([0-9.]+) seconds")
UPDATES = re.compile(r"num_updates[= ](\d+)")
ACCURACY = re.compile(r"valid on '(\w+)' subset \|.*accuracy ([0-9.]+)")
NAMES = {"mega": "Mega (mega_sc_raw_tiny)", "cnn": "1-D CNN (raw_audio_cnn), same time",
         "cnn_updates": "1-D CNN (raw_audio_cnn), Mega's number of updates"}


def labels(manifest: Path):
    return [line.split("\t")[1] for line in manifest.read_text().splitlines()[1:] if line.strip()]


def model_row(work: Path, name: str, batch_size: int) -> dict:
    train = (work / f"train_{name}.log").read_text()
    row = {"model": NAMES.get(name, name)}
    params = PARAMS.search(train)
    row["parameters"] = int(params.group(1).replace(",", "")) if params else None
    done = DONE.search(train)
    row["train_seconds"] = float(done.group(1)) if done else None
    updates = UPDATES.findall(train)
    row["updates"] = int(updates[-1]) if updates else 0
    row["clips_seen"] = row["updates"] * batch_size
    for split in ("valid", "test"):
        match = ACCURACY.search((work / f"{split}_{name}.log").read_text())
        row[f"{split}_accuracy"] = float(match.group(2)) if match else None
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="the work directory of run.sh")
    parser.add_argument("--models", nargs="+", default=["mega", "cnn", "cnn_updates"])
    parser.add_argument("--batch-size", type=int, default=8, help="the training batch size")
    args = parser.parse_args(argv)
    work = Path(args.work)
    data = work / "data"
    majority_label = Counter(labels(data / "train.tsv")).most_common(1)[0][0]
    majority = {split: round(100.0 * labels(data / f"{split}.tsv").count(majority_label)
                             / len(labels(data / f"{split}.tsv")), 2) for split in ("valid", "test")}
    rows = [model_row(work, name, args.batch_size) for name in args.models]
    summary = json.loads((data / "summary.json").read_text())
    results = {"clips": summary["clips"], "majority": majority, "models": rows}
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| model | parameters | training (s) | updates | clips seen | valid acc. (%) | test acc. (%) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['parameters']:,} | {row['train_seconds']:.0f} | {row['updates']} | "
                     f"{row['clips_seen']} | {row['valid_accuracy']} | {row['test_accuracy']} |")
    lines.append(f"| majority class | - | - | - | - | {majority['valid']} | {majority['test']} |")
    table = "\n".join(lines) + "\n"
    (work / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

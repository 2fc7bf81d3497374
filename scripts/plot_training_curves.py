#!/usr/bin/env python
"""Plot validation loss against training time (and updates) from fairseq-train logs.

    python scripts/plot_training_curves.py --log mega=work/train_mega.log \\
        --log transformer=work/train_transformer.log --out curves.png [--json curves.json]

``--metric accuracy`` (repeatable; any ``| valid |`` field) adds a row of plots of
that metric (JSON key ``valid_<metric>``) under the loss plots.

Reads fairseq's ``simple`` log format (the default when stdout is not a terminal, or
``--log-format simple``): ``train_inner`` lines give the wall-clock time at each logged
update count and ``valid`` lines the validation loss at an update count; the time of a
validation is interpolated from the surrounding ``train_inner`` lines.
"""

import argparse
import bisect
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

TRAIN_INNER = re.compile(r"\| train_inner \|.*num_updates=(\d+).*\bwall=([0-9.]+)")
VALID = re.compile(r"\| valid \| .*\| loss ([0-9.]+) .*\| num_updates (\d+)")


def parse_log(path: Path, metrics: Tuple[str, ...] = ()) -> Dict[str, List[Tuple[float, float]]]:
    """{"wall": [(updates, seconds)], "valid": [(updates, loss)]} of one log, and
    {metric: [(updates, value)]} for each of ``metrics``."""
    wall, valid = [], []
    extra = {metric: [] for metric in metrics}
    patterns = {metric: re.compile(r"\| " + re.escape(metric) + r" ([-0-9.eE+]+)") for metric in metrics}
    for line in path.read_text(errors="replace").splitlines():
        match = TRAIN_INNER.search(line)
        if match:
            wall.append((int(match.group(1)), float(match.group(2))))
            continue
        match = VALID.search(line)
        if match:
            updates = int(match.group(2))
            valid.append((updates, float(match.group(1))))
            for metric, pattern in patterns.items():
                value = pattern.search(line)
                if value is None:
                    raise ValueError(f"{path}: a validation line without '| {metric} VALUE': {line[-200:]}")
                extra[metric].append((updates, float(value.group(1))))
    if not valid:
        raise ValueError(f"{path}: no validation lines ('| valid | ... | loss ... | num_updates N') found; "
                         "was it written by fairseq-train with --log-format simple?")
    return {"wall": wall, "valid": valid, **extra}


def seconds_at(updates: int, wall: List[Tuple[int, float]]) -> float:
    """Training time at an update count, linearly interpolated (extrapolated at the ends)."""
    if not wall:
        return float("nan")
    if len(wall) == 1:
        return wall[0][1] * updates / max(wall[0][0], 1)
    counts = [u for u, _ in wall]
    i = min(max(bisect.bisect_left(counts, updates), 1), len(wall) - 1)
    (u0, t0), (u1, t1) = wall[i - 1], wall[i]
    return t0 + (t1 - t0) * (updates - u0) / max(u1 - u0, 1)


def curves(logs: Dict[str, Path], metrics: Tuple[str, ...] = ()) -> Dict[str, List[Dict[str, float]]]:
    result = {}
    for name, path in logs.items():
        parsed = parse_log(path, metrics)
        result[name] = [
            {"updates": u, "seconds": seconds_at(u, parsed["wall"]), "valid_loss": loss,
             **{f"valid_{metric}": parsed[metric][i][1] for metric in metrics}}
            for i, (u, loss) in enumerate(parsed["valid"])
        ]
    return result


def plot(data, out: Path, title: str, metrics: Tuple[str, ...] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("valid_loss", "validation loss (base 2)")]
    rows += [(f"valid_{metric}", f"validation {metric}") for metric in metrics]
    figure, axes = plt.subplots(len(rows), 2, figsize=(11, 4 * len(rows)), squeeze=False)
    for (key, ylabel), (by_time, by_updates) in zip(rows, axes):
        for name, points in data.items():
            by_time.plot([p["seconds"] / 60 for p in points], [p[key] for p in points],
                         marker="o", markersize=3, label=name)
            by_updates.plot([p["updates"] for p in points], [p[key] for p in points],
                            marker="o", markersize=3, label=name)
        by_time.set_xlabel("training time (minutes)")
        by_updates.set_xlabel("updates")
        for axis in (by_time, by_updates):
            axis.set_ylabel(ylabel)
            axis.grid(alpha=0.3)
            axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", action="append", required=True, metavar="NAME=PATH",
                        help="a fairseq-train log and the name it gets in the legend (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--json", type=Path, help="also write the curves as JSON")
    parser.add_argument("--title", default="validation loss")
    parser.add_argument("--metric", action="append", default=[],
                        help="also plot this validation metric, e.g. accuracy (repeatable)")
    args = parser.parse_args(argv)
    logs = {}
    for item in args.log:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--log expects NAME=PATH, got {item!r}")
        if not Path(path).is_file():
            parser.error(f"--log {item!r}: no such file {path}")
        logs[name] = Path(path)
    metrics = tuple(m for m in args.metric if m != "loss")
    data = curves(logs, metrics)
    plot(data, args.out, args.title, metrics)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    for name, points in data.items():
        last = points[-1]
        print(f"{name}: {len(points)} validations, last loss {last['valid_loss']:.3f} at "
              f"{last['updates']} updates / {last['seconds'] / 60:.1f} min")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Printing benchmark results as tables and drawing the scaling plot."""

import math
from pathlib import Path
from typing import Dict, List

from benchmarking.candidates import mega_twin
from benchmarking.results import SectionResult


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.2e}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(rows: List[dict]) -> str:
    """Rows as a Markdown table over the keys whose values are scalars."""
    if not rows:
        return "(no rows)"
    columns: List[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in columns and not isinstance(value, (list, dict)):
                columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(key, "")) for key in columns) + " |")
    return "\n".join(lines)


def targets_table(results: List[SectionResult]) -> str:
    lines = ["| section | target | measured | bar | met |", "|---|---|---|---|---|"]
    for result in results:
        for target in result.targets:
            met = "(no bar)" if target.informative else ("yes" if target.met else "**no**")
            lines.append(f"| {result.name} | {target.name} | {_format(target.measured)} | {target.bar} | {met} |")
    return "\n".join(lines)


def section_text(result: SectionResult) -> str:
    notes = "".join(f"\n- {note}" for note in result.notes)
    return f"## {result.name}{notes}\n\n{table(result.rows)}\n"


def _series(rows: List[dict], group_key: str, x_key: str, y_key: str) -> Dict[str, tuple]:
    series: Dict[str, list] = {}
    for row in rows:
        if row.get(y_key) is None:
            continue
        series.setdefault(row[group_key], []).append((row[x_key], row[y_key]))
    return {name: tuple(zip(*sorted(points))) for name, points in series.items()}


def plot(results: List[SectionResult], path: Path) -> bool:
    """Log-log panels: time and peak memory against sequence length for the "layer" (encoder
    and decoder side: every candidate, Megalodon's dashed in its Mega twin's colour) and "ema" sections, and step time and matmul efficiency against width
    for the "lm" section, where present; returns False when none of them ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length_axis = ("length", "sequence length (tokens per batch constant)")
    panels = []  # (title, rows, group key, (x key, x label), y key, y label)
    by_name = {result.name: result for result in results}
    if "layer" in by_name:
        for side in ("encoder", "decoder"):
            rows = [row for row in by_name["layer"].rows if row["side"] == side]
            panels.append((f"one {side} layer: forward+backward time", rows, "model", length_axis, "median_s", "seconds"))
            panels.append((f"one {side} layer: peak memory", rows, "model", length_axis, "peak_mib", "MiB"))
    if "ema" in by_name:
        rows = []
        for row in by_name["ema"].rows:
            for side in ("ours", "straightforward"):
                rows.append(dict(length=row["length"], name=f"{side} ({row['direction']})",
                                 median_s=row[f"{side}_median_s"], peak_mib=row[f"{side}_peak_mib"]))
        panels.append(("EMA alone: forward+backward time", rows, "name", length_axis, "median_s", "seconds"))
        panels.append(("EMA alone: peak memory", rows, "name", length_axis, "peak_mib", "MiB"))
    if "lm" in by_name:
        rows = [dict(row, curve=f"{row['model']} @ {row['length']}"
                     + (f" (chunk {row['chunk']})" if row["model"] == "mega" and row["chunk"] else "")
                     + f", {row['dropout']}")
                for row in by_name["lm"].rows]
        width_axis = ("width", "model width (4 layers, 4096 tokens per batch)")
        panels.append(("whole LM: forward+backward time", rows, "curve", width_axis, "median_s", "seconds"))
        panels.append(("whole LM: matmul FLOP/s / the fp32 matmul rate", rows, "curve", width_axis, "efficiency",
                       "efficiency"))
    if not panels:
        return False
    figure, axes = plt.subplots(math.ceil(len(panels) / 2), 2, figsize=(12, 3.6 * math.ceil(len(panels) / 2)),
                                squeeze=False)
    for axis, (title, rows, group, (x_key, x_label), y_key, y_label) in zip(axes.flat, panels):
        colours: Dict[str, str] = {}
        for name, (xs, values) in _series(rows, group, x_key, y_key).items():
            twin = mega_twin(str(name))
            style = dict(linestyle="--", marker="s", color=colours[twin]) if twin in colours else dict(marker="o")
            (line,) = axis.plot(xs, values, label=name, **style)
            colours[name] = line.get_color()
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel(x_label)
        axis.set_ylabel(y_label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True

"""What every benchmark section receives and returns."""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional


@dataclass
class SectionOptions:
    """quick: tiny sizes and one repetition (the CI smoke run); repeats: timed repetitions
    per candidate; work_dir: scratch space (data, checkpoints); progress: show tqdm bars;
    device: the torch device the "layer" section runs on ("cpu", "cuda", "cuda:1"; the other
    sections run on the CPU only); training_only: a regular expression, the "training"
    section runs only the comparisons whose label it matches (None: all)."""

    quick: bool
    repeats: int
    work_dir: Path
    progress: bool = True
    device: str = "cpu"
    training_only: Optional[str] = None


@dataclass
class Target:
    """One ratio with its bar, e.g. name="chunk-128 vs transformer time at 4096",
    measured=4.2, bar=">= 3", met=True."""

    name: str
    measured: Optional[float]
    bar: str
    met: bool
    detail: str = ""
    # a comparison the issue sets no bar for, reported to show where Mega stands
    informative: bool = False


@dataclass
class SectionResult:
    """rows: one dict per measured configuration (JSON-serialisable, a ``label`` key
    naming it); targets: the ratios the issue sets bars for; notes: how baselines were
    matched, what was measured."""

    name: str
    rows: List[dict] = field(default_factory=list)
    targets: List[Target] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "rows": self.rows, "targets": [asdict(t) for t in self.targets],
                "notes": self.notes}


def at_least(name: str, measured: Optional[float], bar: float, detail: str = "") -> Target:
    """measured None (not measurable, e.g. too small) counts as not met."""
    return Target(name, measured, f">= {bar:.3g}", measured is not None and measured >= bar, detail)


def informative(name: str, measured: Optional[float], detail: str = "") -> Target:
    """A ratio without a bar (>= 1 means Mega is ahead); never counts as a missed target."""
    return Target(name, measured, "(>= 1 means Mega ahead)", measured is not None and measured >= 1,
                  detail, informative=True)


def reported(name: str, measured: Optional[float], detail: str = "") -> Target:
    """A measurement without a bar that is not a Mega-vs-baseline ratio (e.g. an efficiency)."""
    return Target(name, measured, "(no bar)", False, detail, informative=True)


def at_most(name: str, measured: Optional[float], bar: float, detail: str = "") -> Target:
    return Target(name, measured, f"<= {bar:.3g}", measured is not None and measured <= bar, detail)

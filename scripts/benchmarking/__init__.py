"""The sections of ``scripts/benchmark.py``: each module measures one thing side by side
and returns rows (one per measured configuration) and targets (ratios with their bar)."""

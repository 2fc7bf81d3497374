"""The sections of ``scripts/benchmark.py`` (``layer_scaling``, ``ema_kernel``, ``hf_port``,
``generation``, ``training``): each module measures one thing side by side and returns
rows (one per measured configuration) and targets (ratios with their bar). What they
share: ``measure`` (alternating timing, peak memory), ``results`` (what a section returns),
``report`` (tables and plot), ``candidates`` (the models "generation" and "training"
compare) and ``hf_harness`` (building and running the Hugging Face port's block, also
used by the equivalence tests)."""

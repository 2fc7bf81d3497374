"""Evaluation helpers for Mega models (e.g. long-context LM scoring with carried state)."""

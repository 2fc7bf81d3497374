"""Mega models; importing this package registers them with fairseq."""

from mega_fairseq.models.mega_lm import MegaLanguageModel  # noqa: F401

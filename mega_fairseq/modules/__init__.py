"""Mega modules; importing mega_fairseq registers them with fairseq."""

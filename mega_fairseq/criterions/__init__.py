"""Mega criterions; importing mega_fairseq registers them with fairseq."""

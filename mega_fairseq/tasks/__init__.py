"""Mega tasks; importing mega_fairseq registers them with fairseq."""

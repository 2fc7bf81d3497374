"""Conversions between Mega implementations: weight mapping to and from the Hugging Face
port (:mod:`mega_fairseq.conversion.hf_mega`: blocks; :mod:`mega_fairseq.conversion.hf_models`:
whole ``save_pretrained`` models, both ways), and checkpoints of the original research
code (facebookresearch/mega) to our models (:mod:`mega_fairseq.conversion.original_mega`).
Nothing here imports ``transformers`` at import time."""

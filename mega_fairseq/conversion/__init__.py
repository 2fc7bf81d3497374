"""Conversions between Mega implementations: weight mapping to and from the Hugging Face
port (:mod:`mega_fairseq.conversion.hf_mega`). Nothing here imports ``transformers`` at
import time."""

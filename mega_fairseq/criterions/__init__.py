"""Mega criterions; importing mega_fairseq registers them with fairseq."""
from mega_fairseq.criterions import token_classification  # noqa: F401,E402
from mega_fairseq.criterions import span_prediction  # noqa: F401,E402
from mega_fairseq.criterions import lra_cross_entropy  # noqa: F401,E402

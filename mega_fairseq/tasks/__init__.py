"""Mega tasks; importing mega_fairseq registers them with fairseq."""
from mega_fairseq.tasks import token_classification  # noqa: F401,E402
from mega_fairseq.tasks import span_prediction  # noqa: F401,E402
from mega_fairseq.tasks import lra_text  # noqa: F401,E402
from mega_fairseq.tasks import lra_image  # noqa: F401,E402
from mega_fairseq.tasks import speech_commands  # noqa: F401,E402
from mega_fairseq.tasks import segment_language_modeling  # noqa: F401,E402

"""Mega models; importing this package registers them with fairseq."""

from mega_fairseq.models.mega_lm import MegaLanguageModel  # noqa: F401
from mega_fairseq.models.mega_translation import MegaModel  # noqa: F401
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel  # noqa: F401
from mega_fairseq.models import mega_encoder_presets  # noqa: F401

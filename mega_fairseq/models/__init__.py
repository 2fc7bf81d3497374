"""Mega models; importing this package registers them with fairseq."""

from mega_fairseq.models.mega_lm import MegaLanguageModel  # noqa: F401
from mega_fairseq.models.megalodon_lm import MegalodonLanguageModel  # noqa: F401
from mega_fairseq.models.mega_translation import MegaModel  # noqa: F401
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel  # noqa: F401
from mega_fairseq.models import mega_encoder_presets  # noqa: F401
from mega_fairseq.models.mega_sc_raw import MegaSCRawModel  # noqa: F401
from mega_fairseq.models.raw_audio_cnn import RawAudioCNNModel  # noqa: F401

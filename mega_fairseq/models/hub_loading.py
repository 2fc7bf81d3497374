"""Loading a checkpoint for a hub interface (the models' ``from_pretrained``).

fairseq's :func:`fairseq.hub_utils.from_pretrained` builds whatever model the checkpoint's
config names, so ``MegaLanguageModel.from_pretrained`` on a fairseq ``transformer_lm``
checkpoint would quietly hand back a transformer.  :func:`load_for_hub` loads through
fairseq's function and refuses a checkpoint of another model type, naming that type,
before any hub interface is built around it.
"""

import os
from typing import Any, Dict

from fairseq import hub_utils
from fairseq.utils import safe_getattr

from mega_fairseq.errors import MissingDataError


def load_for_hub(model_class, label: str, model_name_or_path, checkpoint_file: str,
                 data_name_or_path: str, **overrides) -> Dict[str, Any]:
    """fairseq's ``{"args": cfg, "task": task, "models": [model, ...]}`` for the checkpoint
    file(s) ``checkpoint_file`` (``os.pathsep``-separated for an ensemble) in
    ``model_name_or_path``, with the dictionaries read from ``data_name_or_path``
    (relative to the model folder when it starts with ``.``) and ``overrides`` replacing
    saved options (``bpe``, ``sentencepiece_model``, ...).

    Raises MissingDataError (a FileNotFoundError) for a model folder that does not exist,
    ValueError when a loaded model is not a ``model_class`` (``label`` describes the
    expected model in the message)."""
    if isinstance(model_name_or_path, os.PathLike):
        model_name_or_path = os.fspath(model_name_or_path)
    archive_map = model_class.hub_models()
    if (isinstance(model_name_or_path, str) and model_name_or_path not in archive_map
            and "://" not in model_name_or_path and not os.path.exists(model_name_or_path)):
        # (fairseq's loader would log the miss and fail later on a None path)
        raise MissingDataError(
            f"model folder {model_name_or_path} does not exist; pass the folder holding "
            f"{checkpoint_file} (and, unless data_name_or_path says otherwise, its dict.txt)"
        )
    loaded = hub_utils.from_pretrained(
        model_name_or_path,
        checkpoint_file,
        data_name_or_path,
        archive_map=archive_map,
        **overrides,
    )
    for model in loaded["models"]:
        if not isinstance(model, model_class):
            found = type(model).__name__
            arch = safe_getattr(safe_getattr(loaded["args"], "model", None), "_name", None)
            arch_text = f" (--arch {arch})" if arch else ""
            raise ValueError(
                f"{checkpoint_file} in {model_name_or_path} holds a {found} model{arch_text}, "
                f"not {label}; load it with {found}.from_pretrained"
            )
    return loaded

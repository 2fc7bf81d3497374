"""Writing a converted model as a fairseq checkpoint folder: ``model.pt`` plus the
dictionary files its task reads, loadable by ``fairseq-eval-lm``, ``fairseq-generate``,
``fairseq-interactive``, ``fairseq-validate`` and the hub interfaces (``--user-dir
mega_fairseq``), and by torch's safe loader (the file holds only containers, strings,
numbers and tensors: no pickled classes).

The folder appears all at once (:mod:`~mega_fairseq.conversion.output_folder`; an existing
non-empty folder is refused), so a failed conversion leaves nothing behind.
"""

import os
from typing import Any, Dict

import torch
from omegaconf import OmegaConf

from mega_fairseq.conversion.converted import ConvertedModel
from mega_fairseq.conversion.output_folder import new_output_folder

CHECKPOINT_NAME = "model.pt"


def task_dictionary_files(task) -> Dict[str, Any]:
    """{relative path: Dictionary} of the files ``task`` reads its dictionaries from:
    ``dict.txt`` (language modelling, masked LM, sentence prediction's input ...),
    ``dict.<lang>.txt`` (translation), ``input0/dict.txt``, ``label/dict.txt`` (and
    ``input1/dict.txt`` when paired) for the plugin's lra-text task, ``input0/dict.txt``
    (and ``label/dict.txt`` for classification) for sentence_prediction; none for
    lra-image and speech_commands."""
    name = type(task).__name__
    if name == "TranslationTask":
        return {f"dict.{task.cfg.source_lang}.txt": task.src_dict,
                f"dict.{task.cfg.target_lang}.txt": task.tgt_dict}
    if name == "LRATextTask":
        files = {os.path.join("input0", "dict.txt"): task.source_dictionary,
                 os.path.join("label", "dict.txt"): task.label_dictionary}
        if task.cfg.paired:  # the second documents are binarized with the same dictionary
            files[os.path.join("input1", "dict.txt")] = task.source_dictionary
        return files
    if name in ("LRAImageTask", "SpeechCommandsTask"):  # no dictionary files
        return {}
    if name == "SentencePredictionTask":
        files = {os.path.join("input0", "dict.txt"): task.source_dictionary}
        if task.label_dictionary is not None and not task.cfg.regression_target:
            files[os.path.join("label", "dict.txt")] = task.label_dictionary
        return files
    labels = getattr(task, "label_dictionary", None)
    files = {"dict.txt": task.source_dictionary}
    if labels is not None:
        files[os.path.join("label", "dict.txt")] = labels
    return files


def fairseq_config(converted: ConvertedModel, data_dir: str) -> dict:
    """The ``cfg`` of the checkpoint as plain containers: every fairseq section at its
    default, ``model`` from the converted config, ``task`` from the task's config with
    ``data`` = ``data_dir``."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    model_name = _registered_name(type(converted.cfg), MODEL_DATACLASS_REGISTRY, "model config")
    task_name = _registered_name(type(converted.task), TASK_REGISTRY, "task")
    # hydra-era tasks keep their config as ``cfg``, fairseq's legacy ones as ``args``
    task_config = getattr(converted.task, "cfg", None) or converted.task.args
    model_cfg = OmegaConf.to_container(OmegaConf.structured(converted.cfg), resolve=False, enum_to_str=True)
    task_cfg = OmegaConf.to_container(OmegaConf.structured(task_config), resolve=False, enum_to_str=True)
    task_cfg["data"] = data_dir
    cfg = OmegaConf.to_container(OmegaConf.structured(FairseqConfig()), resolve=False, enum_to_str=True)
    cfg["common"]["user_dir"] = None
    # interpolations (``${task.tokens_per_sample}``, ``${common.seed}``) become their
    # values, so that the saved config stands alone
    sections = dict(cfg, task=task_cfg)
    cfg["model"] = dict({k: _standalone(v, sections, k) for k, v in model_cfg.items()},
                        _name=model_name, arch=model_name)
    cfg["task"] = dict({k: _standalone(v, sections, k) for k, v in task_cfg.items()}, _name=task_name)
    return cfg


def _registered_name(registered_class, registry, what: str) -> str:
    for name, registered in registry.items():
        if registered is registered_class:
            return name
    raise ValueError(f"the converted {what} {registered_class.__name__} is not registered with fairseq")


def _standalone(value, sections: Dict[str, dict], option: str):
    """``value``, or for an interpolation ``${section.name}`` the value it stands for
    (itself resolved the same way)."""
    seen = []
    while isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        reference = value[2:-1]
        section, _, name = reference.partition(".")
        if reference in seen or name not in (sections.get(section) or {}):
            raise ValueError(f"option {option} of the converted config refers to {reference}, which "
                             "the checkpoint does not hold; set it explicitly")
        seen.append(reference)
        value = sections[section][name]
    return value


def checkpoint_state(converted: ConvertedModel, data_dir: str) -> dict:
    """The dict fairseq's ``load_checkpoint_to_cpu`` reads (cfg, model, an empty
    optimizer history)."""
    state = {k: v.detach().cpu().contiguous() for k, v in converted.model.state_dict().items()}
    return {
        "cfg": fairseq_config(converted, data_dir),
        "model": state,
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {},
        "last_optimizer_state": None,
        "args": None,
    }


def write_checkpoint_folder(converted: ConvertedModel, output_dir: str) -> str:
    """Write ``output_dir``/``model.pt`` and the task's dictionary files; returns the
    checkpoint path. ``output_dir`` must not exist or be empty."""
    output_dir = os.path.abspath(output_dir)
    with new_output_folder(output_dir) as temporary:
        for relative, dictionary in task_dictionary_files(converted.task).items():
            path = os.path.join(temporary, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            dictionary.save(path)
        torch.save(checkpoint_state(converted, output_dir), os.path.join(temporary, CHECKPOINT_NAME))
        torch.load(os.path.join(temporary, CHECKPOINT_NAME), map_location="cpu", weights_only=True)
    return os.path.join(output_dir, CHECKPOINT_NAME)

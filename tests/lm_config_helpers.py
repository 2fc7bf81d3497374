"""Building ``mega_lm`` models in-process exactly the way fairseq's entry points do:
the command line (``fairseq-train``'s option parsing) and hydra/YAML configs
(``fairseq-hydra-train``'s config composition), without training anything."""

from pathlib import Path
from typing import Dict, Iterable

from omegaconf import OmegaConf

from fairseq import options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import mega_fairseq  # noqa: F401  (registers mega_lm and its architectures, like --user-dir)

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "mega_fairseq")


def write_dictionary(directory: Path, words: int) -> Path:
    """A data directory holding only dict.txt with ``words`` symbols (what the
    language_modeling task reads to build a model)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "dict.txt", "w") as handle:
        for i in range(words):
            handle.write(f"w{i} {words - i}\n")
    return directory


def parse_command_line(data: Path, argv: Iterable[str]):
    """``fairseq-train DATA --task language_modeling --user-dir mega_fairseq ARGV``'s
    parsed options (argparse exits with status 2 on a bad option)."""
    parser = options.get_training_parser()
    return options.parse_args_and_arch(
        parser,
        input_args=[str(data), "--task", "language_modeling", "--user-dir", USER_DIR, *map(str, argv)],
    )


def build_from_command_line(data: Path, *argv: str):
    """(config, model) as fairseq-train builds them from a command line."""
    cfg = convert_namespace_to_omegaconf(parse_command_line(data, argv))
    return cfg, _build(cfg)


def build_from_arguments(data: Path, *argv: str):
    """The model of a command line through fairseq's argparse-namespace path
    (``task.build_model(args)``): the same presets and options as
    :func:`build_from_command_line` without the hydra conversion, which costs a second or
    more per call."""
    args = parse_command_line(data, argv)
    return tasks.setup_task(args).build_model(args)


def build_from_yaml(
    config_dir: Path, task: Dict, model: Dict, name: str = "mega_lm_test", overrides=()
):
    """(config, model) as ``fairseq-hydra-train --config-dir DIR --config-name NAME`` builds
    them from a YAML file with the given ``task`` and ``model`` groups: fairseq's schema is
    stored under the config name, hydra composes it with the file, then fairseq adds the
    model/task dataclass defaults and resolves interpolations (fairseq_cli/hydra_train.py)."""
    from hydra.experimental import compose, initialize_config_dir

    from fairseq.dataclass.initialize import add_defaults, hydra_init

    config_dir.mkdir(parents=True, exist_ok=True)
    content = {"common": {"user_dir": USER_DIR, "cpu": True}, "task": task, "model": model}
    OmegaConf.save(OmegaConf.create(content), config_dir / f"{name}.yaml")
    hydra_init(name)
    with initialize_config_dir(config_dir=str(config_dir)):
        cfg = compose(config_name=name, overrides=list(overrides))
    add_defaults(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg, _build(cfg)


def _build(cfg):
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


def parameter_shapes(model) -> Dict[str, tuple]:
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def count_parameters(model) -> int:
    """Unique parameters (tied weights counted once), as fairseq-train logs them."""
    return sum(p.numel() for p in model.parameters())

"""mega-fairseq: the Mega sequence model as a fairseq plugin.

Besides the packages ``mega_fairseq`` (the plugin) and ``mega_fairseq_compat`` (fixes that
let fairseq 0.12.2 run on Python 3.11 / torch >= 2.6), this installs the one-line start-up
file ``mega_fairseq_compat.pth`` into site-packages.  It registers the lazy import hook of
``mega_fairseq_compat``, which must be active before fairseq's console scripts import
fairseq.  Regular wheels (``pip install .``) carry it through ``build_py``; editable
installs (``pip install -e .``) through the editable wheel's writer.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
STARTUP_FILE = "mega_fairseq_compat.pth"


def _startup_file_text() -> str:
    with open(os.path.join(HERE, STARTUP_FILE), encoding="utf-8") as handle:
        return handle.read()


class BuildPyWithStartupFile(build_py):
    """Puts the ``.pth`` file at the root of the wheel, i.e. into site-packages."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_file(os.path.join(HERE, STARTUP_FILE), os.path.join(self.build_lib, STARTUP_FILE))

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, STARTUP_FILE))
        return outputs


class _StrategyWithStartupFile:
    """Wraps setuptools' editable strategy and adds the ``.pth`` file to the wheel."""

    def __init__(self, strategy):
        self._strategy = strategy

    def __call__(self, wheel, files, mapping):
        self._strategy(wheel, files, mapping)
        wheel.writestr(STARTUP_FILE, _startup_file_text())

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._strategy.__exit__(*exc_info)


class EditableWheelWithStartupFile(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithStartupFile(super()._select_strategy(*args, **kwargs))


def _readme() -> str:
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
        return handle.read()


setup(
    name="mega-fairseq",
    version="0.1.0",
    description="Mega (Moving Average Equipped Gated Attention) as a fairseq plugin",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["mega_fairseq", "mega_fairseq.*", "mega_fairseq_compat"]),
    cmdclass={"build_py": BuildPyWithStartupFile, "editable_wheel": EditableWheelWithStartupFile},
    install_requires=[
        "fairseq==0.12.2",
        "torch>=2.0",
        "numpy",
        "sentencepiece",
        "sacrebleu>=2.0",
        "sacremoses",
        "tqdm",
        "matplotlib",
        # reads WAV/FLAC for the speech_commands task (its wheels bundle libsndfile)
        "soundfile",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "transformers==4.40.2"],
        # the Hugging Face port of Mega, for comparisons (scripts/benchmarking/hf_harness.py)
        "benchmark": ["transformers==4.40.2"],
        # model.safetensors of the port's folders (scripts/convert_checkpoint.py
        # --source-format hf / --to hf); pytorch_model.bin needs nothing more
        "hf": ["safetensors"],
    },
    license="MIT",
)

"""Installation of the start-up hook (regular and editable wheels) and ``--user-dir``
pointing at either the checkout or an installed copy of ``mega_fairseq``."""

import shutil
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, console_script, python_snippet, run_cli

STARTUP_FILE = "mega_fairseq_compat.pth"


def _copy_project(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


def _build(project: Path, hook: str, out: Path) -> Path:
    out.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    result = run_cli([sys.executable, "-c", code], cwd=project)
    return out / result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("hook", ["build_wheel", "build_editable"])
def test_wheels_install_the_startup_file_into_site_packages(tmp_path, hook):
    """Both ``pip install .`` and ``pip install -e .`` wheels carry the .pth at their root
    (the wheel root is installed into site-packages)."""
    project = _copy_project(tmp_path / "project")
    wheel = _build(project, hook, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        assert STARTUP_FILE in archive.namelist()
        content = archive.read(STARTUP_FILE).decode()
    assert content == (REPO / STARTUP_FILE).read_text()
    assert content.startswith("import mega_fairseq_compat;")


def test_user_dir_reuses_the_copy_already_imported(tmp_path):
    """fairseq raises 'module name is not globally unique' when --user-dir names another
    folder called mega_fairseq than the one imported; the compat layer reuses the import."""
    other_copy = tmp_path / "checkout" / "mega_fairseq"
    shutil.copytree(REPO / "mega_fairseq", other_copy, ignore=shutil.ignore_patterns("__pycache__"))
    code = textwrap.dedent(f"""
        import argparse, logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        import mega_fairseq
        from fairseq import utils
        utils.import_user_module(argparse.Namespace(user_dir={str(other_copy)!r}))
        utils.import_user_module(argparse.Namespace(user_dir='/no/such/place/mega_fairseq'))
        print('imported from', mega_fairseq.__file__)
    """)
    out = python_snippet(code).stdout
    assert "is already imported from" in out
    assert f"imported from {REPO / 'mega_fairseq' / '__init__.py'}" in out


def test_user_dir_by_name_when_folder_is_missing(tmp_path):
    """A stored or relative --user-dir that does not exist falls back to the installed copy."""
    code = textwrap.dedent("""
        import argparse, sys
        from fairseq import utils
        utils.import_user_module(argparse.Namespace(user_dir='/moved/away/mega_fairseq'))
        print('mega_fairseq' in sys.modules)
        from fairseq.models import MODEL_REGISTRY
        print('mega_lm' in MODEL_REGISTRY)
    """)
    assert python_snippet(code, cwd=tmp_path).stdout.split()[-2:] == ["True", "True"]


def test_other_user_dirs_keep_fairseq_behaviour(tmp_path):
    code = textwrap.dedent("""
        import argparse
        from fairseq import utils
        try:
            utils.import_user_module(argparse.Namespace(user_dir='/no/such/other_plugin'))
        except FileNotFoundError as error:
            print('FileNotFoundError', error)
    """)
    assert "FileNotFoundError" in python_snippet(code, cwd=tmp_path).stdout


def _venv_with_wheel(tmp_path: Path) -> Path:
    """A fresh virtual environment holding only our regular wheel; torch, fairseq and the
    other dependencies come from this environment through a plain path entry (a path line
    in a .pth file adds a folder without running that folder's own .pth files)."""
    project = _copy_project(tmp_path / "project")
    wheel = _build(project, "build_wheel", tmp_path / "dist")
    venv = tmp_path / "venv"
    run_cli([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site_packages = Path(run_cli([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site_packages)
    (site_packages / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_installed_copy_and_checkout_user_dir_end_to_end(tmp_path, shakespeare_lm_data):
    """With the package installed (regular wheel, in a fresh venv): train with --user-dir
    pointing at the checkout, then evaluate with --user-dir pointing at the installed copy
    and with the bare name; the unmodified console scripts run in that venv."""
    venv = _venv_with_wheel(tmp_path)
    python = venv / "bin" / "python"
    installed = Path(run_cli([python, "-c", "import mega_fairseq, os; print(os.path.dirname(mega_fairseq.__file__))"],
                             cwd=tmp_path).stdout.strip())
    assert installed != REPO / "mega_fairseq" and installed.is_relative_to(venv)

    save = tmp_path / "ckpt"
    run_cli([python, console_script("fairseq-train"), shakespeare_lm_data, "--user-dir", REPO / "mega_fairseq",
             "--task", "language_modeling", "--arch", "mega_lm_tiny", "--tokens-per-sample", "64",
             "--optimizer", "adam", "--lr", "2e-3", "--batch-size", "8", "--max-update", "3", "--cpu",
             "--save-dir", save, "--no-progress-bar", "--no-epoch-checkpoints"], cwd=tmp_path)
    for user_dir in (installed, "mega_fairseq"):
        result = run_cli([python, console_script("fairseq-eval-lm"), shakespeare_lm_data, "--user-dir", user_dir,
                          "--path", save / "checkpoint_last.pt", "--cpu", "--tokens-per-sample", "64",
                          "--batch-size", "8"], cwd=tmp_path)
        assert "Perplexity" in result.stderr + result.stdout

"""``--user-dir`` for a plugin that may be imported from more than one place.

fairseq's ``utils.import_user_module`` imports the folder given by ``--user-dir`` under
its base name.  If a module of that name is already imported from another folder it raises
``ImportError: ... is not globally unique``, and if the folder does not exist it raises
``FileNotFoundError``.  Both happen in ordinary use of ``mega_fairseq``:

* the package is installed and a user passes the path of a checkout (or the reverse);
* a checkpoint stores the ``user_dir`` it was trained with and fairseq imports it again on
  load, possibly on another machine where that path does not exist.

For the plugin ``mega_fairseq`` alone (recognised by its ``MEGA_FAIRSEQ_PLUGIN`` marker) the
wrapper below reuses the copy that is already imported, or imports the installed copy when
the path does not exist, and logs which copy is used.  Every other ``--user-dir`` goes to
fairseq unchanged.
"""

import functools
import importlib
import logging
import os
import sys

logger = logging.getLogger(__name__)

PLUGIN_NAME = "mega_fairseq"
_PATCH_MARK = "_mega_fairseq_user_dir"


def _is_plugin(module) -> bool:
    return getattr(module, "MEGA_FAIRSEQ_PLUGIN", False) is True


def _plugin_folder(module) -> str:
    return os.path.realpath(os.path.dirname(module.__file__))


def _reuse_plugin(user_dir: str) -> bool:
    """Return True when ``user_dir`` names mega_fairseq and an importable copy was used."""
    path = os.path.abspath(user_dir)
    if os.path.basename(os.path.normpath(path)) != PLUGIN_NAME:
        return False
    loaded = sys.modules.get(PLUGIN_NAME)
    if loaded is None:
        if os.path.exists(path):
            return False  # first import: fairseq imports the folder the user named
        try:
            loaded = importlib.import_module(PLUGIN_NAME)
        except ImportError:
            return False  # let fairseq raise its FileNotFoundError
        if not _is_plugin(loaded):
            return False
        logger.info(
            "--user-dir=%s does not exist; using the installed %s from %s",
            user_dir, PLUGIN_NAME, _plugin_folder(loaded),
        )
        return True
    if not _is_plugin(loaded):
        return False
    if os.path.realpath(path) != _plugin_folder(loaded):
        logger.info(
            "--user-dir=%s: %s is already imported from %s; using that copy",
            user_dir, PLUGIN_NAME, _plugin_folder(loaded),
        )
    return True


def apply() -> None:
    from fairseq import utils

    original = utils.import_user_module
    if getattr(original, _PATCH_MARK, False):
        return

    @functools.wraps(original)
    def import_user_module(args):
        user_dir = getattr(args, "user_dir", None)
        if user_dir is not None and _reuse_plugin(user_dir):
            return
        return original(args)

    setattr(import_user_module, _PATCH_MARK, True)
    utils.import_user_module = import_user_module

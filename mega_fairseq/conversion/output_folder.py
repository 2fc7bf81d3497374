"""A converter's output folder that appears all at once: everything is written into a
temporary folder beside it, renamed onto the final name when the block succeeds and
removed when it fails, so a failed conversion leaves nothing behind."""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from mega_fairseq.errors import OptionError


@contextlib.contextmanager
def new_output_folder(out_dir: str) -> Iterator[str]:
    """Yields the temporary folder to write into; ``out_dir`` must not exist or be empty
    (refused before anything is written)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise OptionError(f"OUTPUT_DIR {out_dir} exists and is not an empty folder; choose a new "
                          "folder (nothing was written)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".partial", dir=parent)
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's owner-only mode -> a normal folder's
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

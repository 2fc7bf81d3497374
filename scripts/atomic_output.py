"""All-or-nothing output files for the data scripts.

:class:`AtomicOutputs` hands out a temporary path next to each final output path (same
folder, so the final rename stays on one file system).  When the ``with`` block finishes
without an exception every temporary file is renamed onto its final name (``os.replace``);
when it raises, the temporary files are deleted, the folders the block created are removed
again, and files that existed before keep their old content.  So a failing script leaves
neither empty nor partial split files behind.

The scripts import it as ``atomic_output`` (``python scripts/NAME.py`` puts ``scripts/``
on ``sys.path``)::

    with AtomicOutputs() as outputs:
        with open(outputs.path(out_dir / "train.txt"), "w", encoding="utf-8") as handle:
            ...
"""

import os
import tempfile
from pathlib import Path
from typing import Dict, List, Union

PathLike = Union[str, "os.PathLike[str]"]
TEMPORARY_SUFFIX = ".partial"


class AtomicOutputs:
    """Temporary files renamed onto their final paths together, or all removed."""

    def __init__(self) -> None:
        self._temporary: Dict[Path, Path] = {}  # final path -> temporary path
        self._created_folders: List[Path] = []

    def path(self, final: PathLike) -> Path:
        """The temporary path to write instead of ``final`` (one per final path; its
        folder is created when missing)."""
        final = Path(os.path.abspath(final))
        if final not in self._temporary:
            self._make_folder(final.parent)
            handle, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.",
                                            suffix=TEMPORARY_SUFFIX)
            os.close(handle)
            self._temporary[final] = Path(name)
        return self._temporary[final]

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for directory in reversed(missing):
            directory.mkdir()
            self._created_folders.append(directory)

    def commit(self) -> None:
        """Rename every temporary file onto its final path (with the permissions a
        newly created file gets, not ``mkstemp``'s owner-only ones)."""
        mode = 0o666 & ~_umask()
        for final, temporary in self._temporary.items():
            os.chmod(temporary, mode)
            os.replace(temporary, final)
        self._temporary.clear()
        self._created_folders.clear()

    def discard(self) -> None:
        """Delete the temporary files and the folders created for them."""
        for temporary in self._temporary.values():
            try:
                temporary.unlink()
            except FileNotFoundError:
                pass
        self._temporary.clear()
        for folder in reversed(self._created_folders):
            try:
                folder.rmdir()
            except OSError:  # not empty: something else was written there
                break
        self._created_folders.clear()

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

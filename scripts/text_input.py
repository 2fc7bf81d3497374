"""Reading text input in the data scripts: a file (or bytes) that is not valid in its
encoding gives :class:`TextDecodeError`, a one-line message naming the file, the line and
the byte offset of the first bad byte, instead of a ``UnicodeDecodeError`` traceback.

The scripts import it as ``text_input`` (``python scripts/NAME.py`` puts ``scripts/`` on
``sys.path``).  Reading itself is unchanged: text mode with the caller's ``newline``; the
input is scanned for the bad byte only after decoding failed.
"""

import codecs
import contextlib
import os
from typing import Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class TextDecodeError(ValueError):
    """Text input that is not valid in its encoding, reported as one line."""

    user_facing = True


def _label(encoding: str) -> str:
    """``UTF-8`` for ``utf-8`` and ``utf-8-sig``."""
    return encoding.upper().removesuffix("-SIG")


def _describe(name: str, encoding: str, line: int, offset: int, reason: str, byte: Optional[int]) -> str:
    shown = f"byte 0x{byte:02x}" if byte is not None else "end of data"
    label = _label(encoding)
    return (f"{name}, line {line}: not {label} ({shown} at byte offset {offset}: {reason}); "
            f"convert the file to {label} (e.g. with iconv)")


def _bom_shift(encoding: str, data: bytes) -> int:
    """Bytes the codec skipped before the positions it reports: ``utf-8-sig`` counts
    error positions after a leading byte-order mark."""
    skips_bom = codecs.lookup(encoding).name == "utf-8-sig"
    return len(codecs.BOM_UTF8) if skips_bom and data.startswith(codecs.BOM_UTF8) else 0


def bytes_error(name: str, data: bytes, error: UnicodeDecodeError, encoding: str = "utf-8") -> TextDecodeError:
    """The :class:`TextDecodeError` for ``error`` raised while decoding all of ``data``."""
    offset = error.start + _bom_shift(encoding, data)
    line = data.count(b"\n", 0, offset) + 1
    byte = data[offset] if offset < len(data) else None
    return TextDecodeError(_describe(name, encoding, line, offset, error.reason, byte))


def decode_bytes(name: str, data: bytes, encoding: str = "utf-8") -> str:
    """``data`` decoded; :class:`TextDecodeError` naming ``name``, line and offset otherwise."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise bytes_error(name, data, error, encoding) from error


def locate_decode_error(path: PathLike, encoding: str = "utf-8") -> Optional[TextDecodeError]:
    """The first undecodable byte of the file ``path`` as a :class:`TextDecodeError`, or
    None if the whole file decodes.  Lines are decoded one at a time: a multi-byte UTF-8
    character never contains the newline byte, so for UTF-8 each line decodes on its own."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as error:
                start = error.start + (_bom_shift(encoding, raw) if number == 1 else 0)
                return TextDecodeError(_describe(os.fspath(path), encoding, number, offset + start,
                                                 error.reason, raw[start]))
            offset += len(raw)
    return None


def file_error(path: PathLike, error: UnicodeDecodeError, encoding: str = "utf-8") -> TextDecodeError:
    """The :class:`TextDecodeError` for ``error``, raised while decoding the file ``path``."""
    located = locate_decode_error(path, encoding)
    if located is None:  # the file decodes now: it changed since
        located = TextDecodeError(f"{os.fspath(path)}: not {_label(encoding)} ({error.reason})")
    return located


def check_text(path: PathLike, encoding: str = "utf-8", block_size: int = 1 << 22) -> None:
    """Raise :class:`TextDecodeError` if the file ``path`` does not decode (read in blocks;
    the line-by-line scan runs only to locate a bad byte)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(block_size), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise file_error(path, error, encoding) from error


@contextlib.contextmanager
def decoding(path: PathLike, encoding: str = "utf-8") -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` raised inside the block into the
    :class:`TextDecodeError` of the file ``path`` (the block reads only that file)."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise file_error(path, error, encoding) from error


def read_text(path: PathLike, encoding: str = "utf-8", newline: Optional[str] = None) -> str:
    """The whole text of ``path``; :class:`TextDecodeError` for undecodable bytes."""
    with decoding(path, encoding), open(path, encoding=encoding, newline=newline) as handle:
        return handle.read()


def iter_lines(path: PathLike, encoding: str = "utf-8", newline: Optional[str] = None) -> Iterator[str]:
    """The lines of ``path`` (line ends kept, as a text-mode file yields them);
    :class:`TextDecodeError` for undecodable bytes, raised when reading reaches them."""
    with decoding(path, encoding), open(path, encoding=encoding, newline=newline) as handle:
        yield from handle

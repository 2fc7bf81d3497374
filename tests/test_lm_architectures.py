"""Parameter counts of every registered ``mega_lm`` architecture on the paper's vocabularies.

Each preset is built the way fairseq builds it: ``--arch NAME`` through fairseq-train's
option parsing (the architecture function fills the unset options), then
``fairseq.models.build_model(args, task)`` (test_lm_derived_defaults.py checks that the
hydra config fairseq-train makes of a command line builds the same model).  Models are
built on the meta device: shapes only, no memory or initialisation time.

The Mega paper (Ma et al. 2022, Table 5) reports 252M parameters for WikiText-103 (adaptive
input/softmax, 267,735-word vocabulary) and 39M for enwik8 (bytes).  Those figures are
rounded to the nearest million, so the check is |count - paper| <= 0.5M: 0.2% of 252M and
1.3% of 39M.  This is tighter than a percentage band like 3% (+-7.6M on 252M) on purpose:
settings that are easy to get wrong move the count by more than 0.5M (a z dim of 128
instead of 256 on WikiText-103: -2.1M; 256 instead of 128 on enwik8: +0.8M; untied
adaptive softmax: +45M; one layer more or less: +-3-14M), while what the paper leaves open
stays well inside it (relative position bias size = 2 x chunk - 1 per layer: 25k on enwik8
for chunk 1024 vs 2048; the exact enwik8 byte dictionary: 56 unused bytes x 512 x 2 = 57k).

Run with ``pytest -s`` to see the table (it is also logged).
"""

import logging
from types import SimpleNamespace

import pytest
import torch

from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, build_model

from lm_config_helpers import count_parameters, parse_command_line

logger = logging.getLogger(__name__)

WIKITEXT103_WORDS = 267_735  # WikiText-103 vocabulary (the paper's word-level models)
ENWIK8_BYTES = 256  # enwik8 is modelled over bytes

ARCHITECTURES = [
    "mega_lm",
    "mega_lm_tiny",
    "mega_lm_big",
    "mega_lm_adaptive_big",
    "mega_lm_wiki103",
    "mega_lm_adaptive_base",
    "mega_lm_enwik8_base",
    "mega_lm_enwik8_large",
]
PAPER_COUNTS = {  # Table 5 of the paper, in parameters
    "mega_lm_adaptive_big": 252e6,
    "mega_lm_wiki103": 252e6,
    "mega_lm_enwik8_base": 39e6,
}
PAPER_ROUNDING = 0.5e6  # the paper gives counts to the nearest million


def _dictionary(symbols: int) -> Dictionary:
    dictionary = Dictionary()
    for i in range(symbols):
        dictionary.add_symbol(f"w{i}")
    return dictionary


@pytest.fixture(scope="module")
def dictionaries():
    return {"words": _dictionary(WIKITEXT103_WORDS), "bytes": _dictionary(ENWIK8_BYTES)}


def _task(dictionaries, arch):
    dictionary = dictionaries["bytes" if "enwik8" in arch else "words"]
    return SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)


@pytest.fixture(scope="module")
def counts(dictionaries, tmp_path_factory):
    """{arch: (vocabulary size incl. fairseq's specials, parameter count)}."""
    data = tmp_path_factory.mktemp("unused-data")  # parsing needs a DATA argument only
    result = {}
    for arch in ARCHITECTURES:
        task = _task(dictionaries, arch)
        with torch.device("meta"):
            model = build_model(parse_command_line(data, ["--arch", arch]), task)
        result[arch] = (len(task.target_dictionary), count_parameters(model))
    table = ["", f"{'architecture':<24}{'vocabulary':>12}{'parameters':>16}"]
    for arch, (vocabulary, parameters) in result.items():
        paper = PAPER_COUNTS.get(arch)
        note = f"   (paper: {paper / 1e6:.0f}M)" if paper else ""
        table.append(f"{arch:<24}{vocabulary:>12,}{parameters:>16,}  = {parameters / 1e6:.2f}M{note}")
    print("\n".join(table))
    logger.info("mega_lm parameter counts:%s", "\n".join(table))
    return result


def test_every_registered_architecture_is_counted():
    registered = {arch for arch, model in ARCH_MODEL_NAME_REGISTRY.items() if model == "mega_lm"}
    assert registered == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(PAPER_COUNTS))
def test_parameter_count_matches_paper(counts, arch):
    _, parameters = counts[arch]
    paper = PAPER_COUNTS[arch]
    assert abs(parameters - paper) <= PAPER_ROUNDING, (
        f"{arch}: {parameters:,} parameters, the paper reports {paper / 1e6:.0f}M"
    )


def test_presets_are_ordered_by_size(counts):
    """Sanity of the remaining presets: tiny < base < big; adaptive input/softmax makes
    the word-level models far smaller than the same sizes with full embeddings."""
    size = {arch: parameters for arch, (_, parameters) in counts.items()}
    assert size["mega_lm_tiny"] < size["mega_lm"] < size["mega_lm_big"]
    assert size["mega_lm_wiki103"] == size["mega_lm_adaptive_big"]
    assert size["mega_lm_adaptive_big"] < size["mega_lm_big"] / 2
    assert size["mega_lm_adaptive_base"] < size["mega_lm_adaptive_big"]
    assert size["mega_lm_enwik8_base"] < size["mega_lm_enwik8_large"]

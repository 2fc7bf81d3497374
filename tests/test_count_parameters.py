"""scripts/count_parameters.py: used-parameter counts and FFN-width matching of baselines,
checked against counts of independently built neighbours."""

import pytest

import count_parameters  # scripts/ is on sys.path (conftest)


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lm")
    (directory / "dict.txt").write_text("".join(f"w{i} {1000 - i}\n" for i in range(300)))
    return [str(directory), "--task", "language_modeling", "--tokens-per-sample", "64"]


def used(common, model_args):
    model, task = count_parameters.build_model(common, model_args)
    return count_parameters.count(model, task)[1]


TRANSFORMER_LM = ["--arch", "transformer_lm", "--decoder-layers", "2", "--decoder-embed-dim", "64",
                  "--decoder-input-dim", "64", "--decoder-output-dim", "64", "--decoder-attention-heads", "4",
                  "--share-decoder-input-output-embed"]


def test_transformer_lm_takes_only_the_decoder_width_option(lm_data):
    assert count_parameters.ffn_width_option_names(lm_data, TRANSFORMER_LM) == ["--decoder-ffn-embed-dim"]


def test_matched_width_is_the_closest(lm_data):
    target = used(lm_data, ["--arch", "mega_lm_tiny"])
    width, matched = count_parameters.match_ffn_width(lm_data, target, TRANSFORMER_LM)
    assert matched == used(lm_data, TRANSFORMER_LM + ["--decoder-ffn-embed-dim", str(width)])
    for neighbour in (width - 1, width + 1):
        other = used(lm_data, TRANSFORMER_LM + ["--decoder-ffn-embed-dim", str(neighbour)])
        assert abs(matched - target) <= abs(other - target)
    # one FFN column per layer is 2 * 64 + 1 weights: the match is within half of that per layer
    assert abs(matched - target) <= 2 * (2 * 64 + 1) // 2

"""Cross-attention weights for fairseq's alignment output (``--print-alignment``): the
decoder returns the alignment layer's weights over the columns of the source as the caller
passed it (fairseq left-pads sources; the encoder right-aligns them internally)."""

import re

import pytest
import torch

from conftest import REPO, console_script, run_cli
from lm_helpers import make_dictionary
from mt_helpers import build_translation_model, padded_batch, random_sentence

FIXTURE = REPO / "tests" / "fixtures" / "saved_checkpoints" / "translation"


def _model(**options):
    torch.manual_seed(0)
    return build_translation_model(make_dictionary(24), **options).double().eval()


def _attn(model, src_tokens, prev_output_tokens):
    with torch.no_grad():
        encoder_out = model.encoder(src_tokens)
        return model.decoder(prev_output_tokens, encoder_out=encoder_out)[1]["attn"][0]


@pytest.mark.parametrize("activation", ["softmax", "laplace"])
def test_left_padded_batch_attention_is_each_sentence_alone_in_its_columns(activation):
    model = _model(attention_activation_fn=activation)
    dictionary = model.encoder.dictionary
    sources = [random_sentence(dictionary, n, seed=n) for n in (7, 4, 5)]
    targets = [random_sentence(dictionary, 6, seed=10 + i) for i in range(3)]
    pad = dictionary.pad()
    src = padded_batch(sources, pad, left=True)
    prev = padded_batch(targets, pad, left=False)
    attn = _attn(model, src, prev)
    assert attn.shape == (3, 6, 7)
    for row, source in enumerate(sources):
        alone = _attn(model, source.unsqueeze(0), prev[row:row + 1])[0]  # 6 x len(source)
        padding = src.size(1) - len(source)
        # the sentence's weights sit in the columns of its tokens, none on the left padding
        torch.testing.assert_close(attn[row, :, padding:], alone, rtol=1e-10, atol=1e-12)
        assert torch.all(attn[row, :, :padding] == 0)
    if activation == "softmax":
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 6, dtype=attn.dtype))


def test_incremental_attention_equals_the_full_forward_row_by_row():
    model = _model()
    dictionary = model.encoder.dictionary
    src = padded_batch([random_sentence(dictionary, n, seed=n) for n in (5, 3)], dictionary.pad(), left=True)
    prev = torch.randint(dictionary.nspecial, len(dictionary), (2, 6))
    full = _attn(model, src, prev)
    state = {}
    with torch.no_grad():
        encoder_out = model.encoder(src)
        steps = [model.decoder(prev[:, :t], encoder_out=encoder_out, incremental_state=state)[1]["attn"][0]
                 for t in range(1, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-12)


def test_alignment_layer_and_training_mode():
    model = _model(decoder_layers=3)
    dictionary = model.encoder.dictionary
    src = random_sentence(dictionary, 5, seed=1).unsqueeze(0)
    prev = torch.randint(dictionary.nspecial, len(dictionary), (1, 4))
    encoder_out = model.encoder(src)
    first = model.decoder(prev, encoder_out=encoder_out, alignment_layer=0)[1]["attn"][0]
    last = model.decoder(prev, encoder_out=encoder_out)[1]["attn"][0]
    assert first.shape == last.shape == (1, 4, 5) and not torch.allclose(first, last)
    model.train()
    assert model.decoder(prev, encoder_out=encoder_out)[1]["attn"][0] is None  # not needed in training
    assert model.decoder(prev, encoder_out=encoder_out, alignment_layer=2)[1]["attn"][0] is not None


def test_interactive_print_alignment():
    """fairseq-interactive --print-alignment on a saved translation checkpoint: one
    source-target pair per target word, indices inside both sentences."""
    source = "a b c d e"
    result = run_cli([console_script("fairseq-interactive"), FIXTURE / "data", "--user-dir", REPO / "mega_fairseq",
                      "--path", FIXTURE / "checkpoint.pt", "--source-lang", "src", "--target-lang", "tgt",
                      "--beam", "2", "--max-len-b", "6", "--print-alignment", "--cpu"],
                     input_text=source + "\n", env={"OMP_NUM_THREADS": "1"})
    hypothesis = re.search(r"^H-0\t\S+\t(.*)$", result.stdout, re.M).group(1).split()
    pairs = re.search(r"^A-0\t(.*)$", result.stdout, re.M).group(1).split()
    assert len(pairs) == len(hypothesis) > 0, result.stdout[-2000:]
    for pair in pairs:
        src_index, tgt_index = map(int, pair.split("-"))
        assert 0 <= src_index < len(source.split()) and 0 <= tgt_index < len(hypothesis)

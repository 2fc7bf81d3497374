"""Device placement without a GPU: every model family runs forward, backward and
incremental decoding (with beam reordering) with its parameters and inputs on the ``meta``
device. A tensor created without ``device=`` lands on the CPU and mixing it with meta
tensors fails, and reading a value back from the device (``.item()``, ``bool(t)``,
``int(t.max())``) fails on meta, so these tests also catch host-device synchronisations in
the layers. The model-level reads that remain (one padding check per forward pass) go
through :mod:`mega_fairseq.models.padding`, which knows that meta tensors have no values.
"""

import pytest
import torch

from lm_helpers import build_lm, make_dictionary
from test_megalodon_lm import build_megalodon
from mt_helpers import build_translation_model
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel, MegaEncoderModelConfig

META = torch.device("meta")


def meta_tokens(batch, length):
    return torch.empty(batch, length, dtype=torch.long, device=META)


def assert_meta_gradients(model):
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.device == META for g in grads)


@pytest.mark.parametrize("chunk", [-1, 4])
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
@pytest.mark.parametrize("activation", ["softmax", "laplace", "relu2"])
def test_language_model_on_meta(activation, rel_pos_bias, chunk):
    dictionary = make_dictionary()
    model = build_lm(dictionary, decoder_chunk_size=chunk, attention_activation_fn=activation,
                     rel_pos_bias=rel_pos_bias, truncation_length=3).to(META)
    tokens = meta_tokens(2, 10)
    logits, _ = model(tokens)
    assert logits.device == META and logits.shape == (2, 10, len(dictionary))
    logits.sum().backward()
    assert_meta_gradients(model)

    model.eval()
    state = {}
    with torch.no_grad():
        for end in (1, 2, 5, 6):  # single steps and a block of three
            step, _ = model(tokens[:, :end], incremental_state=state)
        assert step.device == META and step.shape == (2, 1, len(dictionary))
        model.decoder.reorder_incremental_state_scripting(state, torch.tensor([1, 0], device=META))
        step, _ = model(tokens[:, :7], incremental_state=state)
    assert step.device == META


@pytest.mark.parametrize("chunk", [-1, 4])
def test_megalodon_language_model_on_meta(chunk):
    """megalodon_lm (complex EMA with its complex state, timestep norm with its running
    statistics): training, segment-recurrent training and incremental decoding with beam
    reordering, all on meta."""
    model = build_megalodon(make_dictionary(), decoder_chunk_size=chunk).float().train().to(META)
    tokens = meta_tokens(2, 10)
    logits, _ = model(tokens)
    logits.sum().backward()
    assert_meta_gradients(model)
    for first in (True, False):
        logits, _ = model(tokens, segment={"key": "train:0", "first": first})
    assert logits.device == META
    model.eval()
    state = {}
    with torch.no_grad():
        for end in (1, 2, 5, 6):
            step, _ = model(tokens[:, :end], incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, torch.tensor([1, 0], device=META))
        step, _ = model(tokens[:, :7], incremental_state=state)
    assert step.device == META and step.shape == (2, 1, len(model.decoder.dictionary))


@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("activation", ["softmax", "laplace"])
def test_translation_model_on_meta(activation, chunk):
    model = build_translation_model(attention_activation_fn=activation, encoder_chunk_size=chunk,
                                    decoder_chunk_size=chunk).to(META)
    src, prev = meta_tokens(2, 7), meta_tokens(2, 5)
    lengths = torch.empty(2, dtype=torch.long, device=META)
    logits, _ = model(src, lengths, prev)
    assert logits.device == META
    logits.sum().backward()
    assert_meta_gradients(model)

    model.eval()
    state = {}
    order = torch.tensor([1, 0], device=META)
    with torch.no_grad():
        encoder_out = model.encoder(src, lengths)
        for end in range(1, 5):
            step, _ = model.decoder(prev[:, :end], encoder_out=encoder_out, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, order)
        step, _ = model.decoder(prev[:, :5], encoder_out=encoder_out, incremental_state=state)
    assert step.device == META and step.shape[1] == 1


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_encoder_model_on_meta(norm):
    dictionary = make_dictionary(24)
    cfg = MegaEncoderModelConfig(
        encoder_embed_dim=16, encoder_hidden_dim=24, encoder_ffn_embed_dim=20, encoder_z_dim=8,
        encoder_n_dim=4, encoder_layers=2, dropout=0.1, max_source_positions=64,
        normalization_type=norm, type_vocab_size=2)
    task = type("Task", (), {"source_dictionary": dictionary})()
    model = MegaEncoderModel.build_model(cfg, task)
    model.register_classification_head("cls", num_classes=3)
    model.register_token_head("tags", num_labels=4)
    model = model.to(META)
    tokens = meta_tokens(3, 9)
    token_types = meta_tokens(3, 9)
    logits, _ = model(tokens, token_types=token_types)
    classes, _ = model(tokens, classification_head_name="cls")
    tags, _ = model(tokens, token_head_name="tags")
    assert {t.device for t in (logits, classes, tags)} == {META}
    assert classes.shape == (3, 3) and tags.shape == (3, 9, 4)
    (logits.sum() + classes.sum() + tags.sum()).backward()
    assert_meta_gradients(model)

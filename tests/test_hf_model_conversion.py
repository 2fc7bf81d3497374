"""Whole models of the Hugging Face port (transformers 4.40.2) converted to ours by
mega_fairseq.conversion.hf_models compute the port's outputs, and export back to folders
the port loads and computes the same with.

Every model is random, tiny, float32, with every weight and batch-norm statistic moved
off its initial value, saved with ``save_pretrained`` (model.safetensors and
pytorch_model.bin), converted, and compared in eval mode within 1e-5 at real positions of
a right-padded batch (the port is given attention_mask = input_ids != pad); padded
positions are meaningless in both. Left padding is not compared: the port's causal
layers give NaN with it (tests/test_hf_port_equivalence.py). A causal model with EMA
truncation is compared with the port's use_cache=False forward: with use_cache=True its
recurrent EMA ignores truncation (a defect ours does not reproduce).
"""

import json
import os

import pytest
import torch
import transformers
from transformers import (
    MegaConfig,
    MegaForCausalLM,
    MegaForMaskedLM,
    MegaForSequenceClassification,
    MegaModel,
)

import mega_fairseq  # noqa: F401  (registers the models and tasks)
from mega_fairseq.conversion import hf_models
from mega_fairseq.conversion.hf_models import (
    CLASSIFICATION_HEAD,
    HF_POOLER_HEAD,
    convert_hf_folder,
    export_to_hf,
)
from mega_fairseq.errors import DataError, MissingDataError, OptionError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

V, C, T, B = 24, 16, 16, 3
PADDING = (0, 3, 9)  # padded steps at the end of each row
TOLERANCE = 1e-5
WORDS = [f"w{i}" for i in range(4, V - 1)]
CLASSES = {"MegaForMaskedLM": MegaForMaskedLM, "MegaForCausalLM": MegaForCausalLM,
           "MegaForSequenceClassification": MegaForSequenceClassification, "MegaModel": MegaModel}

# name -> (class, MegaConfig overrides, vocabulary file written into the folder)
CASES = {
    "masked-lm-rotary-scalenorm-dense-tied-token-types": ("MegaForMaskedLM", dict(
        add_lm_hidden_dense_layer=True, add_token_type_embeddings=True, type_vocab_size=3), "vocab.json"),
    "masked-lm-simple-chunked-laplace-postnorm-layernorm-untied": ("MegaForMaskedLM", dict(
        normalization_type="layernorm", normalize_before_mega=False, normalize_before_ffn=False,
        relative_positional_bias="simple", use_chunking=True, chunk_size=8, max_positions=32,
        attention_activation="laplace", activation="gelu", add_lm_hidden_dense_layer=False,
        tie_word_embeddings=False), "vocab.json"),
    "causal-lm-rotary-batchnorm-chunked-dense-tied": ("MegaForCausalLM", dict(
        is_decoder=True, bidirectional=False, normalization_type="batchnorm", use_chunking=True,
        chunk_size=8), None),
    "causal-lm-simple-relu2-truncated-untied": ("MegaForCausalLM", dict(
        is_decoder=True, bidirectional=False, normalization_type="layernorm",
        relative_positional_bias="simple", attention_activation="relu2", truncation=6,
        add_lm_hidden_dense_layer=False, tie_word_embeddings=False, activation="gelu_accurate"), None),
    "sequence-classification-layernorm-3-labels": ("MegaForSequenceClassification", dict(
        normalization_type="layernorm", relative_positional_bias="simple", classifier_dropout=0.2,
        id2label={0: "negative", 1: "neutral", 2: "positive"}), "tokenizer.json"),
    "megamodel-encoder-with-pooler": ("MegaModel", dict(add_token_type_embeddings=True), "vocab.json"),
    "megamodel-decoder": ("MegaModel", dict(is_decoder=True, bidirectional=False,
                                            relative_positional_bias="simple"), None),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------- helpers
def hf_config(**overrides) -> MegaConfig:
    sizes = dict(vocab_size=V, hidden_size=C, num_hidden_layers=2, intermediate_size=24,
                 ema_projection_size=4, shared_representation_size=8, nffn_hidden_size=32, max_positions=32)
    return MegaConfig(**{**sizes, **overrides})


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every weight and batch-norm statistic off its initial value (tied weights move
    together: they are one tensor)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seen = set()
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("_float_tensor") or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            else:
                tensor.add_(0.1 * noise)


def write_vocabulary(folder, kind: str) -> None:
    if kind == "vocab.json":
        tokens = ["<s>", "<pad>", "</s>", "<unk>"] + WORDS + ["<mask>"]
        with open(os.path.join(folder, "vocab.json"), "w") as handle:
            json.dump({token: index for index, token in enumerate(tokens)}, handle)
    elif kind == "tokenizer.json":  # WordPiece-style specials, renamed for fairseq
        tokens = ["[CLS]", "[PAD]", "[SEP]", "[UNK]"] + WORDS + ["[MASK]"]
        data = {"model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tokens[:-1])}},
                "added_tokens": [{"id": V - 1, "content": "[MASK]", "special": True}]}
        with open(os.path.join(folder, "tokenizer.json"), "w") as handle:
            json.dump(data, handle)
        with open(os.path.join(folder, "special_tokens_map.json"), "w") as handle:
            json.dump({"mask_token": "[MASK]", "unk_token": "[UNK]"}, handle)


def save_hf_model(folder, architecture: str, overrides: dict, vocabulary, safetensors: bool = True,
                  seed: int = 0):
    """A perturbed port model saved into ``folder``; returns it in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLASSES[architecture](hf_config(**overrides))
    perturb(model, seed)
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=safetensors)
    if vocabulary:
        write_vocabulary(folder, vocabulary)
    return model


def batch(seed: int = 1, token_types: bool = False):
    """(ids B x T right-padded with <s> first, attention_mask, token types or None)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=generator)
    ids[:, 0] = 0
    for row, padded in enumerate(PADDING):
        if padded:
            ids[row, T - padded:] = 1
    types = torch.randint(0, 2, (B, T), generator=generator) if token_types else None
    return ids, ids.ne(1).long(), types


def hf_outputs(model, ids, mask, types, use_cache=None):
    """The port's outputs: {name: tensor}."""
    kwargs = dict(attention_mask=mask)
    if types is not None:
        kwargs["token_type_ids"] = types
    if use_cache is not None:
        kwargs["use_cache"] = use_cache
    with torch.no_grad():
        out = model(ids, **kwargs)
    if isinstance(model, MegaModel):
        result = {"features": out.last_hidden_state}
        if out.pooler_output is not None:
            result["pooler"] = out.pooler_output
        return result
    return {"logits": out.logits}


def our_outputs(converted, ids, types, lm_features: bool = False):
    """Our outputs under the names of :func:`hf_outputs` (``lm_features``: a mega_lm's
    features, as a decoder MegaModel's)."""
    model = converted.model
    with torch.no_grad():
        if converted.kind == "masked_lm":
            return {"logits": model(ids, token_types=types)[0]}
        if converted.kind == "classification":
            return {"logits": model(ids, classification_head_name=CLASSIFICATION_HEAD)[0]}
        if converted.kind == "encoder":
            result = {"features": model(ids, features_only=True, token_types=types)[0]}
            if HF_POOLER_HEAD in model.classification_heads:
                result["pooler"] = model(ids, classification_head_name=HF_POOLER_HEAD, token_types=types)[0]
            return result
        if lm_features:
            return {"features": model.extract_features(ids)[0]}
        return {"logits": model(ids)[0]}


def max_difference(expected, actual, mask) -> float:
    """Largest difference at real positions (pooled outputs: every row)."""
    worst = 0.0
    assert expected.keys() == actual.keys()
    for name, reference in expected.items():
        ours = actual[name]
        assert ours.shape == reference.shape, name
        if reference.dim() == 3:
            reference, ours = reference[mask.bool()], ours[mask.bool()]
        assert torch.isfinite(reference).all()
        assert reference.abs().max() > 1e-2  # not a trivially small output
        worst = max(worst, (reference - ours).abs().max().item())
    return worst


def use_cache_for(overrides):
    return False if overrides.get("truncation") else None


# ------------------------------------------------------------------ equality
@pytest.mark.parametrize("serialization", ["safetensors", "bin"])
@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_computes_the_port_output_and_round_trips(case, serialization, tmp_path):
    architecture, overrides, vocabulary = CASES[case]
    source = tmp_path / "hf"
    hf_model = save_hf_model(source, architecture, overrides, vocabulary, serialization == "safetensors")
    weights = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}[serialization]
    assert os.path.isfile(source / weights)
    ids, mask, types = batch(token_types=overrides.get("add_token_type_embeddings", False))
    expected = hf_outputs(hf_model, ids, mask, types, use_cache_for(overrides))

    converted = convert_hf_folder(str(source))
    assert not converted.model.training
    assert all(p.dtype == torch.float32 for p in converted.model.parameters())
    assert len(converted.task.source_dictionary) == V
    if converted.kind == "lm":
        expected.pop("pooler", None)  # a decoder MegaModel's pooler is dropped
    features = architecture == "MegaModel" and converted.kind == "lm"
    assert max_difference(expected, our_outputs(converted, ids, types, features), mask) < TOLERANCE

    # back to the port: the exported folder loads with from_pretrained and computes the same
    exported = export_to_hf(converted, out_dir=str(tmp_path / "exported"))
    config = json.load(open(os.path.join(exported, "config.json")))
    back_class = CLASSES[config["architectures"][0]]
    back = back_class.from_pretrained(exported).eval()
    if architecture == "MegaModel" and back_class is MegaForCausalLM:  # the decoder MegaModel
        back, expected = back.mega, {"features": expected["features"]}
    assert max_difference(expected, hf_outputs(back, ids, mask, types, use_cache_for(overrides)), mask) < TOLERANCE
    # ... and converts again to the same model
    again = convert_hf_folder(exported)
    assert again.kind == converted.kind
    assert again.task.source_dictionary.symbols == converted.task.source_dictionary.symbols
    assert max_difference(our_outputs(converted, ids, types, features), our_outputs(again, ids, types, features),
                          mask) < TOLERANCE


def test_conversion_maps_classes_options_and_vocabularies(tmp_path):
    save_hf_model(tmp_path / "clf", *CASES["sequence-classification-layernorm-3-labels"])
    converted = convert_hf_folder(str(tmp_path / "clf"))
    cfg, task = converted.cfg, converted.task
    assert converted.kind == "classification" and type(task).__name__ == "SentencePredictionTask"
    assert (cfg.no_scale_embedding, cfg.no_final_norm, cfg.sentence_rep, cfg.pooler_dropout) == (True, True, "cls", 0.2)
    assert task.label_dictionary.symbols[4:] == ["negative", "neutral", "positive"]
    symbols = task.source_dictionary.symbols
    assert symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and symbols[-1] == "<mask>" and symbols[4] == "w4"
    assert any("[CLS]" in note and "[MASK]" in note for note in converted.notes)

    save_hf_model(tmp_path / "clm", *CASES["causal-lm-rotary-batchnorm-chunked-dense-tied"])
    lm = convert_hf_folder(str(tmp_path / "clm"))
    assert (lm.kind, type(lm.model).__name__, lm.cfg.lm_head_type, lm.cfg.output_projection_bias) == (
        "lm", "MegaLanguageModel", "dense_tanh", True)
    assert lm.cfg.share_decoder_input_output_embed and lm.cfg.decoder_chunk_size == 8
    assert lm.task.source_dictionary.symbols[5] == "<hf_token_5>"
    assert any("placeholders" in note for note in lm.notes)


def test_regression_head_and_half_precision_weights(tmp_path):
    architecture, overrides, vocabulary = CASES["sequence-classification-layernorm-3-labels"]
    overrides = {k: v for k, v in overrides.items() if k != "id2label"}
    port = save_hf_model(tmp_path / "hf", architecture, dict(overrides, num_labels=1), vocabulary, seed=3)
    port.half().save_pretrained(str(tmp_path / "hf"))  # float16 weights, config torch_dtype float16
    converted = convert_hf_folder(str(tmp_path / "hf"))
    assert converted.task.cfg.regression_target and converted.task.cfg.num_classes == 1
    assert any("['torch.float16'] are converted to float32" in note for note in converted.notes)
    ids, mask, _ = batch()
    assert max_difference(hf_outputs(port.float(), ids, mask, None), our_outputs(converted, ids, None),
                          mask) < TOLERANCE
    exported = export_to_hf(converted, out_dir=str(tmp_path / "back"))
    config = json.load(open(os.path.join(exported, "config.json")))
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "LABEL_0"}


def test_a_stored_copy_of_a_tied_weight_must_equal_the_embedding(tmp_path):
    folder = tmp_path / "mlm"
    save_hf_model(folder, *CASES["masked-lm-rotary-scalenorm-dense-tied-token-types"], safetensors=False)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert torch.equal(state["mlm_head.weight"], state["mega.embedding_layer.word_embeddings.weight"])
    state["mlm_head.weight"] = state["mlm_head.weight"] + 1.0
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(DataError, match="mlm_head.weight differs from the embeddings, but .* tie_word_embeddings=true"):
        convert_hf_folder(str(folder))


def test_sharded_weights(tmp_path):
    architecture, overrides, vocabulary = CASES["causal-lm-rotary-batchnorm-chunked-dense-tied"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        port = MegaForCausalLM(hf_config(**overrides))
    perturb(port, 0)
    port.eval().save_pretrained(str(tmp_path), max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    ids, mask, _ = batch()
    converted = convert_hf_folder(str(tmp_path))
    assert max_difference(hf_outputs(port, ids, mask, None), our_outputs(converted, ids, None), mask) < TOLERANCE


def test_port_decoder_forward_with_cache_ignores_truncation(tmp_path):
    """Why the truncated causal model is compared with use_cache=False: the port's default
    decoder forward runs its recurrent EMA over the whole history (the note says so)."""
    architecture, overrides, vocabulary = CASES["causal-lm-simple-relu2-truncated-untied"]
    port = save_hf_model(tmp_path, architecture, overrides, vocabulary)
    ids, mask, _ = batch()
    converted = convert_hf_folder(str(tmp_path))
    ours = our_outputs(converted, ids, None)
    assert max_difference(hf_outputs(port, ids, mask, None, use_cache=False), ours, mask) < TOLERANCE
    assert max_difference(hf_outputs(port, ids, mask, None, use_cache=True), ours, mask) > 1e-3
    assert any("ignores truncation=6" in note for note in converted.notes)


@pytest.mark.parametrize("case", ["causal-lm-rotary-batchnorm-chunked-dense-tied",
                                  "causal-lm-simple-relu2-truncated-untied"])
def test_converted_lm_decodes_step_by_step_what_its_full_forward_computes(case, tmp_path):
    """Where the port's incremental decoding is wrong (chunked, relu2), ours is not."""
    save_hf_model(tmp_path, *CASES[case])
    model = convert_hf_folder(str(tmp_path)).model
    ids = torch.randint(4, V, (2, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(ids)[0]
        state = {}
        steps = torch.stack([model.decoder(ids[:, : t + 1], incremental_state=state)[0][:, -1]
                             for t in range(T)], dim=1)
    assert (steps - full).abs().max() < TOLERANCE


def test_decoder_megamodel_drops_its_pooler(tmp_path):
    save_hf_model(tmp_path, *CASES["megamodel-decoder"])
    converted = convert_hf_folder(str(tmp_path))
    assert converted.kind == "lm" and converted.cfg.share_decoder_input_output_embed
    assert any("pooler" in note and "dropped" in note for note in converted.notes)


def test_written_checkpoint_loads_in_fairseq_and_exports_from_the_file(tmp_path):
    """Through the checkpoint writer and fairseq's loader: the options added for the port
    (--no-final-norm, --lm-head-type, --output-projection-bias) survive the checkpoint."""
    from fairseq import checkpoint_utils

    from mega_fairseq.conversion.checkpoint_writer import write_checkpoint_folder

    for name in ("causal-lm-rotary-batchnorm-chunked-dense-tied",
                 "masked-lm-rotary-scalenorm-dense-tied-token-types",
                 "sequence-classification-layernorm-3-labels"):
        architecture, overrides, vocabulary = CASES[name]
        hf_model = save_hf_model(tmp_path / name, architecture, overrides, vocabulary)
        converted = convert_hf_folder(str(tmp_path / name))
        path = write_checkpoint_folder(converted, str(tmp_path / f"{name}-fairseq"))
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([path])
        loaded = type(converted)(converted.kind, models[0].eval(), converted.cfg, converted.task)
        ids, mask, types = batch(token_types=overrides.get("add_token_type_embeddings", False))
        assert max_difference(our_outputs(converted, ids, types), our_outputs(loaded, ids, types), mask) == 0.0
        exported = hf_models.export_checkpoint_to_hf(path, str(tmp_path / f"{name}-back"))
        back = CLASSES[architecture].from_pretrained(exported).eval()
        assert max_difference(hf_outputs(hf_model, ids, mask, types), hf_outputs(back, ids, mask, types),
                              mask) < TOLERANCE


# ------------------------------------------------------------------ bad input
@pytest.fixture
def masked_lm_folder(tmp_path):
    folder = tmp_path / "mlm"
    save_hf_model(folder, *CASES["masked-lm-rotary-scalenorm-dense-tied-token-types"])
    return folder


def edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None and key in config:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def edit_weights(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_not_a_folder_and_no_config(tmp_path):
    with pytest.raises(MissingDataError, match="is not a folder"):
        convert_hf_folder(str(tmp_path / "nothing-here"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(MissingDataError, match="is not a folder"):
        convert_hf_folder(str(tmp_path / "file.bin"))
    with pytest.raises(MissingDataError, match="has no config.json"):
        convert_hf_folder(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="config.json is not a JSON file"):
        convert_hf_folder(str(tmp_path))


def test_unknown_architecture_and_model_type(masked_lm_folder):
    edit_config(masked_lm_folder, architectures=["MegaForTokenClassification"])
    with pytest.raises(DataError, match="MegaForTokenClassification is not converted; convertible classes"):
        convert_hf_folder(str(masked_lm_folder))
    edit_config(masked_lm_folder, architectures=None)
    with pytest.raises(DataError, match="architectures=None must name exactly one"):
        convert_hf_folder(str(masked_lm_folder))
    edit_config(masked_lm_folder, architectures=["MegaForMaskedLM"], model_type="bert")
    with pytest.raises(DataError, match="model_type='bert' cannot be converted"):
        convert_hf_folder(str(masked_lm_folder))


@pytest.mark.parametrize("changes, message", [
    (dict(normalization_type="rmsnorm"), "normalization_type='rmsnorm' cannot be converted: the port's MegaRMSNorm"),
    (dict(use_normalized_ffn=False), "use_normalized_ffn=False cannot be converted"),
    (dict(normalize_before_ffn=False), "normalize_before_ffn=False cannot be converted: differs"),
    (dict(pad_token_id=0), "pad_token_id=0 cannot be converted: fairseq's <pad> is index 1"),
    (dict(bidirectional=False), "bidirectional=False cannot be converted"),
    (dict(is_decoder=True), "is_decoder=True cannot be converted"),
    (dict(add_cross_attention=True), "add_cross_attention=True cannot be converted"),
    (dict(activation="tanh"), "activation='tanh' cannot be converted: our models offer"),
    (dict(dropout_prob=1.5), r"dropout_prob=1.5 cannot be converted: must be a probability"),
    (dict(use_chunking=True, chunk_size=-1), "chunk_size=-1 cannot be converted: use_chunking=true"),
    (dict(relative_positional_bias="simple", chunk_size=64), "chunk_size=64 cannot be converted: the port reads"),
])
def test_refused_config_fields(masked_lm_folder, changes, message):
    edit_config(masked_lm_folder, **changes)
    with pytest.raises(DataError, match=message):
        convert_hf_folder(str(masked_lm_folder))


def test_missing_unexpected_and_misshapen_weights(masked_lm_folder, tmp_path):
    edit_weights(masked_lm_folder, lambda s: s.pop("mega.layers.1.mega_layer.v_proj.bias"))
    with pytest.raises(DataError, match=r"missing keys \['mega.layers.1.mega_layer.v_proj.bias'\]"):
        convert_hf_folder(str(masked_lm_folder))
    edit_weights(masked_lm_folder, lambda s: s.update({"mega.layers.1.mega_layer.v_proj.bias": torch.zeros(24),
                                                       "extra.weight": torch.zeros(2)}))
    with pytest.raises(DataError, match=r"unexpected keys \['extra.weight'\]"):
        convert_hf_folder(str(masked_lm_folder))
    edit_weights(masked_lm_folder, lambda s: s.pop("extra.weight"))
    edit_config(masked_lm_folder, intermediate_size=20)
    with pytest.raises(DataError, match=r"mega.layers.0.mega_layer.v_proj.weight has shape \(24, 16\).*needs \(20, 16\)"):
        convert_hf_folder(str(masked_lm_folder))
    edit_config(masked_lm_folder, intermediate_size=24, vocab_size=30)
    with pytest.raises(DataError, match="the embedding has 24 rows but .*vocab_size=30"):
        convert_hf_folder(str(masked_lm_folder))
    edit_config(masked_lm_folder, vocab_size=V)
    os.remove(masked_lm_folder / "model.safetensors")
    with pytest.raises(MissingDataError, match="has no weights"):
        convert_hf_folder(str(masked_lm_folder))
    (masked_lm_folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="is not a readable safetensors file"):
        convert_hf_folder(str(masked_lm_folder))


def test_vocabulary_problems(masked_lm_folder):
    vocab = masked_lm_folder / "vocab.json"
    tokens = json.loads(vocab.read_text())
    vocab.write_text(json.dumps({**tokens, "extra": V}))
    with pytest.raises(DataError, match=f"vocab.json has {V + 1} tokens but the model's embedding has {V} rows"):
        convert_hf_folder(str(masked_lm_folder))
    vocab.write_text(json.dumps({t: i for t, i in tokens.items() if t != "<mask>"}))
    with pytest.raises(DataError, match=f"vocab.json has {V - 1} tokens but"):
        convert_hf_folder(str(masked_lm_folder))
    vocab.write_text(json.dumps({**tokens, "<mask>": 5}))
    with pytest.raises(DataError, match="vocab.json: id 5 belongs to both 'w5' and '<mask>'"):
        convert_hf_folder(str(masked_lm_folder))
    os.remove(vocab)  # placeholders: no mask token for the masked_lm task
    with pytest.raises(DataError, match="the vocabulary has no mask token"):
        convert_hf_folder(str(masked_lm_folder))


# ------------------------------------------------------------------ export refusals
def test_export_refuses_what_the_port_cannot_compute(tmp_path):
    from mega_fairseq.conversion.hf_models import build_dictionary
    from mega_fairseq.models.mega_encoder_model import MegaEncoderModel, MegaEncoderModelConfig
    from mega_fairseq.models.mega_lm import MegaLanguageModel, MegaLanguageModelConfig
    from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
    from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

    dictionary = build_dictionary(["<s>", "<pad>", "</s>", "<unk>"] + WORDS + ["<mask>"])
    sizes = dict(encoder_embed_dim=C, encoder_hidden_dim=24, encoder_z_dim=8, encoder_n_dim=4,
                 encoder_ffn_embed_dim=32, encoder_layers=1, max_source_positions=32)
    task = MaskedLMTask(MaskedLMConfig(data=str(tmp_path), tokens_per_sample=32), dictionary)
    model = MegaEncoderModel.build_model(MegaEncoderModelConfig(**sizes), task)  # our defaults
    with pytest.raises(OptionError) as error:
        export_to_hf(model, dictionary, str(tmp_path / "out"))
    for reason in ("scaled by sqrt(embed dim)", "a norm follows the last block", "has a LayerNorm"):
        assert reason in str(error.value)
    assert not (tmp_path / "out").exists()

    lm_sizes = {k.replace("encoder", "decoder").replace("max_source", "max_target"): v for k, v in sizes.items()}
    lm_task = LanguageModelingTask(LanguageModelingConfig(data=str(tmp_path), tokens_per_sample=32), dictionary)
    lm = MegaLanguageModel.build_model(MegaLanguageModelConfig(
        **lm_sizes, tokens_per_sample=32, normalization_type="rmsnorm", no_scale_embedding=True,
        no_final_norm=True), lm_task)
    with pytest.raises(OptionError, match="norm_type='rmsnorm': the port's MegaRMSNorm does not normalise"):
        export_to_hf(lm, dictionary, str(tmp_path / "out"))


def test_export_writes_all_or_nothing(masked_lm_folder, tmp_path, monkeypatch):
    converted = convert_hf_folder(str(masked_lm_folder))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises(OptionError, match="exists and is not an empty folder"):
        export_to_hf(converted, out_dir=str(occupied))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_models, "_write_weights", fail)
    with pytest.raises(OSError, match="disk full"):
        export_to_hf(converted, out_dir=str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_transformers_release():
    assert transformers.__version__ == hf_models.TRANSFORMERS_VERSION

"""The ``mega_encoder`` model (RoBERTa-like bidirectional Mega): padding invariance,
bidirectionality, heads and pooling, tied LM head, token types, pair classification,
checkpoint head reconciliation, presets with parameter counts (printed) and clear errors."""

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from lm_helpers import build_lm, make_dictionary
from mt_helpers import padded_batch, random_sentence
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel, MegaEncoderModelConfig

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(encoder_embed_dim=16, encoder_hidden_dim=24, encoder_ffn_embed_dim=20,
             encoder_z_dim=8, encoder_n_dim=4, encoder_layers=2, dropout=0.0,
             max_source_positions=64)


def build_model(dictionary=None, **options) -> MegaEncoderModel:
    dictionary = dictionary or make_dictionary(24)
    task = SimpleNamespace(source_dictionary=dictionary)
    return MegaEncoderModel.build_model(MegaEncoderModelConfig(**dict(SMALL, **options)), task)


def sentences(dictionary, lengths=(9, 5, 7), seed=1):
    """1-D ``<s> w ... </s>`` token tensors, as fairseq's sentence_prediction data."""
    bos = torch.tensor([dictionary.bos()])
    return [torch.cat([bos, random_sentence(dictionary, n - 1, seed + i)])
            for i, n in enumerate(lengths)]


def _alone(model, tokens, **kwargs):
    return model(tokens.unsqueeze(0), **kwargs)[0][0]


@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_padded_batch_matches_sentences_alone(chunk, left_pad, norm):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_model(dictionary, encoder_chunk_size=chunk, normalization_type=norm)
    model.register_classification_head("cls", num_classes=3)
    model.register_token_head("tags", num_labels=5)
    model = model.double().eval()
    mean_model = build_model(dictionary, encoder_chunk_size=chunk, normalization_type=norm,
                             sentence_rep="mean")
    mean_model.register_classification_head("cls", num_classes=3)
    mean_model.register_token_head("tags", num_labels=5)
    mean_model.load_state_dict(model.state_dict())  # the same weights, pooled by the mean
    mean_model = mean_model.double().eval()
    seqs = sentences(dictionary)
    batch = padded_batch(seqs, dictionary.pad(), left=left_pad)
    masked = batch.ne(dictionary.pad()) & (torch.arange(batch.size(1)) % 3 == 1)
    with torch.no_grad():
        features, extra = model(batch, features_only=True)
        logits = model(batch)[0]
        masked_logits = model(batch, masked_tokens=masked)[0]
        classes = model(batch, classification_head_name="cls")[0]
        tags = model(batch, token_head_name="tags")[0]
        mean_classes = mean_model(batch, classification_head_name="cls")[0]
        expected_masked = []
        for i, seq in enumerate(seqs):
            n = len(seq)
            # outputs are right-aligned whatever the input padding
            torch.testing.assert_close(features[i, :n], _alone(model, seq, features_only=True))
            torch.testing.assert_close(logits[i, :n], _alone(model, seq))
            torch.testing.assert_close(tags[i, :n], _alone(model, seq, token_head_name="tags"))
            torch.testing.assert_close(classes[i], _alone(model, seq, classification_head_name="cls"))
            torch.testing.assert_close(mean_classes[i],
                                       _alone(mean_model, seq, classification_head_name="cls"))
            assert not extra["padding_mask"][i, :n].any() and extra["padding_mask"][i, n:].all()
            row_mask = masked[i][batch[i].ne(dictionary.pad())]  # the row's mask over its tokens
            expected_masked.append(_alone(model, seq)[row_mask])
    # masked_tokens are given in the input's order (left-padded too): logits line up with
    # targets[masked_tokens] as fairseq's masked_lm criterion selects them
    torch.testing.assert_close(masked_logits, torch.cat(expected_masked))


@pytest.mark.parametrize("chunk", [-1, 4])
def test_encoder_is_bidirectional(chunk):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_model(dictionary, encoder_chunk_size=chunk).double().eval()
    tokens = sentences(dictionary, lengths=(12,))[0].unsqueeze(0)
    changed = tokens.clone()
    changed[0, -2] = dictionary.nspecial + (int(tokens[0, -2]) - dictionary.nspecial + 1) % 20
    with torch.no_grad():
        before = model(tokens, features_only=True)[0]
        after = model(changed, features_only=True)[0]
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-6  # a late change reaches the first token


def test_output_shapes_and_inner_states():
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_model(dictionary, encoder_layers=3).eval()
    model.register_classification_head("sentiment", num_classes=3)
    model.register_classification_head("wide", num_classes=2, inner_dim=7)
    model.register_token_head("pos", num_labels=5)
    batch = padded_batch(sentences(dictionary), dictionary.pad(), left=False)
    B, T, C, V = batch.size(0), batch.size(1), 16, len(dictionary)
    features, extra = model(batch, features_only=True)
    assert features.shape == (B, T, C)
    assert extra["inner_states"] is None and extra["padding_mask"].shape == (B, T)
    logits, extra = model(batch, return_all_hiddens=True)
    assert logits.shape == (B, T, V)
    assert len(extra["inner_states"]) == 3 and all(s.shape == (T, B, C) for s in extra["inner_states"])
    masked = batch.eq(dictionary.eos())
    assert model(batch, masked_tokens=masked)[0].shape == (B, V)  # one EOS per row
    assert model(batch, classification_head_name="sentiment")[0].shape == (B, 3)
    assert model(batch, features_only=True, classification_head_name="wide")[0].shape == (B, 2)
    assert model.classification_heads["wide"].dense.out_features == 7
    assert model(batch, token_head_name="pos")[0].shape == (B, T, 5)
    assert model.sentence_representation(batch).shape == (B, C)
    assert model.max_positions() == 64
    log_probs = model.get_normalized_probs(model(batch), log_probs=True)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(B, T))


@pytest.mark.parametrize("sentence_rep", ["cls", "mean"])
def test_sentence_representation_pooling(sentence_rep):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_model(dictionary, sentence_rep=sentence_rep, pooler_activation_fn="relu").eval()
    model.register_classification_head("head", num_classes=4)
    seqs = sentences(dictionary)
    batch = padded_batch(seqs, dictionary.pad(), left=False)
    with torch.no_grad():
        features = model(batch, features_only=True)[0]
        if sentence_rep == "cls":
            expected = features[:, 0]
        else:
            expected = torch.stack([features[i, : len(s)].mean(dim=0) for i, s in enumerate(seqs)])
        torch.testing.assert_close(model.sentence_representation(batch), expected)
        head = model.classification_heads["head"]
        by_hand = head.out_proj(torch.relu(head.dense(expected)))
        torch.testing.assert_close(model(batch, classification_head_name="head")[0], by_hand)


def test_lm_head_tied_to_token_embeddings_unless_untied():
    tied = build_model()
    assert tied.lm_head.weight is tied.encoder.embed_tokens.weight
    untied = build_model(untie_lm_head=True)
    assert untied.lm_head.weight is not untied.encoder.embed_tokens.weight
    assert untied.lm_head.weight.shape == untied.encoder.embed_tokens.weight.shape
    assert sum(p.numel() for p in untied.parameters()) == (
        sum(p.numel() for p in tied.parameters()) + tied.lm_head.weight.numel())


@pytest.mark.parametrize("left_pad", [False, True])
def test_token_types(left_pad):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    seqs = sentences(dictionary)
    batch = padded_batch(seqs, dictionary.pad(), left=left_pad)
    types_of = [torch.tensor([0] * (len(s) // 2) + [1] * (len(s) - len(s) // 2)) for s in seqs]
    types = padded_batch(types_of, 0, left=left_pad)
    plain = build_model(dictionary).eval()
    with torch.no_grad():
        without = plain(batch, features_only=True)[0]
        torch.testing.assert_close(plain(batch, features_only=True, token_types=types)[0], without)
    typed = build_model(dictionary, type_vocab_size=2).double().eval()
    assert typed.encoder.embed_token_types.weight.shape == (2, 16)
    with torch.no_grad():
        default = typed(batch, features_only=True)[0]
        zeros = typed(batch, features_only=True, token_types=torch.zeros_like(batch))[0]
        with_types = typed(batch, features_only=True, token_types=types)[0]
        alias = typed(batch, features_only=True, segment_labels=types)[0]
        torch.testing.assert_close(zeros, default)  # type 0 when none are given
        torch.testing.assert_close(alias, with_types)
        assert (with_types - default).abs().max() > 1e-6
        for i, seq in enumerate(seqs):  # token types follow their tokens when re-aligned
            alone = typed(seq.unsqueeze(0), features_only=True, token_types=types_of[i].unsqueeze(0))[0]
            torch.testing.assert_close(with_types[i, : len(seq)], alone[0])
    with pytest.raises(ValueError, match=r"token type ids must lie in \[0, 1\] \(--type-vocab-size 2\), got ids from 0 to 2"):
        typed(batch, token_types=types * 2)
    with pytest.raises(ValueError, match="token_types must have the shape of src_tokens"):
        typed(batch, token_types=types[:, :-1])


def test_classify_pair_matches_head_on_hand_built_features():
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_model(dictionary, sentence_rep="mean", pooler_dropout=0.1).eval()
    model.register_classification_head("nli", num_classes=3, input_multiplier=4)
    model.register_classification_head("single", num_classes=3)
    first = {"src_tokens": padded_batch(sentences(dictionary, seed=1), dictionary.pad(), left=False),
             "src_lengths": torch.tensor([9, 5, 7])}
    second = {"src_tokens": padded_batch(sentences(dictionary, (4, 8, 6), seed=7), dictionary.pad(),
                                         left=False)}
    with torch.no_grad():
        logits = model.classify_pair("nli", first, second)
        u = model.sentence_representation(**first)
        v = model.sentence_representation(**second)
        by_hand = model.classification_heads["nli"](torch.cat([u, v, u * v, (u - v).abs()], dim=-1))
    assert logits.shape == (3, 3)
    torch.testing.assert_close(logits, by_hand)
    assert model.classification_heads["nli"].dense.in_features == 4 * 16
    with pytest.raises(ValueError, match="takes one sentence; classify_pair needs a head registered with input_multiplier=4"):
        model.classify_pair("single", first, second)
    with pytest.raises(ValueError, match="takes a sentence pair .*use classify_pair"):
        model(first["src_tokens"], classification_head_name="nli")


def test_bad_options_and_head_names_are_refused_clearly():
    with pytest.raises(ValueError, match="--sentence-rep must be one of \\['cls', 'mean'\\]"):
        build_model(sentence_rep="max")
    with pytest.raises(ValueError, match="--type-vocab-size must be 0"):
        build_model(type_vocab_size=-1)
    with pytest.raises(ValueError, match="--max-source-positions must be a positive integer"):
        build_model(max_source_positions=0)
    with pytest.raises(ValueError, match="--max-positions must be a positive integer"):
        build_model(max_source_positions=None, max_positions=-4)
    with pytest.raises(ValueError, match="--pooler-activation-fn must be one of"):
        build_model(pooler_activation_fn="silly")
    with pytest.raises(ValueError, match="--pooler-dropout must lie in"):
        build_model(pooler_dropout=1.5)
    with pytest.raises(ValueError, match="--encoder-layers must be a positive integer, got 0"):
        build_model(encoder_layers=0)
    with pytest.raises(ValueError, match="needs a task with a source dictionary"):
        MegaEncoderModel.build_model(MegaEncoderModelConfig(**SMALL), SimpleNamespace())
    model = build_model()
    with pytest.raises(ValueError, match="needs a positive num_classes"):
        model.register_classification_head("h")
    with pytest.raises(ValueError, match="input_multiplier must be 1 .*, 2 .* or 4"):
        model.register_classification_head("h", num_classes=2, input_multiplier=3)
    with pytest.raises(ValueError, match="needs a positive num_labels"):
        model.register_token_head("t", 0)
    tokens = sentences(make_dictionary(24))[0].unsqueeze(0)
    with pytest.raises(ValueError, match=r"no classification head named 'nope'; registered classification heads: none"):
        model(tokens, classification_head_name="nope")
    model.register_token_head("t", 2)
    with pytest.raises(ValueError, match=r"no token head named 'x'; registered token heads: \['t'\]"):
        model(tokens, token_head_name="x")
    with pytest.raises(ValueError, match="not both"):
        model(tokens, classification_head_name="t", token_head_name="t")


def test_max_positions_defaults():
    dictionary = make_dictionary(24)
    assert build_model(dictionary, max_source_positions=None).max_positions() == 512
    assert build_model(dictionary, max_source_positions=None, max_positions=100).max_positions() == 100
    assert build_model(dictionary, max_source_positions=80, max_positions=100).max_positions() == 80
    lm_task = SimpleNamespace(source_dictionary=dictionary, cfg=SimpleNamespace(tokens_per_sample=48))
    cfg = MegaEncoderModelConfig(**dict(SMALL, max_source_positions=None))
    assert MegaEncoderModel.build_model(cfg, lm_task).max_positions() == 48
    assert cfg.max_source_positions == 48  # recorded in the config saved with checkpoints
    chunked = build_model(dictionary, encoder_chunk_size=8, rel_pos_bias="rotary")
    assert chunked.max_positions() == 64


def test_checkpoint_heads_are_reconciled_like_roberta(caplog):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    trained = build_model(dictionary)
    trained.register_classification_head("mnli", num_classes=3)
    trained.register_classification_head("pair", num_classes=2, input_multiplier=4)
    trained.register_token_head("ner", 7)
    state = trained.state_dict()

    bare = build_model(dictionary)  # a model without those heads drops them with a warning
    with caplog.at_level(logging.WARNING):
        bare.load_state_dict({k: v.clone() for k, v in state.items()})
    assert "deleting classification head 'mnli'" in caplog.text and "deleting token head 'ner'" in caplog.text
    torch.testing.assert_close(bare.encoder.embed_tokens.weight, trained.encoder.embed_tokens.weight)

    resized = build_model(dictionary)  # other sizes: the model keeps its fresh heads
    resized.register_classification_head("mnli", num_classes=5)
    resized.register_token_head("ner", 7)
    resized.register_token_head("new", 2)
    fresh = resized.classification_heads["mnli"].out_proj.weight.clone()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resized.load_state_dict({k: v.clone() for k, v in state.items()})
    assert "its dimensions (3, 16, 16) differ from the current model's (5, 16, 16)" in caplog.text
    torch.testing.assert_close(resized.classification_heads["mnli"].out_proj.weight, fresh)
    torch.testing.assert_close(resized.token_heads["ner"].out_proj.weight,
                               trained.token_heads["ner"].out_proj.weight)

    loading = build_model(dictionary, load_checkpoint_heads=True)  # hub-style: heads come along
    loading.load_state_dict({k: v.clone() for k, v in state.items()})
    assert sorted(loading.classification_heads) == ["mnli", "pair"]
    assert loading.classification_heads["pair"].input_multiplier == 4
    assert loading.token_heads["ner"].out_proj.out_features == 7
    torch.testing.assert_close(loading.classification_heads["pair"].dense.weight,
                               trained.classification_heads["pair"].dense.weight)


def test_other_checkpoints_are_refused_clearly():
    dictionary = make_dictionary(24)
    model = build_model(dictionary)
    with pytest.raises(ValueError, match="source dictionary mismatch: the checkpoint's vocabulary has 34"):
        model.load_state_dict(build_model(make_dictionary(30)).state_dict())
    lm = build_lm(dictionary, decoder_embed_dim=16)
    with pytest.raises(ValueError, match="not a 'mega_encoder' model: it has no Mega encoder blocks and no masked-LM head"):
        model.load_state_dict(lm.state_dict())
    model.load_state_dict(model.state_dict())


# ----------------------------------------------------------------- presets, the CLI way
def _write_dictionary(directory: Path, words: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dict.txt").write_text("".join(f"w{i} {words - i}\n" for i in range(words)))
    return directory


@pytest.fixture(scope="module")
def vocab50k(tmp_path_factory):
    """A masked_lm data dir whose dictionary has 50,000 symbols (4 special + <mask>)."""
    return _write_dictionary(tmp_path_factory.mktemp("vocab50k"), 50000 - 5)


@pytest.fixture(scope="module")
def vocab256(tmp_path_factory):
    return _write_dictionary(tmp_path_factory.mktemp("vocab256"), 256)


def _build(data: Path, *argv: str, task: str = "masked_lm"):
    """Parse a fairseq-train command line and build task and model as fairseq-train does."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        str(data), "--task", task, "--user-dir", str(REPO / "mega_fairseq"), *argv])
    cfg = convert_namespace_to_omegaconf(args)
    task_obj = tasks.setup_task(cfg.task)
    return cfg, task_obj, task_obj.build_model(cfg.model)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


PRESETS = {
    # arch: (embed, hidden, ffn, z, EMA ndim, layers, norm, prenorm, attention activation,
    #        dropout, chunk, truncation, max positions (masked_lm's --tokens-per-sample 1024
    #        unless the preset says), sentence rep)
    "mega_encoder": (768, 1536, 1536, 128, 16, 12, "layernorm", True, "softmax", 0.1, -1, None, 1024, "cls"),
    "mega_encoder_base": (768, 1536, 1536, 128, 16, 12, "layernorm", True, "softmax", 0.1, -1, None, 1024, "cls"),
    "mega_encoder_tiny": (64, 128, 128, 32, 4, 2, "layernorm", True, "softmax", 0.1, -1, None, 1024, "cls"),
    "mega_lra_listop": (80, 160, 160, 64, 16, 6, "scalenorm", False, "softmax", 0.1, -1, 1024, 2002, "mean"),
    "mega_lra_imdb": (128, 256, 256, 64, 16, 4, "scalenorm", False, "softmax", 0.1, -1, 1024, 4002, "mean"),
    "mega_lra_aan": (128, 256, 256, 64, 16, 6, "scalenorm", False, "softmax", 0.1, -1, 1024, 4002, "mean"),
    "mega_lra_cifar10": (160, 320, 320, 96, 16, 8, "batchnorm", True, "laplace", 0.0, 1024, 1024, 1024, "mean"),
    "mega_lra_pf32": (128, 256, 256, 64, 16, 6, "batchnorm", True, "laplace", 0.0, 1024, 1024, 1024, "mean"),
    "mega_lra_pf128": (64, 128, 128, 32, 16, 4, "syncbatchnorm", True, "laplace", 0.0, 16384, 4096, 16384, "mean"),
}


@pytest.mark.parametrize("arch", list(PRESETS))
def test_presets_and_parameter_counts(arch, vocab50k, vocab256):
    lra = arch.startswith("mega_lra")
    data = vocab256 if lra else vocab50k
    _, _, model = _build(data, "--arch", arch)
    (embed, hidden, ffn, z, ndim, layers, norm, prenorm, activation, dropout, chunk, truncation,
     max_positions, sentence_rep) = PRESETS[arch]
    assert len(model.encoder.layers) == layers
    assert model.max_positions() == max_positions and model.sentence_rep == sentence_rep
    assert (model.encoder.final_norm is not None) is prenorm
    for block in model.encoder.layers:
        attention = block.self_attn
        assert (attention.embed_dim, attention.hdim, attention.zdim) == (embed, hidden, z)
        assert attention.ema.ndim == ndim and attention.ema.truncation == truncation
        assert attention.chunk_size == chunk and attention.attention_activation == activation
        assert block.ffn.fc1.out_features == ffn and attention.prenorm is prenorm
        assert attention.norm.norm_type == norm
        assert attention.dropout.p == dropout and not attention.causal
    count = _count(model)
    vocab = len(model.encoder.dictionary)
    print(f"{arch}: {count:,} parameters ({count / 1e6:.2f}M) with a {vocab:,}-symbol vocabulary")
    if arch in ("mega_encoder", "mega_encoder_base"):
        assert vocab == 50000
        assert 80e6 < count < 160e6  # BERT-base class


def test_every_registered_architecture_is_counted():
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    registered = {arch for arch, model in ARCH_MODEL_NAME_REGISTRY.items() if model == "mega_encoder"}
    assert registered == set(PRESETS)


def test_command_line_wins_over_presets_and_tasks_get_max_positions(vocab256, tmp_path):
    _, _, model = _build(vocab256, "--arch", "mega_lra_listop", "--encoder-layers", "2",
                         "--normalization-type", "layernorm", "--max-positions", "300",
                         "--sentence-rep", "cls", "--type-vocab-size", "2", "--untie-lm-head")
    assert len(model.encoder.layers) == 2 and model.max_positions() == 300
    assert model.encoder.layers[0].self_attn.norm.norm_type == "layernorm"
    assert model.sentence_rep == "cls" and model.encoder.embed_token_types.num_embeddings == 2
    assert model.lm_head.weight is not model.encoder.embed_tokens.weight
    _, task, model = _build(vocab256, "--arch", "mega_encoder_tiny", "--tokens-per-sample", "96")
    assert model.max_positions() == 96  # masked_lm: --tokens-per-sample, as RoBERTa

    glue = tmp_path / "glue"
    _write_dictionary(glue / "input0", 30)
    (glue / "label").mkdir()
    (glue / "label" / "dict.txt").write_text("yes 1\nno 1\n")
    sentence = ["--num-classes", "2", "--criterion", "sentence_prediction"]
    cfg, task, model = _build(glue, "--arch", "mega_encoder_tiny", *sentence, task="sentence_prediction")
    assert model.max_positions() == task.max_positions() == 512  # the task's --max-positions
    assert model.classification_heads["sentence_classification_head"].out_proj.out_features == 2
    _, task, model = _build(glue, "--arch", "mega_lra_listop", *sentence, task="sentence_prediction")
    assert model.max_positions() == task.max_positions() == 2002  # the preset reaches the task
    _, task, model = _build(glue, "--arch", "mega_encoder_tiny", "--max-positions", "128",
                            "--criterion", "sentence_ranking", "--num-classes", "4",
                            task="sentence_ranking")
    assert model.max_positions() == task.max_positions() == 128
    assert model.classification_heads["sentence_classification_head"].out_proj.out_features == 1

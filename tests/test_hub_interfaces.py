"""The hub interfaces (``from_pretrained``) of ``mega_encoder`` and ``mega_lm`` on real
fairseq checkpoint files: tiny untrained models are built from a ``fairseq-train`` command
line (dropout on, so that eval mode matters), saved as fairseq's trainer saves them, loaded
back through ``from_pretrained`` (``import mega_fairseq``, no ``--user-dir``) and compared
with direct computations on the in-memory models; the README's hub snippet runs on them."""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.hub_utils import GeneratorHubInterface
from fairseq.models.roberta.hub_interface import RobertaHubInterface

import mega_fairseq  # noqa: F401  (registers the models, as --user-dir would)
from mega_fairseq.models import MegaEncoderModel, MegaLanguageModel, MegaModel
from mega_fairseq.models.encoder_hub import MegaEncoderHubInterface

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = "checkpoint_best.pt"
WORDS = "the a cat dog sat ran on under mat rug and".split()
HEAD = "sentence_classification_head"  # the name fairseq's sentence_prediction gives its head
COMMON = ["--user-dir", str(REPO / "mega_fairseq"), "--cpu", "--dropout", "0.1",
          "--tokens-per-sample", "32"]


def _sentences(count: int, seed: int):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(count)]


def _write_dictionary(directory: Path, symbols) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dict.txt").write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(symbols)))


def _save_checkpoint(directory: Path, task: str, criterion: str, argv, prepare=None):
    """Build task and model from ``fairseq-train DIRECTORY --task TASK ARGV`` as fairseq-train
    does, let ``prepare(model)`` change it, and save it to DIRECTORY/checkpoint_best.pt as
    fairseq's trainer saves a checkpoint (config as a plain container, model state dict,
    optimizer history, task state). Returns the model in eval mode."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(directory), "--task", task, "--criterion",
                                                criterion, *COMMON, *argv])
    cfg = convert_namespace_to_omegaconf(args)
    task_object = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task_object.build_model(cfg.model)
    if prepare is not None:
        prepare(model)
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": criterion, "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 3}],
        "task_state": task_object.state_dict(),
        "extra_state": {"previous_training_time": 0.0},
    }
    checkpoint_utils.torch_persistent_save(state, str(directory / CHECKPOINT))
    return model.eval()


def _perturb(model, std=0.3):
    """Noise on every weight: an untrained tied-embedding LM only repeats its last word."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)


def _register_head(model):
    model.register_classification_head(HEAD, num_classes=3)
    torch.nn.init.normal_(model.classification_heads[HEAD].out_proj.bias)  # not all zeros


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """checkpoints/{encoder,lm,encoder_spm}/checkpoint_best.pt with their dictionaries, and
    the in-memory models they hold."""
    root = tmp_path_factory.mktemp("hub")
    encoder_dir, lm_dir, spm_dir = (root / "checkpoints" / n for n in ("encoder", "lm", "encoder_spm"))
    for directory in (encoder_dir, lm_dir):
        _write_dictionary(directory, WORDS)
    encoder = _save_checkpoint(encoder_dir, "masked_lm", "masked_lm",
                               ["--arch", "mega_encoder_tiny", "--sentence-rep", "mean"], _register_head)
    lm = _save_checkpoint(lm_dir, "language_modeling", "cross_entropy", ["--arch", "mega_lm_tiny"], _perturb)

    # a sentencepiece model next to the checkpoint, found by from_pretrained as fairseq's
    # own hub finds it (the file name sentencepiece.bpe.model)
    import sentencepiece as spm

    spm_dir.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences(200, seed=3)), model_prefix=str(spm_dir / "spm"),
        vocab_size=30, hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
        minloglevel=2,
    )
    (spm_dir / "spm.model").rename(spm_dir / "sentencepiece.bpe.model")
    processor = spm.SentencePieceProcessor(model_file=str(spm_dir / "sentencepiece.bpe.model"))
    _write_dictionary(spm_dir, [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())])
    encoder_spm = _save_checkpoint(spm_dir, "masked_lm", "masked_lm", ["--arch", "mega_encoder_tiny"])
    return dict(root=root, encoder_dir=encoder_dir, lm_dir=lm_dir, spm_dir=spm_dir,
                encoder=encoder, lm=lm, encoder_spm=encoder_spm)


@pytest.fixture(scope="module")
def encoder_hub(saved):
    return MegaEncoderModel.from_pretrained(str(saved["encoder_dir"]), checkpoint_file=CHECKPOINT)


@pytest.fixture(scope="module")
def lm_hub(saved):
    return MegaLanguageModel.from_pretrained(str(saved["lm_dir"]), checkpoint_file=CHECKPOINT)


# ---------------------------------------------------------------------- mega_encoder
def test_encoder_hub_type_mode_and_device(encoder_hub):
    assert isinstance(encoder_hub, MegaEncoderHubInterface)
    assert isinstance(encoder_hub, RobertaHubInterface)  # fairseq's hub, specialised
    assert not encoder_hub.training and not encoder_hub.model.training
    assert encoder_hub.device == torch.device("cpu")
    assert encoder_hub.bpe is None


def test_encode_decode_round_trip_without_bpe(encoder_hub):
    dictionary = encoder_hub.task.source_dictionary
    tokens = encoder_hub.encode("the cat sat on the mat")
    assert tokens.dtype == torch.long and tokens.dim() == 1
    assert tokens.tolist() == [dictionary.bos(), *[dictionary.index(w) for w in
                                                   "the cat sat on the mat".split()], dictionary.eos()]
    assert encoder_hub.decode(tokens) == "the cat sat on the mat"
    pair = encoder_hub.encode("the cat", "a dog ran")
    assert pair.tolist().count(dictionary.eos()) == 3  # <s> A </s> </s> B </s>
    assert encoder_hub.decode(pair) == ["the cat", "a dog ran"]
    assert encoder_hub.decode(encoder_hub.encode("the cat", "a dog", no_separator=True)) == "the cat a dog"
    unknown = encoder_hub.encode("the zebra")
    assert unknown[2] == dictionary.unk() and encoder_hub.decode(unknown) == "the <unk>"


def test_encode_decode_round_trip_with_sentencepiece(saved):
    hub = MegaEncoderModel.from_pretrained(str(saved["spm_dir"]), checkpoint_file=CHECKPOINT,
                                           bpe="sentencepiece")
    assert hub.bpe is not None
    tokens = hub.encode("the cat sat on the mat", "a dog ran")
    assert hub.task.source_dictionary.unk() not in tokens.tolist()
    assert hub.decode(tokens) == ["the cat sat on the mat", "a dog ran"]
    # fill_mask with pieces: a word-initial piece replaces " <mask>" with its space
    results = hub.fill_mask("the cat <mask> on the mat", topk=4)
    assert len(results) == 4
    for filled, probability, filler in results:
        assert 0.0 < probability <= 1.0
        assert filled == "the cat <mask> on the mat".replace(" <mask>", filler)
    assert [p for _, p, _ in results] == sorted((p for _, p, _ in results), reverse=True)


def test_extract_features_equals_the_model(saved, encoder_hub):
    model = saved["encoder"]
    tokens = encoder_hub.encode("the cat sat on the mat")
    features = encoder_hub.extract_features(tokens)
    with torch.no_grad():
        expected, extra = model.extract_features(tokens.unsqueeze(0), return_all_hiddens=True)
    assert features.shape == (1, tokens.numel(), model.embed_dim)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    states = encoder_hub.extract_features(tokens, return_all_hiddens=True)
    assert len(states) == len(extra["inner_states"]) == 2
    for state, direct in zip(states, extra["inner_states"]):
        torch.testing.assert_close(state, direct.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_predict_equals_the_head_on_the_mean_pooled_sentence(saved, encoder_hub):
    """The checkpoint's head is loaded; predict pools as --sentence-rep mean does (over the
    real tokens of a padded batch), which RoBERTa's predict would not."""
    model = saved["encoder"]
    pad = encoder_hub.task.source_dictionary.pad()
    rows = [encoder_hub.encode("the cat sat on the mat"), encoder_hub.encode("a dog")]
    batch = torch.full((2, rows[0].numel()), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, :row.numel()] = row
    with torch.no_grad():
        features, _ = model.extract_features(batch)
        keep = batch.ne(pad).unsqueeze(-1).float()
        pooled = (features * keep).sum(1) / keep.sum(1)
        logits = model.classification_heads[HEAD](pooled)
    torch.testing.assert_close(encoder_hub.predict(HEAD, batch), F.log_softmax(logits, dim=-1),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoder_hub.predict(HEAD, batch, return_logits=True), logits,
                               rtol=1e-5, atol=1e-6)
    single = encoder_hub.predict(HEAD, rows[1])  # a 1-D input is a batch of one
    torch.testing.assert_close(single, F.log_softmax(logits[1:], dim=-1), rtol=1e-5, atol=1e-6)


def test_register_classification_head_then_predict(encoder_hub):
    encoder_hub.register_classification_head("new_head", num_classes=5, inner_dim=7)
    head = encoder_hub.model.classification_heads["new_head"]
    assert not head.training and head.dense.out_features == 7
    scores = encoder_hub.predict("new_head", encoder_hub.encode("the dog ran"))
    assert scores.shape == (1, 5)
    torch.testing.assert_close(scores.exp().sum(-1), torch.ones(1))


def test_fill_mask_scores_are_the_masked_lm_distribution(saved, encoder_hub):
    model = saved["encoder"]
    dictionary = encoder_hub.task.source_dictionary
    mask = encoder_hub.task.mask_idx
    assert dictionary[mask] == "<mask>"
    results = encoder_hub.fill_mask("the cat <mask> on the mat", topk=5)
    tokens = encoder_hub.encode("the cat sat on the mat")
    tokens[3] = mask
    with torch.no_grad():
        logits, _ = model(tokens.unsqueeze(0))
    probabilities = logits[0, 3].softmax(-1)
    top = probabilities.topk(5)
    assert len(results) == 5
    torch.testing.assert_close(torch.tensor([p for _, p, _ in results]), top.values, rtol=1e-5, atol=1e-7)
    for (filled, probability, word), index in zip(results, top.indices.tolist()):
        assert word == dictionary[index]
        assert filled == f"the cat {word} on the mat"
        assert probability == pytest.approx(probabilities[index].item(), rel=1e-5)


def test_encoder_bad_input_is_refused_clearly(encoder_hub):
    with pytest.raises(ValueError, match=r"exactly one <mask>.*got 0"):
        encoder_hub.fill_mask("the cat sat")
    with pytest.raises(ValueError, match=r"exactly one <mask>.*got 2"):
        encoder_hub.fill_mask("<mask> cat <mask>")
    with pytest.raises(ValueError, match=r"topk must be an integer from 1 to the vocabulary size"):
        encoder_hub.fill_mask("the <mask>", topk=0)
    with pytest.raises(ValueError, match=r"no classification head named 'missing'.*"
                                         + re.escape(HEAD)):
        encoder_hub.predict("missing", encoder_hub.encode("the cat"))
    with pytest.raises(ValueError, match=r"decode takes one 1-D token tensor, got \(1, 4\)"):
        encoder_hub.decode(encoder_hub.encode("the cat").unsqueeze(0))
    with pytest.raises(TypeError, match=r"integer tensor of token ids"):
        encoder_hub.extract_features(torch.zeros(4))
    with pytest.raises(ValueError, match=r"40 tokens exceed the model's maximum length 32"):
        encoder_hub.extract_features(encoder_hub.encode(" ".join(["the"] * 38)))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, "):
        encoder_hub.predict(HEAD, torch.tensor([0, 999, 2]))
    with pytest.raises(TypeError, match=r"encode takes strings; sentence 1 is a int"):
        encoder_hub.encode("the cat", 3)


# ---------------------------------------------------------------------- mega_lm
def test_lm_hub_is_fairseqs_generator_interface(lm_hub):
    assert isinstance(lm_hub, GeneratorHubInterface)
    assert isinstance(lm_hub.models[0], MegaLanguageModel) and not lm_hub.models[0].training


def _direct_log_probs(model, tokens):
    """log p(tokens[i] | eos, tokens[:i]) for a 1-D sequence, one full forward pass."""
    eos = model.decoder.dictionary.eos()
    with torch.no_grad():
        output = model(torch.tensor([[eos, *tokens[:-1]]]))
        lprobs = model.get_normalized_probs(output, log_probs=True)[0]
    return lprobs.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)


def test_score_equals_direct_log_probabilities(saved, lm_hub):
    dictionary = lm_hub.task.source_dictionary
    sentence = "the cat sat on the mat"
    scored = lm_hub.score(sentence)
    words = [dictionary.index(w) for w in sentence.split()]
    assert scored["tokens"].tolist() == words  # fairseq scores the words, not the final </s>
    expected = _direct_log_probs(saved["lm"], words)
    torch.testing.assert_close(scored["positional_scores"], expected, rtol=1e-5, atol=1e-5)
    assert scored["score"].item() == pytest.approx(expected.mean().item(), rel=1e-5)


def _greedy(model, prefix, max_len):
    """SequenceGenerator's beam-1 search written out: the prefix forced, then the most
    probable next token (never pad) until </s>, which is forced at step ``max_len``."""
    dictionary = model.decoder.dictionary
    tokens = list(prefix)
    for step in range(len(prefix), max_len + 1):
        if step == max_len:
            following = dictionary.eos()
        else:
            with torch.no_grad():
                output = model(torch.tensor([[dictionary.eos(), *tokens]]))
                lprobs = model.get_normalized_probs(output, log_probs=True)[0, -1]
            lprobs[dictionary.pad()] = float("-inf")
            following = int(lprobs.argmax())
        tokens.append(following)
        if following == dictionary.eos():
            break
    return tokens


def test_greedy_sample_equals_a_manual_greedy_loop(saved, lm_hub):
    dictionary = lm_hub.task.source_dictionary
    prefix = [dictionary.index(w) for w in ("the", "cat")]
    expected = _greedy(saved["lm"], prefix, max_len=12)
    assert len(set(expected)) > 4  # a varied continuation, not one word repeated
    hypothesis = lm_hub.generate(lm_hub.encode("the cat"), beam=1, sampling=False, max_len_b=12)[0]
    assert hypothesis["tokens"].tolist() == expected
    torch.testing.assert_close(hypothesis["positional_scores"][:-1],
                               _direct_log_probs(saved["lm"], expected)[:-1], rtol=1e-4, atol=1e-4)
    text = lm_hub.sample("the cat", beam=1, sampling=False, max_len_b=12)
    assert text == dictionary.string(torch.tensor(expected))
    assert text.startswith("the cat")


def test_sampling_with_a_fixed_seed_repeats(lm_hub):
    samples = []
    for _ in range(2):
        torch.manual_seed(5)
        samples.append(lm_hub.sample(["the", "a dog"], beam=1, sampling=True, sampling_topk=5,
                                     max_len_b=10))
    assert samples[0] == samples[1] and len(samples[0]) == 2


# ---------------------------------------------------------------------- wrong model types
def test_a_checkpoint_of_another_model_type_is_refused_with_its_type(saved):
    with pytest.raises(ValueError, match=r"checkpoint_best.pt in .*lm holds a MegaLanguageModel "
                                         r"model \(--arch mega_lm_tiny\), not a 'mega_encoder' model; "
                                         r"load it with MegaLanguageModel.from_pretrained"):
        MegaEncoderModel.from_pretrained(str(saved["lm_dir"]), checkpoint_file=CHECKPOINT)
    with pytest.raises(ValueError, match=r"holds a MegaEncoderModel model \(--arch mega_encoder_tiny\), "
                                         r"not a 'mega_lm' language model"):
        MegaLanguageModel.from_pretrained(str(saved["encoder_dir"]), checkpoint_file=CHECKPOINT)
    with pytest.raises(ValueError, match=r"holds a MegaEncoderModel model, not a 'mega' encoder-decoder"):
        MegaModel.from_pretrained(str(saved["encoder_dir"]), checkpoint_file=CHECKPOINT)
    with pytest.raises(FileNotFoundError, match=r"model folder .*missing does not exist"):
        MegaEncoderModel.from_pretrained(str(saved["root"] / "missing"), checkpoint_file=CHECKPOINT)
    with pytest.raises(FileNotFoundError, match=r"model folder .*missing does not exist"):
        MegaLanguageModel.from_pretrained(saved["root"] / "missing")


# ---------------------------------------------------------------------- converted checkpoints
ORIGINAL = REPO / "tests" / "fixtures" / "original_mega"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The original research code's LM and LRA fixtures converted by
    scripts/convert_checkpoint.py into folders holding model.pt and the dictionaries."""
    root = tmp_path_factory.mktemp("converted")
    for name in ("lm_a", "lra_a"):
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"), "--source-format",
             "original", str(ORIGINAL / name / "checkpoint.pt"), str(root / name)],
            capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_converted_original_checkpoints_work_through_the_hubs(converted):
    """The hubs on converted folders (default checkpoint_file model.pt) reproduce what the
    original code computed (tests/fixtures/original_mega/*/io.pt) within 1e-5."""
    lm = MegaLanguageModel.from_pretrained(str(converted / "lm_a"))
    io = torch.load(ORIGINAL / "lm_a" / "io.pt", map_location="cpu", weights_only=True)
    dictionary = lm.task.source_dictionary
    row = io["inputs"]["src_tokens"][0]  # </s> w1 ... w12, no padding
    assert row[0] == dictionary.eos() and row.ne(dictionary.pad()).all()
    words = row[1:]
    scored = lm.score(dictionary.string(words))
    assert scored["tokens"].tolist() == words.tolist()
    original = io["outputs"]["lprobs"][0, :-1].gather(-1, words.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(scored["positional_scores"], original, rtol=1e-5, atol=1e-5)
    # one greedy step after a prefix: the original's most probable next token
    second = io["inputs"]["src_tokens"][1]
    prefix = second[1:int(second.ne(dictionary.pad()).sum()) - 1]  # between </s> and </s>
    next_lprobs = io["outputs"]["lprobs"][1, prefix.numel()].clone()
    next_lprobs[dictionary.pad()] = float("-inf")
    hypothesis = lm.generate(torch.cat([prefix, torch.tensor([dictionary.eos()])]), beam=1,
                             sampling=False, max_len_b=prefix.numel() + 1)[0]
    assert hypothesis["tokens"][:prefix.numel()].tolist() == prefix.tolist()
    assert int(hypothesis["tokens"][prefix.numel()]) == int(next_lprobs.argmax())

    from mega_fairseq.tasks.lra_common import classification_head_name

    encoder = MegaEncoderModel.from_pretrained(str(converted / "lra_a"))
    io = torch.load(ORIGINAL / "lra_a" / "io.pt", map_location="cpu", weights_only=True)
    head = classification_head_name(encoder.task.cfg)
    tokens = io["inputs"]["src_tokens"]  # right-padded, mean-pooled over the real tokens
    logits = encoder.predict(head, tokens, return_logits=True)
    torch.testing.assert_close(logits, io["outputs"]["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.predict(head, tokens), F.log_softmax(io["outputs"]["logits"], -1),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- README
def _readme_hub_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Hub interfaces", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's Hub interfaces section has one python block"
    return blocks[0]


def test_readme_hub_snippet_runs_as_written(saved, monkeypatch, capsys):
    """The snippet, from the folder holding checkpoints/encoder and checkpoints/lm."""
    monkeypatch.chdir(saved["root"])
    namespace = {}
    exec(compile(_readme_hub_snippet(), "README.md (Hub interfaces)", "exec"), namespace)
    printed = capsys.readouterr().out
    assert namespace["features"].shape == (1, 8, saved["encoder"].embed_dim)
    fills = namespace["encoder"].fill_mask("the cat <mask> on the mat", topk=3)
    assert str(fills) in printed and len(fills) == 3
    assert namespace["lm"].sample("the cat", beam=1, sampling=False, max_len_b=8) in printed

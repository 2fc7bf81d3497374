"""Whole models against an independent reference forward (tests/whole_model_reference.py,
written from the Mega paper's formulas without calling mega_fairseq code): ``mega_lm``
logits and log-probabilities, ``mega`` encoder outputs and log-probabilities, and
``mega_encoder`` features, masked-LM logits and classification logits, in float64 with all
parameters randomly perturbed (so zero-initialised biases, unit norm weights and the like
all matter), in eval mode, on padded batches compared position by position with each
sequence run alone through the reference."""

from types import SimpleNamespace

import pytest
import torch

import whole_model_reference as ref
from lm_helpers import make_dictionary
from mt_helpers import padded_batch, random_sentence
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel, MegaEncoderModelConfig
from mega_fairseq.models.mega_lm import MegaLanguageModel, MegaLanguageModelConfig
from mega_fairseq.models.mega_translation import MegaModel, MegaTranslationConfig

TOLERANCE = 1e-10
# fairseq's get_normalized_probs computes log_softmax with dtype=torch.float32 (fairseq.utils.
# log_softmax), so log-probabilities of a float64 model carry float32 rounding
FLOAT32_TOLERANCE = 1e-6

# every option the reference reads, given explicitly to both the model and the reference
COMMON = dict(
    dropout=0.0, normalize_before=True, normalization_type="layernorm", activation_fn="silu",
    attention_activation_fn="softmax", rel_pos_bias="simple", truncation_length=None,
    no_scale_embedding=False, normalize_embedding=False, no_affine_final_norm=False,
)


def _sizes(side: str, layers: int = 2) -> dict:
    return {f"{side}_embed_dim": 16, f"{side}_hidden_dim": 24, f"{side}_ffn_embed_dim": 20,
            f"{side}_z_dim": 8, f"{side}_n_dim": 4, f"{side}_layers": layers}


def perturbed_eval_model(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` in float64 with every parameter perturbed, in eval mode."""
    model = model.double()
    perturb(model, seed=seed)
    return model.eval()


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add N(0, 0.3^2) noise to every parameter (tied ones once) and draw random batch-norm
    running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.5 * torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype))


def parameters_of(model: torch.nn.Module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |actual - expected| relative to max(1, largest |expected|)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(expected.abs().max()))
    return float((actual - expected).abs().max()) / scale


def check(name: str, actual: torch.Tensor, expected: torch.Tensor, record: list) -> None:
    diff = max_difference(actual.double(), expected)
    tolerance = FLOAT32_TOLERANCE if actual.dtype == torch.float32 else TOLERANCE
    record.append((name, diff, actual.dtype))
    assert diff < tolerance, f"{name}: max difference {diff:.3e} (relative to max(1, |ref|))"


def report(record: list) -> None:
    """Print the largest difference per output dtype (visible with pytest -s)."""
    for dtype in sorted({str(d) for _, _, d in record}):
        print(f"max difference ({dtype}): {max(x for _, x, d in record if str(d) == dtype):.2e}")


def _ids(configs, prefix):
    """Short ids: norm placement, norm type, attention activation, bias, chunk sizes."""
    ids = []
    for i, c in enumerate(configs):
        chunks = "/".join(str(c[k]) for k in ("encoder_chunk_size", "decoder_chunk_size") if k in c)
        ids.append(f"{prefix}{i}-{'pre' if c['normalize_before'] else 'post'}-"
                   f"{c['normalization_type']}-{c['attention_activation_fn']}-{c['rel_pos_bias']}-"
                   f"chunk{chunks}")
    return ids


# ------------------------------------------------------------------------------ mega_lm
LM_CONFIGS = [
    dict(COMMON, share_decoder_input_output_embed=True, decoder_chunk_size=-1),
    dict(COMMON, normalize_before=False, normalization_type="rmsnorm",
         attention_activation_fn="laplace", rel_pos_bias="rotary", decoder_chunk_size=3,
         no_scale_embedding=True, share_decoder_input_output_embed=False),
    dict(COMMON, normalization_type="scalenorm", attention_activation_fn="relu2",
         decoder_chunk_size=4, normalize_embedding=True, no_affine_final_norm=True,
         activation_fn="gelu", share_decoder_input_output_embed=True, truncation_length=3),
    dict(COMMON, normalization_type="batchnorm", rel_pos_bias="rotary", decoder_chunk_size=-1,
         share_decoder_input_output_embed=False),
]


def build_lm(dictionary, opts):
    cfg = MegaLanguageModelConfig(**_sizes("decoder"), tokens_per_sample=64, **opts)
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return MegaLanguageModel.build_model(cfg, task)


@pytest.mark.parametrize("opts", LM_CONFIGS, ids=_ids(LM_CONFIGS, "lm"))
def test_language_model_matches_reference(opts):
    torch.manual_seed(0)
    dictionary = make_dictionary(20)
    model = perturbed_eval_model(build_lm(dictionary, opts), seed=1)
    params = parameters_of(model)
    sequences = [random_sentence(dictionary, n, seed) for n, seed in ((9, 1), (6, 2), (4, 3))]
    batch = padded_batch(sequences, dictionary.pad(), left=False)
    with torch.no_grad():
        net_output = model(batch)
        log_probs = model.get_normalized_probs(net_output, log_probs=True)
    record = []
    for b, seq in enumerate(sequences):
        expected = ref.language_model(seq, params, dict(opts, **_sizes("decoder")))
        n = len(seq)
        check(f"logits[{b}]", net_output[0][b, :n], expected["logits"], record)
        check(f"log_probs[{b}]", log_probs[b, :n], expected["log_probs"], record)
    report(record)


# --------------------------------------------------------------------------------- mega
MT_CONFIGS = [
    dict(COMMON, normalize_before=False, encoder_chunk_size=-1, decoder_chunk_size=-1,
         share_decoder_input_output_embed=False, share_all_embeddings=False),
    dict(COMMON, normalization_type="rmsnorm", attention_activation_fn="laplace",
         rel_pos_bias="rotary", encoder_chunk_size=3, decoder_chunk_size=2,
         share_decoder_input_output_embed=True, share_all_embeddings=True),
    dict(COMMON, normalize_before=False, normalization_type="scalenorm",
         attention_activation_fn="relu2", encoder_chunk_size=4, decoder_chunk_size=-1,
         no_scale_embedding=True, share_decoder_input_output_embed=True,
         share_all_embeddings=False, truncation_length=4),
]


def build_mt(dictionary, opts):
    cfg = MegaTranslationConfig(**_sizes("encoder"), **_sizes("decoder"), max_source_positions=64,
                                max_target_positions=64, **opts)
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return MegaModel.build_model(cfg, task)


@pytest.mark.parametrize("opts", MT_CONFIGS, ids=_ids(MT_CONFIGS, "mt"))
def test_translation_model_matches_reference(opts):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = perturbed_eval_model(build_mt(dictionary, opts), seed=2)
    params = parameters_of(model)
    sources = [random_sentence(dictionary, n, seed) for n, seed in ((9, 1), (5, 2), (7, 3))]
    targets = [random_sentence(dictionary, n, seed) for n, seed in ((8, 4), (10, 5), (6, 6))]
    prevs = [torch.cat([torch.tensor([dictionary.eos()]), t[:-1]]) for t in targets]
    src_tokens = padded_batch(sources, dictionary.pad(), left=True)  # fairseq's default
    prev_output_tokens = padded_batch(prevs, dictionary.pad(), left=False)
    src_lengths = torch.tensor([len(s) for s in sources])
    with torch.no_grad():
        encoder_out = model.encoder(src_tokens, src_lengths)["encoder_out"][0]  # right-aligned
        net_output = model(src_tokens, src_lengths, prev_output_tokens)
        log_probs = model.get_normalized_probs(net_output, log_probs=True)
    record = []
    ref_opts = dict(opts, **_sizes("encoder"), **_sizes("decoder"))
    for b, (src, prev) in enumerate(zip(sources, prevs)):
        expected = ref.translation_model(src, prev, params, ref_opts)
        check(f"encoder_out[{b}]", encoder_out[:len(src), b], expected["encoder_out"], record)
        assert torch.all(encoder_out[len(src):, b] == 0)
        check(f"logits[{b}]", net_output[0][b, :len(prev)], expected["logits"], record)
        check(f"log_probs[{b}]", log_probs[b, :len(prev)], expected["log_probs"], record)
    report(record)


# ------------------------------------------------------------------------- mega_encoder
ENCODER_CONFIGS = [
    dict(COMMON, encoder_chunk_size=-1, sentence_rep="cls", untie_lm_head=False,
         type_vocab_size=0, left_pad=False),
    dict(COMMON, normalize_before=False, normalization_type="scalenorm",
         attention_activation_fn="laplace", rel_pos_bias="rotary", encoder_chunk_size=3,
         sentence_rep="mean", untie_lm_head=True, type_vocab_size=2, left_pad=True),
    dict(COMMON, normalization_type="batchnorm", attention_activation_fn="relu2",
         encoder_chunk_size=4, sentence_rep="mean", untie_lm_head=False, type_vocab_size=0,
         truncation_length=3, normalize_embedding=True, left_pad=False),
]


def build_encoder_model(dictionary, opts):
    model_opts = {k: v for k, v in opts.items() if k != "left_pad"}
    cfg = MegaEncoderModelConfig(**_sizes("encoder"), max_source_positions=64, **model_opts)
    return MegaEncoderModel.build_model(cfg, SimpleNamespace(source_dictionary=dictionary))


@pytest.mark.parametrize("opts", ENCODER_CONFIGS, ids=_ids(ENCODER_CONFIGS, "enc"))
def test_encoder_model_matches_reference(opts):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_encoder_model(dictionary, opts)
    model.register_classification_head("cls", num_classes=3)
    model = model.double()
    perturb(model, seed=3)
    model.eval()
    params = parameters_of(model)
    bos = torch.tensor([dictionary.bos()])
    sequences = [torch.cat([bos, random_sentence(dictionary, n, seed)])
                 for n, seed in ((8, 1), (4, 2), (6, 3))]
    batch = padded_batch(sequences, dictionary.pad(), left=opts["left_pad"])
    types = None
    type_rows = None
    if opts["type_vocab_size"] > 0:
        type_rows = [(torch.arange(len(s)) >= len(s) // 2).long() for s in sequences]
        types = padded_batch(type_rows, 0, left=opts["left_pad"])
    with torch.no_grad():
        features, extra = model(batch, features_only=True, token_types=types)
        lm_logits = model(batch, token_types=types)[0]
        class_logits = model(batch, classification_head_name="cls", token_types=types)[0]
    record = []
    for b, seq in enumerate(sequences):
        n = len(seq)
        expected = ref.encoder_model(seq, params, dict(opts, **_sizes("encoder")), head="cls",
                                     token_types=None if type_rows is None else type_rows[b])
        # outputs are right-aligned whatever the input padding
        check(f"features[{b}]", features[b, :n], expected["features"], record)
        check(f"lm_logits[{b}]", lm_logits[b, :n], expected["lm_logits"], record)
        check(f"class_logits[{b}]", class_logits[b], expected["class_logits"], record)
        assert not extra["padding_mask"][b, :n].any()
    report(record)


def test_reference_is_not_trivially_satisfied():
    """With the perturbed parameters the reference's logits depend on the embedding scale and
    on the final norm's affine parameters far beyond the tolerance (a model that drops
    either cannot match it by accident)."""
    torch.manual_seed(0)
    dictionary = make_dictionary(20)
    opts = dict(LM_CONFIGS[0])
    model = build_lm(dictionary, opts).double()
    perturb(model, seed=1)
    params = parameters_of(model)
    seq = random_sentence(dictionary, 7, 1)
    base = ref.language_model(seq, params, dict(opts, **_sizes("decoder")))["logits"]
    unscaled = ref.language_model(seq, params, dict(opts, no_scale_embedding=True, **_sizes("decoder")))["logits"]
    assert max_difference(unscaled, base) > 1e-3
    no_final = dict(params)
    no_final["decoder.final_norm.norm.weight"] = torch.ones(16, dtype=torch.float64)
    no_final["decoder.final_norm.norm.bias"] = torch.zeros(16, dtype=torch.float64)
    assert max_difference(ref.language_model(seq, no_final, dict(opts, **_sizes("decoder")))["logits"], base) > 1e-3

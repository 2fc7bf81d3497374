"""``megalodon_lm`` as a whole model: incremental decoding (steps, blocks, beam reordering)
equals the full forward, padded batches equal sequences alone, Megalodon's parts compose
with ``mega_lm`` through the shared options, segment-recurrent training equals one full
forward over the concatenated segments, the presets' parameter counts, and the
``segment_language_modeling`` task's data order and errors.

Every comparison is against a plain full forward pass in float64 over the whole sequence;
the models' parameters are randomised so that no part is near its initial identity (the
complex EMA's imaginary output weights and the phases included)."""

import math
from types import SimpleNamespace

import pytest
import torch

from fairseq import options, tasks

from lm_config_helpers import USER_DIR, count_parameters, parse_command_line, write_dictionary
from lm_helpers import build_lm, make_dictionary, random_tokens
from tiny_lm_data import write_tiny_lm_data
from mega_fairseq.errors import OptionError
from mega_fairseq.models.megalodon_lm import MegalodonLanguageModel, MegalodonLanguageModelConfig
from mega_fairseq.modules.complex_ema import ComplexMultiDimensionalDampedEMA
from mega_fairseq.modules.timestep_norm import TimestepNorm
from mega_fairseq.tasks.segment_language_modeling import stream_batches

ATOL = 1e-9
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0, activation_dropout=0.0)


def build_megalodon(dictionary=None, seed=0, **changes) -> MegalodonLanguageModel:
    """A small ``megalodon_lm`` (its defaults: complex EMA, timestep norm, normalized
    attention, no update gate, two-hop residual, rotary positions) with randomised
    parameters, in float64."""
    dictionary = dictionary or make_dictionary()
    sizes = dict(decoder_embed_dim=16, decoder_hidden_dim=24, decoder_ffn_embed_dim=20, decoder_z_dim=8,
                 decoder_n_dim=4, decoder_layers=2, timestep_norm_groups=4, decoder_chunk_size=4,
                 tokens_per_sample=64, **NO_DROPOUT)
    sizes.update(changes)
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    torch.manual_seed(seed)
    model = MegalodonLanguageModel.build_model(MegalodonLanguageModelConfig(**sizes), task)
    return randomise(model).double().eval()


def randomise(model):
    """Every parameter moved away from its initial value (the embedding's padding row kept
    at zero)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        embedding = model.decoder.embed_tokens
        embedding.weight[embedding.padding_idx].zero_()
    return model


def log_probs(model, tokens, **kwargs):
    return model.get_normalized_probs(model(tokens, **kwargs), log_probs=True)


def test_megalodon_lm_is_built_of_megalodon_parts():
    model = build_megalodon()
    layers = model.decoder.layers
    assert all(isinstance(layer.self_attn.ema, ComplexMultiDimensionalDampedEMA) for layer in layers)
    norms = [module for module in model.modules() if isinstance(module, TimestepNorm)]
    assert len(norms) == len(layers) + 1  # each block's attention input and the final norm
    assert all(layer.self_attn.normalized_attention for layer in layers)
    assert all(not layer.self_attn.update_gate for layer in layers)
    assert all(layer.settings.two_hop_residual for layer in layers)


CONFIGS = [
    dict(decoder_chunk_size=chunk, rel_pos_bias=bias, ffn_type=ffn)
    for chunk in (-1, 4)  # 4 does not divide the 11 tokens
    for bias in ("rotary", "simple")
    for ffn in ("mlp", "swiglu")
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: "-".join(map(str, config.values())))
def test_incremental_decoding_equals_the_full_forward(config):
    dictionary = make_dictionary()
    model = build_megalodon(dictionary, **config)
    tokens = random_tokens(dictionary, batch=3, length=11)
    with torch.no_grad():
        full = log_probs(model, tokens)
        state, steps = {}, []
        for t in range(tokens.size(1)):
            steps.append(log_probs(model, tokens[:, : t + 1], incremental_state=state)[:, -1:])
        state, blocks = {}, []
        for end in (3, 4, 9, 11):  # blocks of new tokens, each continuing the state
            blocks.append(log_probs(model, tokens[:, :end], incremental_state=state))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat(blocks, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [-1, 4])
def test_beam_reordering_continues_the_reordered_sequences(chunk):
    """Decode a prefix, reorder the batch as fairseq's beam search does (rows repeated and
    dropped), continue: equals the full forward of the reordered sequences."""
    dictionary = make_dictionary()
    model = build_megalodon(dictionary, decoder_chunk_size=chunk)
    prefix = random_tokens(dictionary, batch=3, length=6, seed=1)
    continuation = random_tokens(dictionary, batch=3, length=5, seed=2)
    new_order = torch.tensor([2, 0, 2])
    with torch.no_grad():
        state = {}
        for end in range(1, prefix.size(1) + 1):
            log_probs(model, prefix[:, :end], incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        sequences = torch.cat([prefix[new_order], continuation], dim=1)
        steps = [log_probs(model, sequences[:, :end], incremental_state=state)[:, -1:]
                 for end in range(prefix.size(1) + 1, sequences.size(1) + 1)]
        full = log_probs(model, sequences)[:, prefix.size(1):]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [-1, 4])
def test_padded_batch_equals_the_sequences_alone(chunk):
    """Left padding (fairseq's generation prefixes) and right padding (training batches):
    the timestep norm's statistics and the EMA skip the padding."""
    dictionary = make_dictionary()
    model = build_megalodon(dictionary, decoder_chunk_size=chunk)
    short, long = random_tokens(dictionary, 1, 6, seed=3), random_tokens(dictionary, 1, 10, seed=4)
    pad = torch.full((1, 4), dictionary.pad())
    with torch.no_grad():
        alone_short, alone_long = log_probs(model, short), log_probs(model, long)
        right = log_probs(model, torch.cat([torch.cat([short, pad], dim=1), long]))
        left = log_probs(model, torch.cat([torch.cat([pad, short], dim=1), long]))
    torch.testing.assert_close(right[0, :6], alone_short[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(left[0, 4:], alone_short[0], atol=ATOL, rtol=0)
    for batch in (right, left):
        torch.testing.assert_close(batch[1], alone_long[0], atol=ATOL, rtol=0)


def test_mega_lm_composes_with_the_complex_ema_and_timestep_norm():
    """``mega_lm --ema-type cema --normalization-type timestepnorm``: Mega's gated
    attention (update gate, learned q/k scale) over Megalodon's EMA and norm, decoded
    incrementally exactly."""
    torch.manual_seed(0)
    dictionary = make_dictionary()
    model = build_lm(dictionary, ema_type="cema", normalization_type="timestepnorm", timestep_norm_groups=4,
                     rel_pos_bias="rotary", decoder_chunk_size=4)
    model = randomise(model).double().eval()
    assert all(isinstance(layer.self_attn.ema, ComplexMultiDimensionalDampedEMA) for layer in model.decoder.layers)
    assert any(isinstance(module, TimestepNorm) for module in model.modules())
    assert all(layer.self_attn.update_gate for layer in model.decoder.layers)
    tokens = random_tokens(dictionary, batch=2, length=9)
    with torch.no_grad():
        full = log_probs(model, tokens)
        state = {}
        steps = [log_probs(model, tokens[:, :end], incremental_state=state)[:, -1:]
                 for end in range(1, tokens.size(1) + 1)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


def test_options_switch_megalodon_parts_back_to_mega():
    model = build_megalodon(ema_type="ema", normalization_type="layernorm", normalized_attention=False,
                            no_update_gate=False, two_hop_residual=False)
    assert not any(isinstance(module, (ComplexMultiDimensionalDampedEMA, TimestepNorm))
                   for module in model.modules())
    attention = model.decoder.layers[0].self_attn
    assert attention.update_gate and not attention.normalized_attention


# ------------------------------------------------------- segment-recurrent training


def segment(key, first):
    return {"key": key, "first": first}


@pytest.mark.parametrize("chunk", [-1, 4, 3])  # 3 and 4 do not divide the 10-token segments
def test_segment_recurrent_forward_equals_one_full_forward(chunk):
    """Three consecutive 10-token segments run in training mode from the carried state
    equal one forward over the 30 tokens."""
    dictionary = make_dictionary()
    model = build_megalodon(dictionary, decoder_chunk_size=chunk)
    stream = random_tokens(dictionary, batch=3, length=30, seed=5)
    with torch.no_grad():
        full = log_probs(model, stream)
        model.train()
        pieces = [log_probs(model, stream[:, k * 10:(k + 1) * 10], segment=segment("train:0", k == 0))
                  for k in range(3)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


def test_segment_states_are_detached_and_gradients_stop_at_the_boundary():
    dictionary = make_dictionary()
    model = build_megalodon(dictionary).train()
    stream = random_tokens(dictionary, batch=2, length=16, seed=6)
    first = log_probs(model, stream[:, :8], segment=segment("train:0", True))
    carried = model.decoder.segment_states._states["train:0"]
    tensors = [value for entry in carried.values() for value in entry.values() if value is not None]
    assert tensors and not any(value.requires_grad for value in tensors)
    first.sum().backward()  # frees the first segment's graph
    model.zero_grad()
    second = log_probs(model, stream[:, 8:], segment=segment("train:0", False))
    second.sum().backward()  # needs nothing of the freed graph: the state was detached
    # the gradient of the second segment equals that of a model fed the carried state as
    # a constant incremental state (no path to the first segment's computation)
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.eval()
    state = {}
    with torch.no_grad():
        log_probs(model, stream[:, :8], incremental_state=state)
    model.train()
    again = log_probs(model, stream, incremental_state=state)
    again.sum().backward()
    for name, parameter in model.named_parameters():
        if name in gradients:
            torch.testing.assert_close(parameter.grad, gradients[name], atol=1e-9, rtol=1e-9, msg=name)


def test_first_segment_resets_and_groups_are_independent():
    dictionary = make_dictionary()
    model = build_megalodon(dictionary)
    a, b = random_tokens(dictionary, 2, 8, seed=7), random_tokens(dictionary, 2, 8, seed=8)
    with torch.no_grad():
        alone_a, alone_b = log_probs(model, a), log_probs(model, b)
        continued_b = log_probs(model, torch.cat([a, b], dim=1))[:, 8:]
        model.train()
        log_probs(model, a, segment=segment("train:0", True))
        # another group's segments neither read nor change group 0's state
        log_probs(model, b, segment=segment("train:1", True))
        log_probs(model, a, segment=segment("train:1", False))
        second = log_probs(model, b, segment=segment("train:0", False))
        restarted = log_probs(model, b, segment=segment("train:0", True))
        model.eval()  # evaluation scores each block on its own, whatever the tags
        evaluated = log_probs(model, b, segment=segment("train:0", False))
    torch.testing.assert_close(second, continued_b, atol=ATOL, rtol=0)
    torch.testing.assert_close(restarted, alone_b, atol=ATOL, rtol=0)
    torch.testing.assert_close(evaluated, alone_b, atol=ATOL, rtol=0)
    assert not torch.allclose(second, alone_b, atol=1e-3)  # the carried state matters


def test_a_segment_of_fewer_streams_continues_the_first_rows():
    """The last segments of a group can hold fewer streams (the later streams have ended):
    they continue the first rows of the carried state."""
    dictionary = make_dictionary()
    model = build_megalodon(dictionary)
    stream = random_tokens(dictionary, batch=3, length=16, seed=9)
    with torch.no_grad():
        full = log_probs(model, stream[:2])[:, 8:]
        model.train()
        log_probs(model, stream[:, :8], segment=segment("train:0", True))
        second = log_probs(model, stream[:2, 8:], segment=segment("train:0", False))
        log_probs(model, stream[:2, :8], segment=segment("train:1", True))
        with pytest.raises(ValueError, match="not in stream order"):
            log_probs(model, stream[:, 8:], segment=segment("train:1", False))
    torch.testing.assert_close(second, full, atol=ATOL, rtol=0)


# ------------------------------------------------------------- parameter counts


def megalodon_layer_parameters(d, z, v, f, n, swiglu):
    """One Megalodon block's parameters, from the paper's architecture: timestep norm
    (weight, bias), CEMA (delta, alpha, beta: d x n each; complex gamma: d x n x 2; omega;
    the phase logit theta: d), value projection, the projection to z, r and the attention
    output's residual part (no update gate), output projection, q/k scale and offset, the
    rotary encoding's learned pair (z/2 x 2 each), the FFN's layer norm and its
    weights (SwiGLU: three matrices without biases; MLP: two with)."""
    norm = 2 * d
    cema = 3 * d * n + 2 * d * n + d + d
    value = d * v + v
    shared = d * (z + v + d) + (z + v + d)
    output = v * d + d
    qk = 4 * z
    rotary = 2 * z
    ffn = 2 * d + (3 * d * f if swiglu else 2 * d * f + f + d)
    return norm + cema + value + shared + output + qk + rotary + ffn


def build_on_meta(tmp_path, arch, words, *extra):
    """A preset as fairseq-train builds it (the command line's presets and options), on
    the meta device: shapes without memory."""
    args = parse_command_line(write_dictionary(tmp_path / "data", words), ["--arch", arch, *extra])
    task = tasks.setup_task(args)
    with torch.device("meta"):
        return task.build_model(args), len(task.dictionary)


def test_7b_preset_has_the_papers_shape_and_parameter_count(tmp_path):
    """The paper's 7B: 32 blocks of width 4096 (z 1024, value 8192, SwiGLU FFN 8192, 16 EMA
    dimensions), untied embeddings over Llama 2's 32,000 tokens (31,996 words + fairseq's 4
    special symbols)."""
    model, vocabulary = build_on_meta(tmp_path, "megalodon_lm_7b", 31_996)
    assert vocabulary == 32_000
    d, layers = 4096, 32
    expected = (layers * megalodon_layer_parameters(d, z=1024, v=8192, f=8192, n=16, swiglu=True)
                + 2 * d + 2 * vocabulary * d)
    counted = count_parameters(model)
    assert counted == expected, (counted, expected)
    assert 7.0e9 <= counted <= 7.5e9, counted
    decoder = model.decoder
    assert len(decoder.layers) == layers and decoder.embed_tokens.weight.shape == (vocabulary, d)
    assert decoder.output_projection.weight is not decoder.embed_tokens.weight


def test_200m_preset_is_near_200m_parameters(tmp_path):
    model, vocabulary = build_on_meta(tmp_path, "megalodon_lm_200m", 31_996)
    d = 1024
    blocks = 12 * megalodon_layer_parameters(d, z=256, v=2048, f=2560, n=16, swiglu=False)
    counted = count_parameters(model)
    assert counted == blocks + 2 * d + 2 * vocabulary * d
    assert 1.8e8 <= counted <= 2.3e8, counted


def test_presets_are_the_same_model_family(tmp_path):
    """megalodon_lm and megalodon_lm_200m are one shape; the tiny preset is CPU-sized."""
    default, _ = build_on_meta(tmp_path, "megalodon_lm", 100)
    named, _ = build_on_meta(tmp_path, "megalodon_lm_200m", 100)
    assert count_parameters(default) == count_parameters(named)
    tiny, _ = build_on_meta(tmp_path, "megalodon_lm_tiny", 100)
    assert count_parameters(tiny) < 1_000_000


# ----------------------------------------------- the segment_language_modeling task


def test_stream_batches_layout():
    # 10 blocks, 2 streams per batch, 2 groups: 4 streams of 3 segments (stream s: blocks
    # 3s .. 3s+2; stream 3 has only block 9)
    assert stream_batches(10, 2, 2) == [[0, 3], [6, 9], [1, 4], [7], [2, 5], [8]]
    # a group whose streams have all ended gets an empty batch (fairseq's dummy batch)
    assert stream_batches(5, 2, 2) == [[0, 2], [4], [1, 3], []]
    assert stream_batches(4, 4, 1) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("blocks,batch,groups", [(37, 3, 2), (50, 4, 3), (7, 2, 4), (64, 8, 1)])
def test_stream_batches_keep_each_stream_consecutive(blocks, batch, groups):
    batches = stream_batches(blocks, batch, groups)
    assert sorted(index for rows in batches for index in rows) == list(range(blocks))  # each block once
    segments = math.ceil(blocks / (batch * groups))
    assert len(batches) == segments * groups
    for number, rows in enumerate(batches):
        group, k = number % groups, number // groups
        streams = [index // segments for index in rows]
        assert streams == list(range(group * batch, group * batch + len(rows)))  # the group's first streams
        assert all(index % segments == k for index in rows)  # segment k of each


def parse_segment_task(data, *argv):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, input_args=[
        str(data), "--task", "segment_language_modeling", "--user-dir", USER_DIR, "--arch", "megalodon_lm_tiny",
        "--tokens-per-sample", "8", "--sample-break-mode", "none", *map(str, argv)])


def test_task_batches_are_tagged_stream_segments(tmp_path):
    """The task's training batches: segment k of each stream of a group, in the order of
    stream_batches, tagged with the group and whether it is the streams' first segment;
    consecutive segments of a stream are consecutive text."""
    data = write_tiny_lm_data(tmp_path / "data", lines=20, line_length=12)
    args = parse_segment_task(data, "--batch-size", "2", "--segment-groups", "2")
    task = tasks.setup_task(args)
    task.load_dataset("train")
    dataset = task.dataset("train")
    iterator = task.get_batch_iterator(dataset, max_sentences=2, seed=1).next_epoch_itr(shuffle=True)
    batches = list(iterator)
    expected = stream_batches(len(dataset), 2, 2)
    assert len(batches) == len(expected)
    segments = math.ceil(len(dataset) / 4)
    for number, (batch, rows) in enumerate(zip(batches, expected)):
        assert batch["id"].tolist() == rows
        assert batch["net_input"]["segment"] == {"key": f"train:{number % 2}", "first": number < 2}
    # stream 0's segments, joined, are the first blocks of the token stream
    stream_zero = torch.cat([batches[2 * k]["target"][0] for k in range(segments)])
    tokens = torch.cat([dataset[i]["target"] for i in range(segments)])
    assert torch.equal(stream_zero, tokens)


@pytest.mark.parametrize("argv,message", [
    (["--sample-break-mode", "eos"], "needs --sample-break-mode none"),
    (["--add-bos-token"], "cannot use --add-bos-token or --shorten-method"),
    (["--shorten-method", "truncate"], "cannot use --add-bos-token or --shorten-method"),
    (["--segment-groups", "0"], "--segment-groups must be a positive integer, got 0"),
])
def test_task_refuses_options_that_break_the_streams(tmp_path, argv, message):
    data = write_tiny_lm_data(tmp_path / "data")
    with pytest.raises(OptionError, match=message):
        tasks.setup_task(parse_segment_task(data, *argv))


def test_task_needs_a_batch_size_and_whole_groups_per_worker(tmp_path):
    data = write_tiny_lm_data(tmp_path / "data")
    task = tasks.setup_task(parse_segment_task(data, "--segment-groups", "3"))
    task.load_dataset("train")
    dataset = task.dataset("train")
    with pytest.raises(OptionError, match="needs --batch-size"):
        task.get_batch_iterator(dataset)
    with pytest.raises(OptionError, match="--segment-groups 3 must be a multiple of the 2 data-parallel workers"):
        task.get_batch_iterator(dataset, max_sentences=2, num_shards=2, shard_id=0)
    # --max-tokens alone: as many streams as blocks fit
    iterator = task.get_batch_iterator(dataset, max_tokens=16)
    first = next(iterator.next_epoch_itr(shuffle=False))
    assert first["net_input"]["src_tokens"].shape == (2, 8)

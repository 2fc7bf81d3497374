"""The compatibility layer that makes fairseq 0.12.2 work on Python 3.11 / torch >= 2.6."""

import argparse
import dataclasses
import sys
import textwrap

import pytest
import torch

from conftest import python_snippet


def test_startup_hook_is_lazy():
    """The .pth hook is registered at start-up; it imports nothing and patches nothing until
    the modules it watches are imported."""
    out = python_snippet(textwrap.dedent("""
        import sys
        import mega_fairseq_compat
        print(mega_fairseq_compat.is_installed())
        print('torch' in sys.modules, 'fairseq' in sys.modules, 'dataclasses' in sys.modules)
        import torch
        import argparse; print(argparse.Namespace not in torch.serialization.get_safe_globals())
    """)).stdout.split()
    assert out == ["True", "False", "False", "False", "True"]


def test_fairseq_and_hydra_import_with_hook():
    out = python_snippet(
        "import fairseq, hydra.conf, fairseq.options; print(fairseq.__version__)"
    ).stdout.strip().splitlines()
    assert out[-1] == "0.12.2"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the dataclass rule exists on Python 3.11+ only")
def test_fairseq_fails_without_hook_on_python311():
    """Proof that fix 1 is needed: with .pth files skipped (python -S) the import fails."""
    import site
    import subprocess

    code = (
        f"import sys; sys.path[:0] = {site.getsitepackages()!r}\n"
        # -S also skips site's builtins, and fairseq 0.12.2 uses the builtin ``help`` as a key
        "import builtins; builtins.help = 'help'\n"
        "try:\n    import fairseq\nexcept ValueError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert "mutable default" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the dataclass rule exists on Python 3.11+ only")
def test_dataclass_exemption_is_scoped_to_fairseq_and_hydra():
    """Other code keeps Python's check: a dataclass default elsewhere still raises."""
    import fairseq  # noqa: F401  (makes sure the fix is applied)

    @dataclasses.dataclass
    class Inner:
        x: int = 1

    with pytest.raises(ValueError, match="mutable default"):

        @dataclasses.dataclass
        class Outer:
            inner: Inner = Inner()

    # and the fairseq classes that needed the exemption got their shared default
    from fairseq.dataclass.configs import CommonConfig, FairseqConfig

    assert isinstance(FairseqConfig.__dataclass_fields__["common"].default, CommonConfig)
    assert CommonConfig.__hash__ is None  # hashability was only borrowed for the check


def test_dataclass_fix_is_noop_before_python311(monkeypatch):
    from mega_fairseq_compat import dataclass_defaults

    monkeypatch.setattr(dataclass_defaults.sys, "version_info", (3, 10, 12))
    monkeypatch.setattr(dataclass_defaults, "_original_get_field", None)
    original = dataclasses._get_field
    dataclass_defaults.apply()
    assert dataclasses._get_field is original


def test_checkpoint_allow_list_is_exact(tmp_path):
    """argparse.Namespace and numeric numpy arrays (--eval-bleu's meters) load with the
    default weights_only=True; other objects, also inside numpy object arrays, are refused."""
    import fractions

    import numpy as np

    import fairseq  # noqa: F401

    ok = tmp_path / "ok.pt"
    counts = np.array([5, 3, 2, 1], dtype=np.int64)
    torch.save({"cfg": {"model": argparse.Namespace(arch="x")}, "w": torch.ones(2),
                "meters": [counts, np.float32(0.5) * np.ones(2, dtype=np.float32)]}, ok)
    loaded = torch.load(ok)
    assert loaded["cfg"]["model"].arch == "x"
    assert loaded["meters"][0].tolist() == [5, 3, 2, 1] and loaded["meters"][0].dtype == np.int64

    for name, value in (("fraction", fractions.Fraction(1, 3)),
                        ("object_array", np.array([fractions.Fraction(1, 3)], dtype=object))):
        bad = tmp_path / f"{name}.pt"
        torch.save({"other": value}, bad)
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(bad)


def test_better_transformer_fast_path_disabled_after_load():
    """fairseq's encoder layer stays on the regular path after load_state_dict and gives the
    same outputs as before loading (the fast path aborts on current torch)."""
    from fairseq.models.transformer import TransformerConfig
    from fairseq.models.transformer.transformer_encoder import TransformerEncoderBase
    from fairseq.data import Dictionary

    torch.manual_seed(0)
    dictionary = Dictionary()
    for word in "abcdefgh":
        dictionary.add_symbol(word)
    cfg = TransformerConfig()
    cfg.encoder.embed_dim, cfg.encoder.ffn_embed_dim, cfg.encoder.attention_heads = 16, 32, 2
    cfg.encoder.layers = 2
    embed = torch.nn.Embedding(len(dictionary), 16, padding_idx=dictionary.pad())
    encoder = TransformerEncoderBase(cfg, dictionary, embed).eval()
    tokens = torch.tensor([[5, 6, 7, 8, 2], [5, 6, 2, 1, 1]])
    lengths = torch.tensor([5, 3])
    with torch.no_grad():
        before = encoder(tokens, lengths)["encoder_out"][0]
        encoder.load_state_dict(encoder.state_dict())
        assert not any(layer.load_to_BT for layer in encoder.layers)
        after = encoder(tokens, lengths)["encoder_out"][0]
    torch.testing.assert_close(before, after)


def test_cpu_ddp_wrapper_drops_gpu_arguments(tmp_path):
    """fairseq passes device_ids to DDP even on CPU; the patched class ignores them there."""
    # a file store in this test's folder: no TCP port is needed
    store = (tmp_path / "store").as_uri()
    code = textwrap.dedent("""
        import os, torch, torch.distributed as dist
        dist.init_process_group('gloo', init_method=%r, rank=0, world_size=1)
        from fairseq.models import distributed_fairseq_model as dfm
        from argparse import Namespace
        args = Namespace(tpu=False, ddp_backend='pytorch_ddp', device_id=0, broadcast_buffers=False,
                         bucket_cap_mb=25, find_unused_parameters=False, gradient_as_bucket_view=False,
                         ddp_comm_hook='none', heartbeat_timeout=-1)
        model = dfm.DistributedFairseqModel(args, torch.nn.Linear(3, 2), None, torch.device('cpu'))
        out = model(torch.ones(4, 3)).sum(); out.backward()
        print(type(dfm.DistributedDataParallel).__name__, dfm.DistributedDataParallel.__name__)
    """) % store
    out = python_snippet(code).stdout
    assert "CpuAwareDistributedDataParallel" in out


def test_text_work_never_imports_torchaudio():
    """fairseq pulls torchaudio from PyPI, which does not import beside a CPU torch; neither
    the plugin nor fairseq's text tooling may import it."""
    code = textwrap.dedent("""
        import sys
        import mega_fairseq
        import fairseq_cli.train, fairseq_cli.generate, fairseq_cli.eval_lm, fairseq_cli.interactive
        from fairseq.tasks import language_modeling, translation
        print('torchaudio' in sys.modules)
    """)
    assert python_snippet(code).stdout.split()[-1] == "False"


def test_numpy2_compat_long_for_fairseq_datasets():
    """fairseq's TokenBlockDataset (LM inference) and LanguagePairDataset use the removed
    ``np.compat.long``; both work."""
    import numpy as np
    from fairseq.data import Dictionary, LanguagePairDataset, TokenBlockDataset

    tokens = [torch.tensor([4, 5, 2]), torch.tensor([6, 2])]
    blocks = TokenBlockDataset(tokens, [3, 2], block_size=8, pad=1, eos=2, break_mode="eos")
    assert [blocks[i].tolist() for i in range(len(blocks))] == [[4, 5, 2], [6, 2]]

    dictionary = Dictionary()
    pairs = LanguagePairDataset(tokens, np.array([3, 2]), dictionary, tokens, np.array([3, 2]), dictionary)
    assert pairs.num_tokens_vec(np.array([0, 1])).tolist() == [3, 2]


def test_batch_prefetching_thread_stops_before_exit():
    """Fix 15: fairseq's prefetching thread hands over the same batches, then stops once the
    interpreter exits instead of running on into its teardown (which aborted finished runs
    with 'terminate called without an active exception')."""
    out = python_snippet(textwrap.dedent("""
        import itertools, time
        from fairseq.data import iterators
        from mega_fairseq_compat import background_batches
        print(getattr(iterators.BackgroundConsumer.run, "_mega_fairseq_stoppable", False))
        finite = iterators.BufferedIterator(2, list(range(7)))
        print(list(finite) == list(range(7)))

        class Endless:
            def __len__(self):
                return 10 ** 9
            def __iter__(self):
                for i in itertools.count():
                    time.sleep(0.01)
                    yield i

        endless = iterators.BufferedIterator(3, Endless())
        print([next(endless) for _ in range(5)] == list(range(5)))
        time.sleep(0.2)  # the queue is full: the thread waits to put the next batch
        consumer = endless._consumer
        print(consumer.is_alive())
        background_batches._stop_consumers()  # what atexit runs
        print(consumer.is_alive())
    """)).stdout.split()
    assert out == ["True", "True", "True", "True", "False"]

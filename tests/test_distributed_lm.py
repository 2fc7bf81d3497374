"""Data-parallel ``mega_lm`` and ``megalodon_lm`` training over 2 CPU processes (gloo)
through fairseq's own torch.distributed support, launched with ``torchrun``, against one
process with the same effective batch.

fairseq shards the (identically shuffled) list of batches across workers round-robin:
worker ``r`` of ``W`` takes batches ``r, r+W, r+2W, ...``, and one update consumes one batch
per worker.  A single process with the same ``--batch-size`` and ``--update-freq W``
accumulates batches ``kW .. kW+W-1`` into update ``k``: exactly the same samples per update.
With every dropout off, the two runs must follow the same loss trajectory and end with the
same parameters, up to float summation order (the all-reduce adds the workers' gradients in
another order than gradient accumulation does).

``--task segment_language_modeling`` orders the batches by stream group instead (group g of
G takes batches g, g+G, ...; G defaults to the number of workers), and the decoder carries
each group's state from one of its batches to the next: worker r of 2 holds group r's
state, one process with ``--update-freq 2 --segment-groups 2`` holds both groups' states,
and the two must again train alike.
"""

import json
import re
import sys

import pytest
import torch

from conftest import REPO, console_script, run_cli, with_option_values

BATCH_SIZE = 4
WORKERS = 2
UPDATES = 8

TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--task", "language_modeling", "--arch", "mega_lm_tiny",
    "--tokens-per-sample", "64", "--decoder-chunk-size", "16", "--sample-break-mode", "none",
    "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4",
    "--dropout", "0", "--attention-dropout", "0", "--hidden-dropout", "0", "--activation-dropout", "0",
    "--batch-size", str(BATCH_SIZE), "--cpu", "--seed", "1", "--no-progress-bar",
    "--log-format", "json", "--log-interval", "1", "--disable-validation", "--no-epoch-checkpoints",
]
DISTRIBUTED = ["--distributed-backend", "gloo"]

# The json log rounds loss and gnorm to 3 decimals, so one unit in the last place is the
# tightest bound the logs allow (about 1e-4 relative for losses around 10).  The final
# parameters are compared exactly as saved.
LOG_TOLERANCE = 1.01e-3
PARAM_TOLERANCE = 1e-5


def _torchrun(*args):
    # --standalone: torchrun's c10d rendezvous on localhost port 0; the agent's TCP stores
    # bind port 0 and stay open, and the workers (TORCHELASTIC_USE_AGENT_STORE) connect to
    # the agent's store, so no port is fixed or picked and released before use
    return [console_script("torchrun"), "--standalone", "--nnodes", "1", "--nproc_per_node", str(WORKERS),
            console_script("fairseq-train"), *args]


def _updates(result):
    """num_updates -> (loss, gnorm, bsz) from the per-update ``train_inner`` json records."""
    records = {}
    for line in (result.stdout + result.stderr).splitlines():
        if "| train_inner |" in line:
            stats = json.loads(line.split("| train_inner |", 1)[1])
            records[int(stats["num_updates"])] = (
                float(stats["loss"]), float(stats["gnorm"]), int(float(stats["bsz"])))
    return records


def _model(checkpoint):
    # a checkpoint this test just wrote
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]


def _assert_same_trajectory(reference, distributed, updates):
    assert sorted(distributed) == list(updates), distributed
    for update in updates:
        ref_loss, ref_gnorm, ref_bsz = reference[update]
        loss, gnorm, bsz = distributed[update]
        assert bsz == ref_bsz == BATCH_SIZE * WORKERS, (update, bsz, ref_bsz)
        assert abs(loss - ref_loss) <= LOG_TOLERANCE, (update, loss, ref_loss)
        assert abs(gnorm - ref_gnorm) <= LOG_TOLERANCE, (update, gnorm, ref_gnorm)


def _assert_same_parameters(reference, distributed):
    assert reference.keys() == distributed.keys()
    for name, value in reference.items():
        torch.testing.assert_close(distributed[name], value, rtol=0, atol=PARAM_TOLERANCE, msg=name)


def _assert_two_workers(result):
    log = result.stdout + result.stderr
    assert re.search(r"distributed init \(rank 1\): env://", log), log[-3000:]


def _single_process_run(save, data, train, *extra):
    """One process, same batch size, gradients of WORKERS batches accumulated -> (updates,
    final model state dict, log)."""
    result = run_cli([console_script("fairseq-train"), data, *train, *extra,
                      "--update-freq", str(WORKERS), "--max-update", str(UPDATES), "--save-dir", save])
    updates = _updates(result)
    assert sorted(updates) == list(range(1, UPDATES + 1)), result.stdout[-3000:]
    losses = [loss for loss, _, _ in updates.values()]
    assert losses[-1] < losses[0] - 1.0, losses  # it learns: the comparison is not vacuous
    return updates, _model(save / "checkpoint_last.pt"), result.stdout + result.stderr


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, shakespeare_lm_data):
    """The reference: one process, same batch size, gradients of WORKERS batches accumulated."""
    updates, model, _ = _single_process_run(tmp_path_factory.mktemp("single"), shakespeare_lm_data, TRAIN)
    return updates, model


@pytest.mark.slow
def test_pytorch_ddp_matches_single_process(tmp_path, shakespeare_lm_data, single_process):
    """fairseq's default ``--ddp-backend pytorch_ddp`` (DistributedDataParallel) on CPU."""
    reference, reference_model = single_process
    save = tmp_path / "ckpt"
    result = run_cli(_torchrun(shakespeare_lm_data, *TRAIN, *DISTRIBUTED,
                               "--max-update", str(UPDATES), "--save-dir", save))
    _assert_two_workers(result)
    _assert_same_trajectory(reference, _updates(result), range(1, UPDATES + 1))
    _assert_same_parameters(reference_model, _model(save / "checkpoint_last.pt"))


@pytest.mark.slow
def test_legacy_ddp_matches_single_process_across_resume(tmp_path, shakespeare_lm_data, single_process):
    """``--ddp-backend legacy_ddp``, stopped half-way and resumed from checkpoint_last.pt: on
    resume rank 0 reads the checkpoint and broadcasts it to rank 1."""
    reference, reference_model = single_process
    save = tmp_path / "ckpt"
    half = UPDATES // 2
    common = [shakespeare_lm_data, *TRAIN, *DISTRIBUTED, "--ddp-backend", "legacy_ddp", "--save-dir", save]
    first = run_cli(_torchrun(*common, "--max-update", str(half)))
    _assert_two_workers(first)
    _assert_same_trajectory(reference, _updates(first), range(1, half + 1))

    resumed = run_cli(_torchrun(*common, "--max-update", str(UPDATES)))
    log = resumed.stdout + resumed.stderr
    assert re.search(rf"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ {half} updates\)", log), log[-3000:]
    _assert_same_trajectory(reference, _updates(resumed), range(half + 1, UPDATES + 1))
    _assert_same_parameters(reference_model, _model(save / "checkpoint_last.pt"))


# ------------------------------------------------------------------- megalodon_lm
MEGALODON_TRAIN = with_option_values(TRAIN, arch="megalodon_lm_tiny")
# the one process carries both groups' states, each worker its own group's
MEGALODON_CASES = {
    "language_modeling": (MEGALODON_TRAIN, []),
    "segment_language_modeling": (with_option_values(MEGALODON_TRAIN, task="segment_language_modeling"),
                                  ["--segment-groups", str(WORKERS)]),
}
# segment_language_modeling's layout: WORKERS groups of BATCH_SIZE streams
SEGMENT_LAYOUT = re.compile(rf"segment-recurrent order: \d+ blocks of 64 tokens as {WORKERS * BATCH_SIZE} "
                            rf"streams \({WORKERS} groups of {BATCH_SIZE}\)")


@pytest.fixture(scope="module", params=sorted(MEGALODON_CASES))
def megalodon_single_process(request, tmp_path_factory, shakespeare_lm_data):
    """(task, training options, one-process reference updates, its final model)."""
    train, single_only = MEGALODON_CASES[request.param]
    updates, model, log = _single_process_run(tmp_path_factory.mktemp(f"megalodon_{request.param}"),
                                              shakespeare_lm_data, train, *single_only)
    if request.param == "segment_language_modeling":
        assert SEGMENT_LAYOUT.search(log), log[-3000:]
    return request.param, train, updates, model


@pytest.mark.slow
def test_megalodon_pytorch_ddp_matches_single_process(tmp_path, shakespeare_lm_data, megalodon_single_process):
    """``megalodon_lm_tiny`` (complex EMA, timestep norm: more state than Mega's) under
    pytorch_ddp; with segment_language_modeling the workers' default --segment-groups is 2,
    and rank r trains group r from the state of its own previous batch."""
    task, train, reference, reference_model = megalodon_single_process
    save = tmp_path / "ckpt"
    result = run_cli(_torchrun(shakespeare_lm_data, *train, *DISTRIBUTED,
                               "--max-update", str(UPDATES), "--save-dir", save))
    _assert_two_workers(result)
    if task == "segment_language_modeling":
        assert SEGMENT_LAYOUT.search(result.stdout + result.stderr), result.stdout[-3000:]
    _assert_same_trajectory(reference, _updates(result), range(1, UPDATES + 1))
    _assert_same_parameters(reference_model, _model(save / "checkpoint_last.pt"))


BROADCAST_SCRIPT = """
import sys, torch, torch.distributed as dist
from omegaconf import OmegaConf

def worker(rank, store):
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    from fairseq.models import distributed_fairseq_model  # noqa: F401  (applies the fixes)
    from fairseq.distributed import utils as distributed_utils
    state = {"cfg": OmegaConf.create({"model": {"_name": "mega_lm"}}), "w": torch.arange(3.0)} if rank == 0 else None
    state = distributed_utils.broadcast_object(state, src_rank=0, group=distributed_utils.get_global_group())
    assert state["cfg"].model._name == "mega_lm" and state["w"].tolist() == [0.0, 1.0, 2.0], state
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(sys.argv[1],), nprocs=2)
    print("broadcast ok")
"""


def test_broadcast_object_carries_a_loaded_checkpoint_state(tmp_path):
    """What the trainer broadcasts on resume (an OmegaConf config beside tensors) reaches
    rank 1 under torch's weights-only default ``torch.load``."""
    script = tmp_path / "broadcast.py"
    script.write_text(BROADCAST_SCRIPT)
    # the workers meet through a file store in this test's folder: no TCP port
    result = run_cli([sys.executable, script, (tmp_path / "store").as_uri()], timeout=120)
    assert "broadcast ok" in result.stdout

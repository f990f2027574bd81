"""Data-parallel training under torchrun (gloo on CPU): equal to one process with the same global
batch, buffers identical across ranks, exact resume after SIGKILL, resume at another world size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aelab import distributed
from aelab.training.checkpoint import read_checkpoint_meta

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# a small AE on real digits: deterministic, so one and two processes can be compared step by step
AE = ["ae", "--data", "mnist-10k", "--set", "trainer.batch_size=64", "--set", "trainer.images=false",
      "--set", "trainer.iwae_k=0", "--set", "trainer.progress=false", "--set", "trainer.eval_limit=200",
      "--set", "trainer.log_every=1", "--set", "model.backbone.hidden=[64]"]


def _env() -> dict[str, str]:
    # one thread a process: two ranks on the 2-core CI machine; no inherited torchrun variables
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _aelab(args: list[str], cwd: Path, procs: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    launcher = TORCHRUN if procs == 2 else [sys.executable]
    cmd = [*launcher, "-m", "aelab", "--threads", "1", "train", *args]
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run) if r["split"] == "train"}


def test_helpers_in_one_process():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and not distributed.is_distributed()
    idx = torch.arange(10)
    pieces = [distributed.shard(idx, r, 4) for r in range(4)]
    assert torch.equal(torch.cat(pieces), idx) and [len(p) for p in pieces] == [3, 3, 2, 2]
    assert [len(distributed.shard(torch.arange(1), r, 2)) for r in range(2)] == [1, 0]
    t = torch.ones(3)
    assert distributed.all_reduce_(t) is t and distributed.all_gather_cat(t) is t and torch.equal(t, torch.ones(3))
    assert distributed.init_from_environment(torch.device("cpu")) is None


def test_environment_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE: expected a positive integer, got 'two'"):
        distributed.environment_world_size()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK: expected an integer"):
        distributed.environment_rank()


def test_two_processes_give_the_one_process_loss_curve(tmp_path):
    _aelab([*AE, "--set", "trainer.max_steps=40", "--out", "one"], tmp_path, procs=1)
    r = _aelab([*AE, "--set", "trainer.max_steps=40", "--out", "two"], tmp_path)
    assert "2 processes (torchrun)" in r.stdout and r.stdout.count("done: two") == 1  # rank 0 prints
    one, two = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 41))
    for step in one:  # the same global batches: only the order of float sums differs
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    # rank 0 alone wrote the run: one test record, one config, no stray files of rank 1
    assert sum(r["split"] == "test" for r in _records(tmp_path / "two")) == 1


def test_global_batch_must_divide(tmp_path):
    r = _aelab([*AE, "--set", "trainer.max_steps=2", "--set", "trainer.batch_size=63", "--out", "odd"], tmp_path,
               check=False)
    assert r.returncode != 0
    msg = "trainer.batch_size=63 is the global batch and must divide evenly over the 2 processes"
    assert msg in r.stdout + r.stderr


@pytest.mark.parametrize("model", ["vqvae", "factor_vae"])
def test_ranks_stay_identical(tmp_path, model):
    """vqvae: the EMA codebook, k-means initialisation and dead-code restarts (82 in these steps)
    follow the global batch, so both ranks hold the same buffers and match one process;
    factor_vae: two optimizers in the model's own step, gradients combined by finish_gradients."""
    env = _env()
    subprocess.run([*TORCHRUN, str(WORKER), model, str(tmp_path / "two"), "20"], env=env, check=True,
                   capture_output=True, timeout=600)
    r0, r1 = (load_file(tmp_path / "two" / f"rank{r}.safetensors") for r in range(2))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    if model == "vqvae":
        assert int(r0["quantizers.0.restarts"]) > 0 and bool(r0["quantizers.0.initialised"])
        subprocess.run([sys.executable, str(WORKER), model, str(tmp_path / "one"), "20"], env=env, check=True,
                       capture_output=True, timeout=600)
        ref = load_file(tmp_path / "one" / "rank0.safetensors")
        # a vector almost equidistant to two codes may go to the other one in another float summation
        # order: such a flip moves one count of each of the two codes by (1 - decay) = 0.01 and their
        # vectors a little; every other code, and every weight, agrees to float tolerance
        size = "quantizers.0.cluster_size"
        moved = (r0[size] - ref[size]).abs()
        flipped = moved > 1e-3
        assert int(flipped.sum()) <= 4 and float(moved.max()) <= 0.02
        assert float(r0[size].sum()) == pytest.approx(float(ref[size].sum()), rel=1e-6)
        for k in ref:
            a, b = r0[k].double(), ref[k].double()
            if k.startswith("quantizers.0.") and a.shape[:1] == flipped.shape:
                a, b = a[~flipped], b[~flipped]
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        losses = [json.loads((tmp_path / d / "rank0.json").read_text()) for d in ("one", "two")]
        assert [x["loss"] for x in losses[1]] == pytest.approx([x["loss"] for x in losses[0]], rel=1e-5)


def _kill_at(cmd: list[str], cwd: Path, run: Path, step: int) -> None:
    """Start ``cmd`` and SIGKILL its whole process group (torchrun and both ranks) once the run's
    log has passed ``step``."""
    p = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and p.poll() is None:
        log = run / "metrics.jsonl"
        if log.is_file() and any(f'"step": {step},' in line for line in log.read_text().splitlines()):
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    for pid in [p.pid, *_descendants(p.pid)]:  # torchrun starts its workers in sessions of their own
        os.kill(pid, signal.SIGKILL)
    p.wait()


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, pp in parents.items() if pp in frontier]
        found += children
        frontier = children
    return found


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    """A 2-process run killed with SIGKILL and resumed with 2 processes ends bit-identical to an
    uninterrupted 2-process run; resumed with 1 process it continues (and says it is not exact)."""
    args = [*AE, "--set", "trainer.max_steps=300", "--set", "trainer.checkpoint_every=40",
            "--set", "model.backbone.hidden=[256]"]
    _aelab([*args, "--out", "whole"], tmp_path)
    _kill_at([*TORCHRUN, "-m", "aelab", "--threads", "1", "train", *args, "--out", "cut"], tmp_path,
             tmp_path / "cut", 130)
    state = read_checkpoint_meta(tmp_path / "cut" / "trainer_state.safetensors")
    assert 0 < state["step"] < 300 and state["world_size"] == 2
    (tmp_path / "cut1").mkdir()
    for f in (tmp_path / "cut").iterdir():
        if f.is_file():
            (tmp_path / "cut1" / f.name).write_bytes(f.read_bytes())
    r = _aelab(["--resume", "cut"], tmp_path)
    assert f"from step {state['step']} of 300" in r.stdout
    whole, cut = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    for k in whole:
        assert torch.equal(whole[k], cut[k]), k
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "whole")
    r1 = _aelab(["--resume", "cut1"], tmp_path, procs=1)
    assert "written by 2 process(es), this run has 1" in r1.stdout and "not bit-identical" in r1.stdout
    assert _records(tmp_path / "cut1")[-1]["step"] == 300


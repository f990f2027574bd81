"""Hardening of runs: one writer per run directory, divergence stops, damaged logs, leftovers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import fit_until_interrupted, require_shared_data, tiny_overrides

from aelab.cli import main
from aelab.data.base import TensorImageDataset
from aelab.io import LOCK_NAME, RunLock, RunLockedError
from aelab.protocol import build_model
from aelab.training.checkpoint import STATE_NAME
from aelab.training.trainer import NonFiniteLossError, Trainer, TrainerConfig, read_metrics


def _data(n: int = 48) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 256, (n, 1, 12, 10), generator=g, dtype=torch.uint8),
                              torch.zeros(n, dtype=torch.long))


def _trainer(run_dir, **cfg) -> Trainer:
    torch.manual_seed(0)
    model = build_model("vae", **tiny_overrides("vae"))
    base = dict(epochs=2, batch_size=16, checkpoint_every=2, log_every=1, images=False, progress=False, iwae_k=0)
    return Trainer(model, _data(), _data(16), TrainerConfig(**(base | cfg)), run_dir=run_dir)


HOLD = textwrap.dedent("""
    import sys, time
    from aelab.io import RunLock
    RunLock(sys.argv[1]).acquire()
    print("holding", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_killed_holder_releases(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            _trainer(tmp_path).fit()
        assert not (tmp_path / STATE_NAME).exists()  # the refused writer wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    # the kernel released the dead holder's lock: the stale lock file is taken over
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(holder.pid)
    _trainer(tmp_path).fit()
    assert (tmp_path / STATE_NAME).exists()


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with RunLock(tmp_path), RunLock(tmp_path):
        pass
    with RunLock(tmp_path):  # free again
        pass


def test_a_finite_blow_up_stops_like_a_nan(tmp_path):
    t = _trainer(tmp_path, divergence=1.0)  # a VAE's loss on 120 pixels is far above 1 nat
    with pytest.raises(NonFiniteLossError, match=r"loss exceeded trainer.divergence=1 in magnitude .* step 0"):
        t.fit()
    with pytest.raises(ValueError, match="trainer.divergence must be > 0"):
        TrainerConfig(divergence=0.0)


def test_optimizer_state_that_is_not_finite_is_never_saved(tmp_path):
    t = _trainer(tmp_path)
    fit_until_interrupted(t, 3)
    before = (tmp_path / STATE_NAME).read_bytes()
    next(iter(t.optimizer.state.values()))["exp_avg"].fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="optimizer state"):
        t.save()
    assert (tmp_path / STATE_NAME).read_bytes() == before


def test_a_log_line_cut_by_a_kill_is_dropped_on_resume_and_other_damage_is_named(tmp_path):
    t = _trainer(tmp_path)
    fit_until_interrupted(t, 3)
    log = tmp_path / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "epoch": 0, "spl')  # a write interrupted mid-line
    resumed = _trainer(tmp_path)
    resumed.fit(resume=True)
    records = read_metrics(log)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 7))
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
        read_metrics(log)
    log.write_text('{"epoch": 1}\n')
    with pytest.raises(ValueError, match=r"line 1: a record needs an integer 'step'"):
        read_metrics(log)


def test_temporary_files_of_a_killed_write_are_removed_at_the_next_start(tmp_path):
    t = _trainer(tmp_path)
    fit_until_interrupted(t, 3)
    orphan = tmp_path / ".model.safetensors.abc123.tmp"
    orphan.write_bytes(b"x" * 1000)
    _trainer(tmp_path).fit(resume=True)
    assert not orphan.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_a_run_killed_before_its_first_periodic_checkpoint_resumes_exactly(tmp_path):
    straight = _trainer(tmp_path / "a", checkpoint_every=1000)
    straight.fit()
    first = _trainer(tmp_path / "b", checkpoint_every=1000)
    fit_until_interrupted(first, 2)
    assert json.loads(json.dumps(read_metrics(tmp_path / "b" / "metrics.jsonl")))  # steps 1-2 were logged
    resumed = _trainer(tmp_path / "b", checkpoint_every=1000)
    resumed.fit(resume=True)
    assert resumed.resumed_from == 0
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_of_a_holder_mid_run_leaves_a_resumable_directory(tmp_path):
    script = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import test_hardening as t
        from conftest import sigkill_at
        tr = t._trainer({str(tmp_path)!r})
        sigkill_at(tr, 3)
        tr.fit()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = _trainer(tmp_path)
    resumed.fit(resume=True)  # the dead process's lock does not block
    assert resumed.step == 6 and resumed.resumed_from == 3  # the epoch-end checkpoint


# --- through the command line: every expected failure is one line naming the problem ---------------
SMALL = ["--data", "fashion-mnist", "--set", "data.train_subset=100", "--set", "data.test_subset=50",
         "--set", "model.latent_dim=4", "--set", "model.backbone.hidden=16", "--set", "trainer.batch_size=50",
         "--set", "trainer.progress=false", "--set", "trainer.images=false", "--set", "trainer.iwae_k=0",
         "--set", "trainer.epochs=1"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--threads", "1", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One small VAE run through ``aelab train``, trained once for this module."""
    require_shared_data()
    run = tmp_path_factory.mktemp("trained") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--threads", "1", "train", "vae", *SMALL, "--out", str(run)]) == 0
    assert "training vae on fashion-mnist" in out.getvalue() and "for 2 steps" in out.getvalue()
    return run


@pytest.fixture
def cli_run(trained_run, tmp_path, shared_data, capsys):
    """A fresh copy of the trained run for a test to damage or extend."""
    capsys.readouterr()
    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(LOCK_NAME))
    return run


def _one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aelab: error: "), err
    for n in needles:
        assert n in lines[0], (n, err)


def test_resume_is_strict_about_what_it_continues(cli_run, capsys):
    code, _, err = _cli(capsys, "train", "--resume", str(cli_run), "--set", "trainer.batch_size=40",
                        "--set", "data.train_subset=90", "--set", "model.beta=2")
    assert code == 2
    _one_line_error(err, "data.train_subset, model.beta, trainer.batch_size cannot change", "--init-from")
    code, out, err = _cli(capsys, "train", "--resume", str(cli_run))
    assert code == 0 and "nothing to do" in out and "finished at step 2 of 2" in out and "done" not in out
    code, out, err = _cli(capsys, "train", "--resume", str(cli_run), "--set", "trainer.epochs=2",
                          "--set", "trainer.log_every=1")
    assert code == 0 and "resuming vae on fashion-mnist" in out and "from step 2 of 4" in out, err


def test_init_from_starts_a_new_run_from_the_weights(cli_run, tmp_path, capsys):
    new = tmp_path / "tuned"
    code, out, err = _cli(capsys, "train", "vae", *SMALL, "--set", "trainer.lr=1e-4", "--init-from", str(cli_run),
                          "--out", str(new))
    assert code == 0 and f"from the weights of {cli_run}" in out, err
    meta = json.loads((new / "config.json").read_text())
    assert meta["parent"] == {"init_from": str(cli_run)} and meta["trainer"]["lr"] == 1e-4
    code, _, err = _cli(capsys, "train", "ae", *SMALL, "--init-from", str(cli_run), "--out", str(tmp_path / "x"))
    assert code == 2
    _one_line_error(err, "holds a 'vae' model, this run trains 'ae'")


def test_a_new_users_mistakes_get_one_line_each(tmp_path, capsys):
    code, _, err = _cli(capsys, "train")
    assert code == 2
    _one_line_error(err, "name a model to train", "configs/quickstart.json")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": "vae", "model_config": {"latent_dim": 3}, "data": {"name": "dsprites"}}))
    code, _, err = _cli(capsys, "train", "ae", "--config", str(cfg))
    _one_line_error(err, "trains model 'vae' but the command line names 'ae'")


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.safetensors", "config.json", "metrics.jsonl"])
def test_each_damaged_run_file_is_named_in_one_line(cli_run, capsys, name, damage):
    path = cli_run / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) - 5  # inside the last tensor's bytes, or the last JSON value
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x80\x04garbage")
    for argv in (["eval", str(cli_run), "--metrics", "reconstruction"],
                 ["train", "--resume", str(cli_run), "--set", "trainer.epochs=2"]):
        code, _, err = _cli(capsys, *argv)
        if code == 0:  # damage a command does not read (the log for eval; a flipped log value)
            continue
        assert code == 2, (argv, err)
        _one_line_error(err, name)


def test_a_read_only_run_directory_is_an_error_naming_it(cli_run, capsys):
    if os.geteuid() == 0:  # root writes anywhere: simulate with a run directory that is a file
        target = cli_run.parent / "file"
        target.write_text("x")
        code, _, err = _cli(capsys, "train", "vae", *SMALL, "--out", str(target))
    else:
        cli_run.chmod(0o500)
        code, _, err = _cli(capsys, "train", "--resume", str(cli_run), "--set", "trainer.epochs=2")
        cli_run.chmod(0o700)
    assert code == 2 and "Traceback" not in err
    _one_line_error(err)


def test_a_run_killed_in_its_first_save_is_explained_not_bounced(cli_run, capsys):
    (cli_run / "config.json").unlink()  # as if killed between the checkpoint and config.json
    for argv in (["train", "vae", *SMALL, "--out", str(cli_run)], ["train", "--resume", str(cli_run)]):
        code, _, err = _cli(capsys, *argv)
        assert code == 2
        _one_line_error(err, "stopped during its first save", "nothing was trained yet", f"delete {cli_run}")


def test_ctrl_c_names_the_run_to_resume(tmp_path, shared_data, capsys, monkeypatch):
    import aelab.cli.train as train_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "train_run", interrupted)
    code, _, err = _cli(capsys, "train", "vae", *SMALL, "--out", str(tmp_path / "r"))
    assert code == 130 and f"aelab train --resume {tmp_path / 'r'}" in err and "RUN_DIR" not in err


def test_divergence_and_a_config_of_42_are_one_line_at_the_command_line(tmp_path, shared_data, capsys):
    code, _, err = _cli(capsys, "train", "vae", *SMALL, "--set", "trainer.divergence=1", "--out", str(tmp_path / "d"))
    assert code == 2
    _one_line_error(err, "loss exceeded trainer.divergence=1", "at step 0")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("42")
    (bad / "trainer_state.safetensors").write_bytes(b"")
    for argv in (["eval", str(bad)], ["train", "--resume", str(bad)]):
        code, _, err = _cli(capsys, *argv)
        assert code == 2
        _one_line_error(err, "config.json")


def test_eval_is_reproducible_and_refuses_changed_data(cli_run, tmp_path, capsys):
    outs = []
    for _ in range(2):
        code, out, err = _cli(capsys, "eval", str(cli_run), "--metrics", "reconstruction", "--json")
        assert code == 0, err
        outs.append(json.loads(out)["metrics"])
    assert outs[0] == outs[1]  # a VAE's objective samples z: on a seeded stream
    # a user's file that changed image size since training
    import numpy as np

    f = tmp_path / "mine.npz"
    np.savez(f, x=np.zeros((20, 8, 8), np.uint8))
    run = tmp_path / "npzrun"
    code, _, err = _cli(capsys, "train", "ae", "--data", "npz", "--set", f"data.path={f}", "--set",
                        "trainer.epochs=1", "--set", "trainer.progress=false", "--set", "model.backbone.hidden=8",
                        "--set", "model.latent_dim=2", "--out", str(run))
    assert code == 0, err
    from PIL import Image

    with Image.open(run / "images" / "reconstructions_epoch001.png") as img:
        assert img.size[0] >= 8 * 7 * 8  # 8 x 8 images are enlarged (7x), not a 2x thumbnail
    np.savez(f, x=np.zeros((20, 10, 10), np.uint8))
    code, _, err = _cli(capsys, "eval", str(run))
    assert code == 2
    _one_line_error(err, str(f), "(1, 10, 10)", "changed since training")

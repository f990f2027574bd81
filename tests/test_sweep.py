"""Sweeps on Ray (``aelab sweep``): specs, the trial table, a killed trial that resumes exactly,
re-runs that skip finished trials, and the per-setting summary over seeds."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, require_shared_data
from safetensors.torch import load_file, save_file

from aelab.cli import main
from aelab.compat import MissingDependencyError
from aelab.config import ConfigError
from aelab.protocol import CONFIG_NAME, WEIGHTS_NAME
from aelab.report.html import collect_runs, write_report
from aelab.runs import RunConfig, train_run
from aelab.training import sweep
from aelab.training.checkpoint import STATE_NAME
from aelab.training.sweep import (
    RAY_MISSING,
    RayOptions,
    load_sweep_spec,
    mean_interval,
    run_sweep,
    summarize_sweep,
    t_critical,
    trial_name,
)

ROOT = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install -e '.[sweep]'); the sweep runner needs it")

#: 4 tiny trials (2 latent sizes x 2 seeds): an MLP autoencoder on 2,000 mnist-10k images,
#: 250 steps of batch 16 with a checkpoint every 10 steps (a few seconds each on a loaded core)
TINY = {
    "name": "tiny",
    "base": {"model": "ae", "model_config": {"latent_dim": 4, "backbone": {"kind": "mlp", "hidden": [32]}},
             "data": {"name": "mnist-10k", "train_subset": 2000, "test_subset": 200, "root": str(DATA_DIR)},
             "trainer": {"epochs": 2, "batch_size": 16, "checkpoint_every": 10, "log_every": 10, "images": False,
                         "iwae_k": 0, "diagnostics": False, "progress": False}},
    "grid": {"model.latent_dim": [2, 4]},
    "seeds": [0, 1],
}


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


# --- specs ----------------------------------------------------------------------------------------
def test_spec_trials_are_the_grid_crossed_with_the_seeds(tmp_path):
    spec = load_sweep_spec(write_spec(tmp_path / "s.json", TINY))
    trials = spec.trials()
    assert [t.name for t in trials] == ["model.latent_dim=2,trainer.seed=0", "model.latent_dim=2,trainer.seed=1",
                                        "model.latent_dim=4,trainer.seed=0", "model.latent_dim=4,trainer.seed=1"]
    cfg = RunConfig.from_dict(trials[3].config)
    assert cfg.model_config.latent_dim == 4 and cfg.trainer.seed == 1 and cfg.data.train_subset == 2000
    assert trials[3].group == {"model.latent_dim": 4}


def test_random_draws_are_seeded_and_named_after_their_values(tmp_path):
    spec = dict(TINY, grid={}, seeds=[0], random={"n": 3, "seed": 7, "params": {
        "trainer.lr": {"loguniform": [1e-4, 1e-2]}, "model.latent_dim": {"choice": [2, 8]},
        "trainer.batch_size": {"randint": [8, 32]}}})
    a = load_sweep_spec(write_spec(tmp_path / "a.json", spec)).trials()
    b = load_sweep_spec(write_spec(tmp_path / "b.json", spec)).trials()
    assert [t.setting for t in a] == [t.setting for t in b] and len(a) == 3
    for t in a:
        lr = t.setting["trainer.lr"]
        assert 1e-4 <= lr <= 1e-2 and lr == float(f"{lr:.6g}") and t.setting["model.latent_dim"] in (2, 8)
        assert RunConfig.from_dict(t.config).trainer.lr == lr and f"trainer.lr={lr}" in t.name
    assert len({t.name for t in a}) == 3


def test_the_configs_sweep_specs_validate():
    for name, model, key in [("dsprites_priors", "decomposition_vae", "model.prior.name"),
                             ("mnist_beta", "vae", "model.beta")]:
        spec = load_sweep_spec(ROOT / "configs" / "sweeps" / f"{name}.json")
        trials = spec.trials()
        assert len(trials) == 6 and {t.setting["trainer.seed"] for t in trials} == {0, 1, 2}
        assert all(RunConfig.from_dict(t.config).model == model and key in t.setting for t in trials)
    priors = {RunConfig.from_dict(t.config).model_config.prior.name
              for t in load_sweep_spec(ROOT / "configs/sweeps/dsprites_priors.json").trials()}
    assert priors == {"standard_normal", "anisotropic"}
    assert load_sweep_spec(ROOT / "configs/sweeps/dsprites_priors.json").metrics == ["disentanglement"]


@pytest.mark.parametrize("change, message", [
    ({"grdi": {}}, "unknown key 'grdi'; valid keys: name, description, base, grid, random, seeds, metrics, "
                   "metric_options"),
    ({"metrics": ["reconstructoin"]}, "metrics: unknown metric 'reconstructoin'"),
    ({"metric_options": {"disentanglement": {"protocol": "fast"}}},
     "metric_options: 'disentanglement' is not one of the spec's metrics []"),
    ({"metrics": ["disentanglement"], "metric_options": {"disentanglement": {"protocl": "fast"}}},
     "metric_options.disentanglement: unknown option(s) ['protocl']; disentanglement takes ['batch_size', 'protocol']"),
    ({"grid": {"model.latent_dimm": [2]}}, "grid['model.latent_dimm']: value 2: unknown config key"),
    ({"grid": {"trainer.lr": [-1.0]}}, "grid['trainer.lr']: value -1.0: trainer.lr must be a finite number > 0"),
    ({"grid": {"model.latent_dim": []}}, "grid['model.latent_dim']: expected a non-empty list of values"),
    ({"grid": {"trainer.seed": [0, 1]}}, "grid: 'trainer.seed': use \"seeds\" for trainer.seed"),
    ({"seeds": [0, 0]}, "seeds: expected a non-empty list of distinct integers"),
    ({"random": {"n": 2, "params": {"trainer.lr": {"gauss": [0, 1]}}}}, "random.params['trainer.lr']: expected one of"),
    ({"random": {"n": 2, "params": {"trainer.lr": {"loguniform": [0, 1]}}}}, "loguniform: expected [lo, hi] with 0 <"),
    ({"random": {"n": 2, "params": {"model.latent_dim": {"choice": [2]}}}}, "is in the grid too"),
    ({"base": "nowhere.json"}, "base: "),
    ({"name": "a b"}, "name: expected a name of letters"),
])
def test_a_bad_spec_is_one_line_naming_the_file_and_field(tmp_path, change, message):
    path = write_spec(tmp_path / "bad.json", {**TINY, **change})
    with pytest.raises((ConfigError, FileNotFoundError)) as err:
        load_sweep_spec(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_base_may_be_a_config_file_relative_to_the_spec(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.json").write_text(json.dumps(TINY["base"]))
    spec = load_sweep_spec(write_spec(tmp_path / "configs" / "s.json", {**TINY, "base": "base.json"}))
    assert spec.base == RunConfig.from_dict(TINY["base"]).to_dict()  # inlined: spec.json keeps the values


def test_trial_names_are_path_safe_and_unique():
    name = trial_name({"model.backbone.hidden": [64, 32], "trainer.seed": 0})
    assert name == "model.backbone.hidden=_64,32_,trainer.seed=0"
    long = trial_name({"model.beta": "cyclical(0, 1, 4690, 0.5)" * 10, "trainer.seed": 0})
    assert len(long) == 111 and "/" not in long
    assert trial_name({"a": "x/y"}) != trial_name({"a": "x/y"}, force_hash=True)


# --- statistics ------------------------------------------------------------------------------------
def test_t_critical_matches_the_tables():
    # two-sided 95% critical values of Student's t (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
             15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 60: 2.000, 100: 1.984, 120: 1.980}
    for df, t in table.items():
        assert t_critical(df) == pytest.approx(t, abs=6e-4), df
    # the series (df <= 100) and the expansion (df > 100) agree where they meet
    step = t_critical(99) - t_critical(100)
    assert t_critical(100) - t_critical(101) == pytest.approx(step * (99.5 / 100.5) ** 2, rel=1e-3)  # ~ 1/df^2
    assert t_critical(10**6) == pytest.approx(1.959964, abs=5e-6)  # the normal quantile, + 2.4e-6
    assert t_critical(4, level=0.99) == pytest.approx(4.604, abs=6e-4)


def fake_trial(sweep_dir: Path, trial, loss: float, status: str = "done") -> None:
    """A trial directory as a finished run leaves it: config, weights, a checkpoint at its last step."""
    run_dir = sweep_dir / "trials" / trial.name
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_NAME).write_text(json.dumps(trial.config))
    save_file({"w": torch.zeros(1)}, str(run_dir / WEIGHTS_NAME))
    save_file({"w": torch.zeros(1)}, str(run_dir / STATE_NAME), metadata={"aelab": json.dumps(
        {"step": 5, "total_steps": 5})})
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "epoch": 0, "split": "train", "loss": 2 * loss}) + "\n"
        + json.dumps({"step": 5, "epoch": 0, "split": "test", "loss": loss, "mse": loss / 10, "seconds": 1.0}) + "\n")
    (run_dir / "trial.json").write_text(json.dumps({"status": status, "attempts": 1}))


@pytest.fixture
def finished_sweep(tmp_path):
    spec = load_sweep_spec(write_spec(tmp_path / "tiny.json", {**TINY, "seeds": [0, 1, 2]}))
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "spec.json").write_text(json.dumps(spec.to_dict()))
    losses = [1.0, 2.0, 4.0, 10.0, 10.5, 0.0]  # latent 2: seeds 0-2; latent 4: seeds 0, 1 (seed 2 failed)
    for trial, loss in zip(spec.trials(), losses):
        fake_trial(sweep_dir, trial, loss, "failed" if loss == 0.0 else "done")
    return spec, sweep_dir


def test_summary_pools_seeds_per_setting(finished_sweep):
    spec, sweep_dir = finished_sweep
    summary = summarize_sweep(spec, sweep_dir)
    assert summary.keys == ["model.latent_dim"]
    assert [r["setting"] for r in summary.rows] == [{"model.latent_dim": 2}, {"model.latent_dim": 4}]
    loss = summary.rows[0]["metrics"]["loss"]
    mean, sd = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 df)
    assert loss["n"] == 3 and loss["mean"] == pytest.approx(mean) and loss["sd"] == pytest.approx(sd)
    assert loss["ci95"] == pytest.approx([mean - half, mean + half])
    assert summary.rows[0]["metrics"]["train_loss"]["mean"] == pytest.approx(2 * mean)
    assert set(summary.rows[0]["metrics"]) == {"loss", "mse", "train_loss"}  # "seconds" is bookkeeping
    four = summary.rows[1]["metrics"]["loss"]
    half = 12.706204736174698 * math.sqrt(0.125) / math.sqrt(2)
    assert four["n"] == 2 and four["ci95"] == pytest.approx([10.25 - half, 10.25 + half])
    assert summary.left_out == {"model.latent_dim=4,trainer.seed=2": "failed"}
    assert mean_interval([3.0]) == {"n": 1, "mean": 3.0, "sd": None, "ci95": None}


def test_summary_command_prints_and_writes_csv_and_json(finished_sweep, capsys):
    spec, sweep_dir = finished_sweep
    assert main(["sweep", str(spec.source), "--out", str(sweep_dir), "--summary"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["setting", "metric", "n", "mean", "s.d.", "95%", "interval"]
    assert lines[1].split()[:4] == ["model.latent_dim=2", "loss", "3", "2.3333"]
    assert "left out (not done): model.latent_dim=4,trainer.seed=2 (failed)" in out
    csv = (sweep_dir / "summary.csv").read_text().splitlines()
    assert csv[0] == "model.latent_dim,metric,n,mean,sd,ci95_low,ci95_high"
    assert csv[1].startswith("2,loss,3,2.3333333333333335,1.5275252316519")
    data = json.loads((sweep_dir / "summary.json").read_text())
    assert data["rows"][1]["metrics"]["loss"]["n"] == 2 and data["settings"] == ["model.latent_dim"]
    assert main(["sweep", str(spec.source), "--out", str(sweep_dir), "--summary", "--metrics", "mse,loss"]) == 0
    assert [line.split()[-6] for line in capsys.readouterr().out.splitlines()[1:5]] == ["mse", "loss", "mse", "loss"]
    assert main(["sweep", str(spec.source), "--out", str(sweep_dir), "--summary", "--metrics", "nll"]) == 2
    assert capsys.readouterr().err.strip() == ("aelab: error: --metrics: no metric 'nll' in the summary; it has loss, "
                                               "mse, train_loss")


def test_report_reads_a_sweep_directory_as_a_group(finished_sweep):
    spec, sweep_dir = finished_sweep
    runs, groups = collect_runs([sweep_dir])
    assert runs == [] and len(groups) == 1 and groups[0].path == sweep_dir
    assert [p.name for p in groups[0].runs] == sorted(t.name for t in spec.trials())
    out, n = write_report([sweep_dir], sweep_dir / "report.html", figures=False)
    page = out.read_text()
    assert n == 6 and "model.latent_dim" in page and "trainer.seed=2" in page


def test_dry_run_prints_the_trials_and_writes_nothing(tmp_path, capsys):
    path = write_spec(tmp_path / "tiny.json", TINY)
    assert main(["sweep", str(path), "--out", str(tmp_path / "sweep"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tiny: 4 trials" in out and "model.latent_dim=4,trainer.seed=1  pending" in out
    assert not (tmp_path / "sweep").exists()


def test_summary_of_a_sweep_not_run_yet(tmp_path, capsys):
    path = write_spec(tmp_path / "tiny.json", TINY)
    assert main(["sweep", str(path), "--out", str(tmp_path / "sweep"), "--summary"]) == 2
    assert capsys.readouterr().err.strip() == (f"aelab: error: {tmp_path / 'sweep' / 'spec.json'} not found: run the "
                                               "sweep first (aelab sweep SPEC.json)")


def test_missing_ray_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # None in sys.modules: "import ray" fails
    spec = load_sweep_spec(write_spec(tmp_path / "tiny.json", TINY))
    with pytest.raises(MissingDependencyError) as err:
        run_sweep(spec, tmp_path / "sweep")
    assert str(err.value) == RAY_MISSING and "pip install 'aelab[sweep]'" in RAY_MISSING
    assert not (tmp_path / "sweep").exists()  # nothing written before Ray is found
    assert main(["sweep", str(spec.source), "--out", str(tmp_path / "sweep")]) == 2
    assert capsys.readouterr().err.strip() == f"aelab: error: {RAY_MISSING}"


def test_another_spec_in_the_same_directory_is_refused(finished_sweep):
    spec, sweep_dir = finished_sweep
    other = copy.deepcopy(spec)
    other.grid = {"model.latent_dim": [2, 8]}
    with pytest.raises(ConfigError, match=r"spec.json holds another sweep spec \(grid differs from .*tiny.json\): "
                                          "a sweep directory belongs to one spec"):
        run_sweep(other, sweep_dir)
    for read in (summarize_sweep, sweep.sweep_table):  # the summary and the dry run check it too
        with pytest.raises(ConfigError, match="holds another sweep spec"):
            read(other, sweep_dir)
    reworded = copy.deepcopy(spec)
    reworded.description = "what it is for, said better"
    sweep.check_sweep_dir(reworded, sweep_dir)  # the description may change


# --- on Ray -----------------------------------------------------------------------------------------
@needs_ray
def test_a_killed_trial_resumes_from_its_checkpoint_and_reruns_skip_done_trials(tmp_path, capsys):
    """A 2x2 sweep on a local Ray with 2 CPUs; one trial's worker is SIGKILLed mid-run. Ray retries
    it, it continues from its last checkpoint, and its final weights equal an uninterrupted run's."""
    require_shared_data()
    spec = load_sweep_spec(write_spec(tmp_path / "tiny.json", TINY))
    sweep_dir = tmp_path / "sweep"
    target = next(t for t in spec.trials() if t.name == "model.latent_dim=4,trainer.seed=1")
    run_dir = sweep_dir / "trials" / target.name
    killed: dict[str, int] = {}

    def kill_mid_run() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                status = json.loads((run_dir / "trial.json").read_text())
                progress = sweep.checkpoint_progress(run_dir)
            except (OSError, ValueError):  # not there yet, or being replaced
                time.sleep(0.01)
                continue
            if status.get("status") == "running" and progress is not None and 20 <= progress[0] < progress[1] - 50:
                os.kill(status["pid"], signal.SIGKILL)
                killed.update(step=progress[0], pid=status["pid"])
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_mid_run, daemon=True)
    watcher.start()
    rows = run_sweep(spec, sweep_dir, RayOptions(cpus=2), poll_seconds=0.2)
    watcher.join(timeout=5)
    assert killed, "the trial finished before it could be killed"

    by_name = {r["name"]: r for r in rows}
    assert all(r["status"] == "done" and r["step"] == r["total_steps"] == 250 for r in rows), rows
    assert by_name[target.name]["attempts"] == 2
    assert by_name[target.name]["resumed_from"] >= killed["step"] > 0
    assert all(r["attempts"] == 1 for n, r in by_name.items() if n != target.name)
    table = json.loads((sweep_dir / "trials.json").read_text())
    assert table["counts"] == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    assert json.loads((sweep_dir / "spec.json").read_text()) == spec.to_dict()

    # the same trial, uninterrupted, at the worker's thread count (1 CPU per trial)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(RunConfig.from_dict(target.config), tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)
    ours, reference = load_file(run_dir / WEIGHTS_NAME), load_file(tmp_path / "reference" / WEIGHTS_NAME)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)

    # running it again (from the command line) trains nothing: every trial is done, Ray is not
    # even started, and the summary is printed and written
    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("trials/*/*.safetensors")}
    assert main(["sweep", str(spec.source), "--out", str(sweep_dir), "--cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert f"tiny: 4 trials, 0 to run -> {sweep_dir}" in out and "4 of 4 trials done" in out
    assert "model.latent_dim=4  loss" in out and (sweep_dir / "summary.csv").is_file()
    again = json.loads((sweep_dir / "trials.json").read_text())["trials"]
    assert [(r["status"], r["attempts"]) for r in again] == [(r["status"], r["attempts"]) for r in rows]
    assert mtimes == {p: p.stat().st_mtime_ns for p in sweep_dir.glob("trials/*/*.safetensors")}


def test_a_failing_trial_is_recorded_not_raised(tmp_path):
    """A Python exception in a trial (here: its data file is missing) is a failed status with the
    one-line error (and the traceback in trial.json), which Ray does not retry."""
    cfg = RunConfig.from_dict({**TINY["base"], "data": {"name": "npz", "path": str(tmp_path / "missing.npz")}})
    status = sweep.run_trial(cfg.to_dict(), str(tmp_path / "trial"))
    assert status["status"] == "failed" and status["attempts"] == 1 and status["pid"] == os.getpid()
    assert "missing.npz" in status["error"] and "\n" not in status["error"]
    assert json.loads((tmp_path / "trial" / "trial.json").read_text())["traceback"].startswith("Traceback")


def test_the_specs_metrics_run_on_each_trained_trial(tmp_path):
    """``"metrics"``: aelab eval's metrics on the trained trial, in its eval.json and its row."""
    require_shared_data()
    spec = load_sweep_spec(write_spec(tmp_path / "tiny.json", {
        **TINY, "grid": {}, "seeds": [0], "metrics": ["reconstruction"],
        "base": {**TINY["base"], "trainer": {**TINY["base"]["trainer"], "epochs": 1}}}))
    (trial,) = spec.trials()
    sweep_dir = tmp_path / "sweep"
    status = sweep.run_trial(trial.config, str(sweep_dir / "trials" / trial.name), metrics=spec.metrics)
    assert status["status"] == "done", status.get("traceback")
    scores = json.loads((sweep_dir / "trials" / trial.name / "eval.json").read_text())["metrics"]
    row = sweep.trial_row(sweep_dir, trial)
    assert row["status"] == "done" and row["metrics"]["mse"] == scores["mse"] and "train_loss" in row["metrics"]
    # "metric_options" replace the defaults the metric is called with
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "run_metric", lambda name, model, splits, **kw: seen.append(kw) or {"mse": 0.0})
        sweep.evaluate_trial(sweep_dir / "trials" / trial.name, ["reconstruction"],
                             {"reconstruction": {"batch_size": 3}})
    assert seen == [{"batch_size": 3}]


def test_trials_no_resources_could_hold_are_refused():
    sweep._check_resources({"CPU": 2.0}, RayOptions(cpus_per_trial=2))
    with pytest.raises(ConfigError, match="--gpus-per-trial 1: this Ray has 0 GPUs in all, so no trial could start"):
        sweep._check_resources({"CPU": 2.0}, RayOptions(gpus_per_trial=1))
    with pytest.raises(ConfigError, match="--cpus 1 is fewer than --cpus-per-trial 2"):
        RayOptions(cpus=1, cpus_per_trial=2)

"""Sweeps: a grid (and seeded random draws) of run settings over seeds, each trial an ordinary run,
run as Ray tasks that survive killed workers.

A sweep is described by a JSON spec::

    {
      "name": "mnist-beta",
      "description": "free text",
      "base": "../quickstart.json",            (a run config file, relative to the spec, or a dict)
      "grid": {"model.beta": [1, 4]},           (dotted keys as --set takes them -> lists of values)
      "random": {"n": 4, "seed": 0,             (seeded draws, crossed with the grid)
                 "params": {"trainer.lr": {"loguniform": [1e-4, 1e-2]},
                            "model.latent_dim": {"choice": [8, 16]}}},
      "seeds": [0, 1, 2],                       (each trial's trainer.seed)
      "metrics": ["disentanglement"],           (optional: aelab eval's metrics, run on each trained trial)
      "metric_options": {"disentanglement": {"protocol": "fast"}}   (optional: options other than the defaults)
    }

Its trials are the grid's points crossed with the random draws and the seeds, each named after its
setting (``model.beta=4,trainer.seed=1``), so that running the same spec again maps every trial to
the same directory. The sweep directory holds::

    SWEEP_DIR/spec.json      the spec, its base config inlined (another spec here is refused)
    SWEEP_DIR/trials.json    the trial table: name, setting, run_dir, status, attempts, step, metrics, error
    SWEEP_DIR/trials/NAME/   each trial's run directory (aelab eval / figures / train --resume work on it),
                             with trial.json, the trial's own status (attempts, pid, resumed_from, error),
                             and eval.json, the spec's ``metrics`` on the trained model
    SWEEP_DIR/summary.csv, summary.json   per setting, the mean, s.d. and 95% t-interval over seeds

Each trial is one Ray task (``ray.remote(max_retries=...)``) that calls :func:`aelab.runs.train_run`,
with ``resume=True`` when its run directory holds a checkpoint: a trial whose worker was killed (or
whose node was lost) is retried by Ray and continues from its own last checkpoint, bit-identical to
an uninterrupted run (on CPU, at the same thread count). A Python exception in a trial (a bad
setting, a NaN loss) is not retried: the trial is ``failed`` with its one-line error. Trials that
are done (their checkpoint at the run's last step) are skipped when the sweep runs again.

Ray is optional (``pip install 'aelab[sweep]'``): only running trials needs it; validating a spec,
the dry run and the summary do not.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import os
import random
import re
import socket
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aelab.compat import MissingDependencyError
from aelab.config import ConfigError, load_json
from aelab.io import RunLock, atomic_write_text
from aelab.metrics.suite import check_metrics, metric_options, run_metric
from aelab.protocol import CONFIG_NAME, WEIGHTS_NAME
from aelab.registry import METRICS, UnknownNameError
from aelab.runs import RunConfig, load_run_with_data, metric_splits, train_run
from aelab.training.checkpoint import STATE_NAME, read_checkpoint_meta
from aelab.training.results import NOT_METRICS, final_metrics, is_number, read_run_metrics

__all__ = [
    "RAY_MISSING",
    "RayOptions",
    "SweepSpec",
    "SweepSummary",
    "Trial",
    "check_sweep_dir",
    "checkpoint_progress",
    "default_sweep_dir",
    "evaluate_trial",
    "is_sweep_dir",
    "load_sweep_spec",
    "mean_interval",
    "run_sweep",
    "run_trial",
    "summarize_sweep",
    "sweep_table",
    "t_critical",
    "trial_name",
    "trial_row",
    "write_summary",
]

SPEC_NAME = "spec.json"
TABLE_NAME = "trials.json"
TRIALS_DIR = "trials"
TRIAL_STATUS_NAME = "trial.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
EVAL_NAME = "eval.json"

#: the field each of the spec's ``seeds`` sets; replicates differ only in it
SEED_FIELD = "trainer.seed"

SPEC_KEYS = ("name", "description", "base", "grid", "random", "seeds", "metrics", "metric_options")
RANDOM_KEYS = ("n", "seed", "params")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")

RAY_MISSING = "aelab sweep needs Ray to run trials: pip install 'aelab[sweep]' (or pip install 'ray>=2.9')"

STATUSES = ("pending", "running", "done", "failed")


def _ray() -> Any:
    """The ``ray`` module, or a one-line :class:`MissingDependencyError` without it."""
    try:
        return importlib.import_module("ray")
    except ImportError as e:
        raise MissingDependencyError(RAY_MISSING) from e


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())


# --- the spec ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One run of a sweep.

    Attributes:
        name: the directory name, from the setting (``model.beta=4,trainer.seed=1``).
        setting: dotted key -> value: the grid point, the random draw and the seed.
        config: the run config (``RunConfig.to_dict()``) with the setting applied.
    """

    name: str
    setting: dict[str, Any]
    config: dict[str, Any]

    @property
    def group(self) -> dict[str, Any]:
        """The setting without the seed: the replicates of one setting share it."""
        return {k: v for k, v in self.setting.items() if k != SEED_FIELD}


@dataclass
class SweepSpec:
    """A validated sweep spec (:func:`load_sweep_spec`).

    Attributes:
        name: the sweep's name (default: the spec file's stem); the default directory is
            ``runs/sweeps/NAME``.
        base: the base run config (a dict as in ``config.json``).
        grid: dotted key -> the values to try (crossed).
        random: ``{"n", "seed", "params"}`` for seeded random draws, or ``None``.
        seeds: the values of ``trainer.seed``.
        metrics: metrics of ``aelab eval`` (registered names) to run on each trial once it is
            trained, with their default options; kept in the trial's ``eval.json`` and summarised
            with the trainer's final metrics (taking their place on a clash of names).
        metric_options: per metric of ``metrics``, options that replace ``aelab eval``'s defaults
            (:func:`aelab.metrics.suite.metric_options` names which exist, e.g. the
            disentanglement metric's ``protocol``).
        description: free text, kept with the spec.
        source: the spec file.
    """

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, Any] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    metrics: list[str] = field(default_factory=list)
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as ``SWEEP_DIR/spec.json`` keeps it (the base config inlined)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description, "base": self.base,
                               "grid": self.grid, "seeds": self.seeds}
        if self.random is not None:
            out["random"] = self.random
        if self.metrics:
            out["metrics"] = self.metrics
        if self.metric_options:
            out["metric_options"] = self.metric_options
        return out

    def draws(self) -> list[dict[str, Any]]:
        """The random draws (``[{}]`` without ``random``): seeded, so the same spec draws the same
        values; floats are rounded to 6 significant digits, the precision of the trial names."""
        if self.random is None:
            return [{}]
        rng = random.Random(self.random["seed"])
        out = []
        for _ in range(self.random["n"]):
            draw = {}
            for key, dist in self.random["params"].items():
                (kind, arg), = dist.items()
                if kind == "choice":
                    draw[key] = arg[rng.randrange(len(arg))]
                elif kind == "randint":
                    draw[key] = rng.randint(arg[0], arg[1])
                else:
                    lo, hi = (math.log(arg[0]), math.log(arg[1])) if kind == "loguniform" else arg
                    value = rng.uniform(lo, hi)
                    draw[key] = float(f"{math.exp(value) if kind == 'loguniform' else value:.6g}")
            out.append(draw)
        return out

    def trials(self) -> list[Trial]:
        """Every trial: the grid's points x the random draws x the seeds, in that order."""
        base = RunConfig.from_dict(self.base)
        points = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        trials: list[Trial] = []
        names: dict[str, dict[str, Any]] = {}
        for point in points:
            for draw in self.draws():
                for seed in self.seeds:
                    setting = {**point, **draw, SEED_FIELD: seed}
                    try:
                        cfg = base.with_overrides([_override(k, v) for k, v in setting.items()])
                    except (ConfigError, ValueError) as e:
                        raise ConfigError(f"{self.source or 'spec'}: the trial {_setting_text(setting)}: "
                                          f"{_one_line(e)}") from None
                    name = trial_name(setting)
                    if name in names and names[name] != setting:
                        name = trial_name(setting, force_hash=True)
                    names[name] = setting
                    trials.append(Trial(name, setting, cfg.to_dict()))
        return trials


def _override(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` reads it (JSON for everything but strings, which stay as typed)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _setting_text(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={_value_text(v)}" for k, v in setting.items())


def trial_name(setting: dict[str, Any], force_hash: bool = False) -> str:
    """A trial's directory name: its setting, with characters other than letters, digits and
    ``.=,+-`` replaced by ``_``; a long name (or one two settings share) ends in a hash of the setting.

    Example:
        >>> trial_name({"model.beta": 4.0, "model.prior.name": "anisotropic", "trainer.seed": 1})
        'model.beta=4.0,model.prior.name=anisotropic,trainer.seed=1'
        >>> trial_name({"model.backbone.hidden": [64, 32], "trainer.seed": 0})
        'model.backbone.hidden=_64,32_,trainer.seed=0'
    """
    text = re.sub(r"[^A-Za-z0-9.=,+-]", "_", _setting_text(setting))
    if force_hash or len(text) > 120:
        digest = _digest(json.dumps(setting, sort_keys=True))[:10]
        text = f"{text[:100]}-{digest}"
    return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every trial's config is built (and so checked) here.

    Raises:
        ConfigError: one line naming the spec file and the field (an unknown key, a setting that
            is not a config field or not a valid value, an empty grid list, a bad distribution).
        FileNotFoundError: the spec or its base config file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep spec")
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(SPEC_KEYS)}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{path}: name: expected a name of letters, digits, '.', '_' and '-', got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description: expected a string, got {description!r}")
    base = _load_base(path, data.get("base"))
    where = f"{path}: base"
    try:
        base_cfg = RunConfig.from_dict(base, where)
    except ValueError as e:  # ConfigError, and the dataclasses' own checks (trainer.lr must be ...)
        raise ConfigError(f"{where}: {_one_line(e)}" if not str(e).startswith(where) else _one_line(e)) from None
    if base_cfg.data is None:
        raise ConfigError(f"{where}: a sweep's runs need a data section, e.g. \"data\": {{\"name\": \"mnist-10k\"}}")

    def check(field_name: str, key: Any, values: Sequence[Any]) -> None:
        if not isinstance(key, str) or key == SEED_FIELD:
            why = "use \"seeds\" for trainer.seed" if key == SEED_FIELD else "keys are dotted config fields"
            raise ConfigError(f"{path}: {field_name}: {key!r}: {why}")
        for value in values:
            try:
                base_cfg.with_overrides([_override(key, value)])
            except ValueError as e:
                raise ConfigError(f"{path}: {field_name}[{key!r}]: value {value!r}: {_one_line(e)}") from None

    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: grid: expected an object {{dotted key: [values]}}, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid[{key!r}]: expected a non-empty list of values, got {values!r}")
        check("grid", key, values)
    rand = data.get("random")
    if rand is not None:
        rand = _check_random(path, rand, grid)
        for key, dist in rand["params"].items():
            (kind, arg), = dist.items()
            check("random.params", key, arg if kind == "choice" else arg[:2])
    seeds = data.get("seeds", [base_cfg.trainer.seed])
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds) or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{path}: seeds: expected a non-empty list of distinct integers, got {seeds!r}")
    metrics = data.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"{path}: metrics: expected a list of metric names (see `aelab list`), got {metrics!r}")
    for m in metrics:
        try:
            METRICS.get(m)
        except UnknownNameError as e:
            raise ConfigError(f"{path}: metrics: {_one_line(e)}") from None
    options = data.get("metric_options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError(f"{path}: metric_options: expected {{metric: {{option: value}}}}, got {options!r}")
    for m, opts in options.items():
        if m not in metrics:
            raise ConfigError(f"{path}: metric_options: {m!r} is not one of the spec's metrics {metrics}")
        unknown = sorted(set(opts) - set(metric_options(m)))
        if unknown:
            raise ConfigError(f"{path}: metric_options.{m}: unknown option(s) {unknown}; "
                              f"{m} takes {sorted(metric_options(m))}")
    spec = SweepSpec(name=name, base=base_cfg.to_dict(), grid=grid, random=rand, seeds=seeds, metrics=metrics,
                     metric_options=options, description=description, source=path)
    spec.trials()  # every combination is a valid run config
    return spec


def _load_base(path: Path, base: Any) -> dict[str, Any]:
    if isinstance(base, dict):
        return base
    if isinstance(base, str):
        file = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not file.is_file():
            raise FileNotFoundError(f"{path}: base: {file}: no such run config file (a path is relative to the spec)")
        data = load_json(file)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: base: {file}: expected a run config object")
        return data
    raise ConfigError(f"{path}: base: expected a run config (an object, or the path of a JSON file relative to the "
                      f"spec, e.g. \"../quickstart.json\"), got {base!r}")


def _check_random(path: Path, rand: Any, grid: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(rand, dict):
        raise ConfigError(f"{path}: random: expected {{\"n\": N, \"seed\": S, \"params\": {{...}}}}, got {rand!r}")
    unknown = sorted(set(rand) - set(RANDOM_KEYS))
    if unknown:
        raise ConfigError(f"{path}: random: unknown key {unknown[0]!r}; valid keys: {', '.join(RANDOM_KEYS)}")
    n, seed, params = rand.get("n"), rand.get("seed", 0), rand.get("params")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"{path}: random.n: expected the number of draws, an integer >= 1, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{path}: random.seed: expected an integer, got {seed!r}")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: random.params: expected {{dotted key: {{\"uniform\": [lo, hi]}}}} with "
                          f"uniform, loguniform, randint or choice, got {params!r}")
    for key, dist in params.items():
        where = f"{path}: random.params[{key!r}]"
        if key in grid:
            raise ConfigError(f"{where}: {key} is in the grid too; give it in one of them")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: expected one of {{\"uniform\": [lo, hi]}}, {{\"loguniform\": [lo, hi]}}, "
                              f"{{\"randint\": [lo, hi]}}, {{\"choice\": [values]}}, got {dist!r}")
        (kind, arg), = dist.items()
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}: choice: expected a non-empty list of values, got {arg!r}")
            continue
        numbers = isinstance(arg, list) and len(arg) == 2 and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in arg)
        if not numbers or not arg[0] < arg[1] or (kind == "loguniform" and arg[0] <= 0) or (
                kind == "randint" and not all(isinstance(a, int) for a in arg)):
            what = {"loguniform": "0 < lo < hi", "randint": "integers lo < hi"}.get(kind, "lo < hi")
            raise ConfigError(f"{where}: {kind}: expected [lo, hi] with {what}, got {arg!r}")
    return {"n": n, "seed": seed, "params": params}


# --- the sweep directory -------------------------------------------------------------------------
def is_sweep_dir(path: str | Path) -> bool:
    """Whether ``path`` is a sweep directory (its ``spec.json`` and ``trials/``)."""
    path = Path(path)
    return (path / SPEC_NAME).is_file() and (path / TRIALS_DIR).is_dir()


def default_sweep_dir(spec: SweepSpec, root: str | Path = "runs") -> Path:
    """``runs/sweeps/NAME``."""
    return Path(root) / "sweeps" / spec.name


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def check_sweep_dir(spec: SweepSpec, sweep_dir: str | Path) -> None:
    """Refuse a sweep directory that holds another spec (naming the fields that differ; the
    description may change)."""
    path = Path(sweep_dir) / SPEC_NAME
    if not path.is_file():
        return
    saved = load_json(path)
    ours = spec.to_dict()
    if isinstance(saved, dict):
        saved = {k: v for k, v in saved.items() if k != "description"}
    ours.pop("description")
    if _canonical(saved) != _canonical(ours):
        keys = list(dict.fromkeys([*ours, *(saved if isinstance(saved, dict) else {})]))
        differ = [k for k in keys if not isinstance(saved, dict) or _canonical(saved.get(k)) != _canonical(ours.get(k))]
        verb = "differs" if len(differ) == 1 else "differ"
        source = spec.source or "this spec"
        raise ConfigError(f"{path} holds another sweep spec ({', '.join(differ)} {verb} from {source}): a sweep "
                          "directory belongs to one spec; give another --out, or delete the directory to start over")


def read_trial_status(run_dir: Path) -> dict[str, Any]:
    """A trial's own status file (``RUN_DIR/trial.json``; empty before its first attempt)."""
    path = run_dir / TRIAL_STATUS_NAME
    if not path.is_file():
        return {}
    status = load_json(path)
    return status if isinstance(status, dict) else {}


def checkpoint_progress(run_dir: Path) -> tuple[int, int] | None:
    """(step, total steps) of a run's last checkpoint, read from its header; ``None`` without one."""
    path = run_dir / STATE_NAME
    if not path.is_file():
        return None
    meta = read_checkpoint_meta(path)
    return int(meta["step"]), int(meta["total_steps"])


def trial_row(sweep_dir: Path, trial: Trial) -> dict[str, Any]:
    """The trial table's row of ``trial``, from its run directory: status, attempts, progress, metrics.

    A trial is ``done`` only when its status says so *and* its checkpoint is at the run's last
    step (a run directory replaced or cut short since is run again).
    """
    run_dir = sweep_dir / TRIALS_DIR / trial.name
    status = read_trial_status(run_dir)
    progress = checkpoint_progress(run_dir)
    state = status.get("status", "pending")
    if state == "done" and (progress is None or progress[0] < progress[1] or not (run_dir / WEIGHTS_NAME).is_file()):
        state = "pending"
    row = {"name": trial.name, "setting": trial.setting, "run_dir": f"{TRIALS_DIR}/{trial.name}", "status": state,
           "attempts": int(status.get("attempts", 0)), "step": progress[0] if progress else 0,
           "total_steps": progress[1] if progress else None, "resumed_from": status.get("resumed_from"),
           "metrics": {}, "error": status.get("error") if state == "failed" else None}
    if state == "done":
        row["metrics"] = final_metrics(read_run_metrics(run_dir)) | read_eval_metrics(run_dir)
    return row


def read_eval_metrics(run_dir: Path) -> dict[str, float]:
    """The metrics of a trial's ``eval.json`` (per-dimension KLs and bookkeeping left out)."""
    path = run_dir / EVAL_NAME
    if not path.is_file():
        return {}
    data = load_json(path)
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected {{\"metrics\": {{name: value}}}}")
    return {k: float(v) for k, v in metrics.items() if k not in NOT_METRICS and not k.startswith("kl_dim_")
            and is_number(v)}


def evaluate_trial(run_dir: Path, names: Sequence[str],
                   options: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """Run ``aelab eval``'s metrics ``names`` (default options, updated by ``options[name]``) on a
    trained trial and write them to ``RUN_DIR/eval.json`` (atomically); returns them."""
    cfg, model, data = load_run_with_data(run_dir)
    check_metrics(model, names, cfg.model, str(run_dir))
    results: dict[str, float] = {}
    for name in names:
        chosen = metric_options(name, batch_size=cfg.trainer.eval_batch_size) | (options or {}).get(name, {})
        results |= run_metric(name, model, metric_splits(cfg, data, name), **chosen)
    atomic_write_text(run_dir / EVAL_NAME, json.dumps({"metrics": results}, indent=1) + "\n")
    return results


def sweep_table(spec: SweepSpec, sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The trial table of ``spec`` in ``sweep_dir`` as the trials' run directories have it now
    (:class:`ConfigError` if the directory holds another spec)."""
    sweep_dir = Path(sweep_dir)
    check_sweep_dir(spec, sweep_dir)
    return [trial_row(sweep_dir, t) for t in spec.trials()]


def write_table(spec: SweepSpec, sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    atomic_write_text(sweep_dir / TABLE_NAME, json.dumps({"name": spec.name, "counts": counts, "trials": rows},
                                                         indent=1) + "\n")


# --- one trial (a Ray task) ----------------------------------------------------------------------
def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    atomic_write_text(run_dir / TRIAL_STATUS_NAME, json.dumps(status, indent=1) + "\n")


def run_trial(config: dict[str, Any], run_dir: str, threads: int = 1, metrics: Sequence[str] = (),
              metric_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train (or continue) one trial in ``run_dir``: the body of a sweep's Ray task.

    Holds the run directory's lock while it runs, counts the attempt and records the process in
    ``RUN_DIR/trial.json`` (a killed worker's next attempt continues from the run's last checkpoint);
    an exception is returned as a ``failed`` status with its one-line error, not raised (Ray
    retries only a dead worker, never a trial that is failing on its own).

    Args:
        config: the trial's run config (``RunConfig.to_dict()``).
        run_dir: its run directory.
        threads: torch CPU threads (the task's CPUs): a resumed run is bit-identical to an
            uninterrupted one at the same thread count.
        metrics: ``aelab eval`` metrics to run once it is trained (:func:`evaluate_trial`), with
            ``metric_options`` replacing their defaults.

    Returns:
        The trial's final status (what ``trial.json`` holds).
    """
    torch.set_num_threads(threads)
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    with RunLock(path):
        status = read_trial_status(path)
        status |= {"status": "running", "attempts": int(status.get("attempts", 0)) + 1, "pid": os.getpid(),
                   "host": socket.gethostname(), "threads": threads, "started": time.time(), "error": None}
        has_state, has_config = (path / STATE_NAME).is_file(), (path / CONFIG_NAME).is_file()
        if has_state != has_config or not has_state:
            # killed before (or during) its first save: nothing was trained; start afresh
            for leftover in (STATE_NAME, CONFIG_NAME, "metrics.jsonl"):
                (path / leftover).unlink(missing_ok=True)
            resume = False
        else:
            resume = True
        _write_status(path, status)

        def started(trainer: Any) -> None:
            status["training_started"] = time.time()  # data loaded, model built: the first step is next
            status["resumed_from"] = trainer.resumed_from
            status["total_steps"] = trainer.total_steps
            _write_status(path, status)

        try:
            trainer, _ = train_run(RunConfig.from_dict(config), path, resume=resume, on_start=started)
            if metrics:
                evaluate_trial(path, metrics, metric_options)
        except Exception as e:  # a failing trial is recorded, not retried (see the docstring)
            status |= {"status": "failed", "error": f"{type(e).__name__}: {_one_line(e)}",
                       "traceback": traceback.format_exc(), "finished": time.time()}
        else:
            status |= {"status": "done", "step": trainer.step, "total_steps": trainer.total_steps,
                       "finished": time.time()}
        _write_status(path, status)
    return status


# --- the driver ----------------------------------------------------------------------------------
@dataclass
class RayOptions:
    """Where and how a sweep's trials run.

    Attributes:
        address: an existing Ray cluster to join (``ray.init(address=...)``; ``auto`` finds a
            local one); ``None`` starts a local Ray in this process, stopped when the sweep ends.
            On a cluster, the sweep directory must be on a file system every node shares, and
            aelab installed on every node.
        cpus: the local Ray's CPUs (``None``: all of the machine's).
        gpus: the local Ray's GPUs (``None``: Ray's detection).
        cpus_per_trial: CPUs each trial holds; also its torch threads.
        gpus_per_trial: GPUs each trial holds (set ``trainer.device`` to ``cuda`` in the spec).
        max_retries: how many times a trial whose worker died is started again.
    """

    address: str | None = None
    cpus: int | None = None
    gpus: int | None = None
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.cpus_per_trial < 1:
            raise ConfigError(f"--cpus-per-trial must be >= 1, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0 or self.max_retries < 0:
            raise ConfigError(f"--gpus-per-trial and --max-retries must be >= 0, got {self.gpus_per_trial}, "
                              f"{self.max_retries}")
        for what, n in (("--cpus", self.cpus), ("--gpus", self.gpus)):
            if n is not None and n < 0:
                raise ConfigError(f"{what} must be >= 0, got {n}")
        if self.cpus is not None and self.cpus < self.cpus_per_trial:
            raise ConfigError(f"--cpus {self.cpus} is fewer than --cpus-per-trial {self.cpus_per_trial}: no trial "
                              "could start")
        if self.address is not None and (self.cpus is not None or self.gpus is not None):
            raise ConfigError("--cpus and --gpus size the local Ray; a cluster joined with --address has its own")


def _start_ray(ray: Any, options: RayOptions) -> bool:
    """Start (or join) Ray unless this process already has it; whether it was started here."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
             "configure_logging": True}
    if options.address is not None:
        ray.init(address=options.address, **quiet)
    else:
        ray.init(num_cpus=options.cpus, num_gpus=options.gpus, **quiet)
    return True


def _check_resources(available: dict[str, float], options: RayOptions) -> None:
    """Refuse trials that no Ray resources could ever hold (Ray would wait for them forever)."""
    for what, need, flag in (("CPU", options.cpus_per_trial, "--cpus-per-trial"),
                             ("GPU", options.gpus_per_trial, "--gpus-per-trial")):
        have = available.get(what, 0)
        if need > have:
            raise ConfigError(f"{flag} {need:g}: this Ray has {have:g} {what}s in all, so no trial could start")


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, options: RayOptions | None = None,
              on_update: Callable[[list[dict[str, Any]]], None] | None = None,
              on_finish: Callable[[dict[str, Any]], None] | None = None,
              poll_seconds: float = 1.0) -> list[dict[str, Any]]:
    """Run the sweep's trials that are not done yet as Ray tasks; returns the final trial table.

    Writes ``spec.json`` (or checks it is this spec), then ``trials.json`` at the start, each time
    a trial's status changes, and at the end. Uses the Ray of this process if it has one,
    otherwise starts one (``options``) and shuts it down afterwards.

    Args:
        spec: the sweep (:func:`load_sweep_spec`).
        sweep_dir: its directory.
        options: where and how to run the trials.
        on_update: called with the table after every poll (e.g. to show progress).
        on_finish: called with a trial's row when it is done or failed.
        poll_seconds: how often the trials' status files are read.

    Raises:
        ConfigError: the directory holds another spec.
        RunLockedError: another process runs this sweep now.
        MissingDependencyError: Ray is not installed.
    """
    options = options or RayOptions()
    ray = _ray()
    sweep_dir = Path(sweep_dir)
    check_sweep_dir(spec, sweep_dir)
    trials = spec.trials()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(sweep_dir):
        if not (sweep_dir / SPEC_NAME).is_file():
            atomic_write_text(sweep_dir / SPEC_NAME, json.dumps(spec.to_dict(), indent=2) + "\n")
        (sweep_dir / TRIALS_DIR).mkdir(exist_ok=True)
        rows = [trial_row(sweep_dir, t) for t in trials]
        for row in rows:  # a trial left running by a driver that stopped (we hold the sweep's lock)
            row["status"] = "pending" if row["status"] == "running" else row["status"]
        write_table(spec, sweep_dir, rows)
        todo = [i for i, r in enumerate(rows) if r["status"] != "done"]
        if not todo:
            return rows
        started = _start_ray(ray, options)
        try:
            _check_resources(ray.cluster_resources(), options)
            task = ray.remote(run_trial).options(num_cpus=options.cpus_per_trial, num_gpus=options.gpus_per_trial,
                                                 max_retries=options.max_retries, name="aelab-trial")
            pending = {task.remote(trials[i].config, str(sweep_dir / TRIALS_DIR / trials[i].name),
                                   options.cpus_per_trial, spec.metrics, spec.metric_options): i for i in todo}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_seconds)
                changed = False
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as e:  # the worker died more than max_retries times
                        status = read_trial_status(sweep_dir / TRIALS_DIR / trials[i].name)
                        _write_status(sweep_dir / TRIALS_DIR / trials[i].name, status | {
                            "status": "failed", "error": f"its worker died {options.max_retries + 1} times (killed, "
                            f"out of memory or a lost node); run the sweep again to continue it ({_one_line(e)})"})
                    rows[i] = trial_row(sweep_dir, trials[i])
                    changed = True
                    if on_finish is not None:
                        on_finish(rows[i])
                for i in pending.values():
                    row = trial_row(sweep_dir, trials[i])
                    changed |= row != rows[i]
                    rows[i] = row
                if changed:
                    write_table(spec, sweep_dir, rows)
                if on_update is not None:
                    on_update(rows)
        finally:
            if started:
                ray.shutdown()
        write_table(spec, sweep_dir, rows)
    return rows


# --- the summary ---------------------------------------------------------------------------------
def _t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom, in closed form (Abramowitz and
    Stegun 26.7.3-4: a finite series in cos(theta), theta = atan(t / sqrt(df)))."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # s (1 + c^2/2 + 1*3/(2*4) c^4 + ... + c^(df-2) term)
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    # 2/pi (theta + s (c + 2/3 c^3 + 2*4/(3*5) c^5 + ... + c^(df-2) term))
    c = math.sqrt(c2)
    term, total = c, 0.0
    for k in range(1, (df - 1) // 2 + 1):
        total += term
        term *= c2 * (2 * k) / (2 * k + 1)
    return 2 / math.pi * (theta + (s * total if df > 1 else 0.0))


def t_critical(df: int, level: float = 0.95) -> float:
    """The two-sided critical value of Student's t: ``P(|T| <= t) = level`` with ``df`` degrees of
    freedom (so the ``level`` interval of a mean over n runs is mean +- t(n - 1) s / sqrt(n)).

    Computed from the closed-form distribution function by bisection (no scipy); above 100 degrees
    of freedom, where that series grows long, from the normal quantile by the Cornish-Fisher
    expansion to order 1/df^4 (Abramowitz and Stegun 26.7.5; error below 1e-8 there).

    Example:
        >>> round(t_critical(1), 4), round(t_critical(2), 4), round(t_critical(10), 4), round(t_critical(30), 4)
        (12.7062, 4.3027, 2.2281, 2.0423)
    """
    if df < 1 or not 0 < level < 1:
        raise ValueError(f"t_critical: expected df >= 1 and 0 < level < 1, got {df}, {level}")
    if df > 100:
        z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
        g = [(z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160]
        return z + sum(gk / df ** (k + 1) for k, gk in enumerate(g))
    lo, hi = 0.0, 1.0
    while _t_coverage(hi, df) < level:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_coverage(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """n, mean, standard deviation (ddof 1) and the ``level`` t-interval of the mean; with one
    value the s.d. and the interval are ``None``.

    Example:
        >>> s = mean_interval([1.0, 2.0, 3.0])
        >>> s["n"], s["mean"], s["sd"], [round(x, 4) for x in s["ci95"]]
        (3, 2.0, 1.0, [-0.4841, 4.4841])
    """
    x = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {"n": len(x), "mean": float(x.mean()), "sd": None, "ci95": None}
    if len(x) > 1:
        sd = float(x.std(ddof=1))
        half = t_critical(len(x) - 1, level) * sd / math.sqrt(len(x))
        out |= {"sd": sd, "ci95": [out["mean"] - half, out["mean"] + half]}
    return out


@dataclass
class SweepSummary:
    """A sweep's trials pooled over seeds (:func:`summarize_sweep`).

    Attributes:
        name: the sweep's name.
        keys: the setting's fields (the grid's and the random draws' keys).
        rows: per setting: ``setting``, ``trials`` (names), and ``metrics``: metric ->
            ``{"n", "mean", "sd", "ci95"}`` over its done trials' final metrics.
        left_out: the trials not done (name: status), not counted.
    """

    name: str
    keys: list[str]
    rows: list[dict[str, Any]]
    left_out: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.keys, "interval": "95% t-interval of the mean over seeds",
                "rows": self.rows, "left_out": self.left_out}

    def csv(self) -> str:
        """One line per setting and metric: the setting's fields, metric, n, mean, sd, ci95_low, ci95_high."""
        lines = [",".join([*self.keys, "metric", "n", "mean", "sd", "ci95_low", "ci95_high"])]
        for row in self.rows:
            cells = [_csv_cell(_value_text(row["setting"][k])) for k in self.keys]
            for metric, s in row["metrics"].items():
                ci = s["ci95"] or ["", ""]
                lines.append(",".join([*cells, metric, str(s["n"]), repr(s["mean"]),
                                       "" if s["sd"] is None else repr(s["sd"]), *map(str, ci)]))
        return "\n".join(lines) + "\n"

    def table(self, metrics: Sequence[str] | None = None) -> str:
        """The summary as an aligned text table: one block per setting, a line per metric (only
        ``metrics``, in that order, if given).

        Raises:
            ValueError: a name in ``metrics`` that no setting has.
        """
        known = list(dict.fromkeys(m for row in self.rows for m in row["metrics"]))
        unknown = [m for m in metrics or () if m not in known]
        if unknown and self.rows:
            raise ValueError(f"--metrics: no metric {unknown[0]!r} in the summary; it has {', '.join(known)}")
        head = ["setting", "metric", "n", "mean", "s.d.", "95% interval"]
        body = []
        for row in self.rows:
            label = _setting_text(row["setting"]) or "all trials"
            for metric in metrics or row["metrics"]:
                if metric not in row["metrics"]:
                    continue
                s = row["metrics"][metric]
                ci = "" if s["ci95"] is None else f"[{s['ci95'][0]:.5g}, {s['ci95'][1]:.5g}]"
                body.append([label, metric, str(s["n"]), f"{s['mean']:.5g}",
                             "" if s["sd"] is None else f"{s['sd']:.3g}", ci])
                label = ""
        widths = [max(len(r[j]) for r in [head, *body]) for j in range(len(head))]
        right = (False, False, True, True, True, False)
        lines = ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right)).rstrip()
                 for line in [head, *body]]
        if self.left_out:
            lines.append(f"left out (not done): {', '.join(f'{k} ({v})' for k, v in self.left_out.items())}")
        return "\n".join(lines)


def _csv_cell(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def summarize_sweep(spec: SweepSpec, sweep_dir: str | Path) -> SweepSummary:
    """Per setting (the trial's setting without its seed), the n, mean, s.d. (ddof 1) and 95%
    t-interval over seeds of every final metric (:func:`aelab.training.results.final_metrics`:
    the last test evaluation and the last training loss) of the trials that are done.

    Raises:
        FileNotFoundError: ``sweep_dir`` holds no sweep (run it first).
        ConfigError: it holds another spec.
    """
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SPEC_NAME).is_file():
        raise FileNotFoundError(f"{sweep_dir / SPEC_NAME} not found: run the sweep first (aelab sweep SPEC.json)")
    check_sweep_dir(spec, sweep_dir)
    groups: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[str, list[float]]] = {}
    left_out = {}
    for trial in spec.trials():
        row = trial_row(sweep_dir, trial)
        if row["status"] != "done":
            left_out[trial.name] = row["status"]
            continue
        key = _canonical(trial.group)
        group = groups.setdefault(key, {"setting": trial.group, "trials": [], "metrics": {}})
        group["trials"].append(trial.name)
        for metric, value in row["metrics"].items():
            values.setdefault(key, {}).setdefault(metric, []).append(value)
    for key, group in groups.items():
        group["metrics"] = {m: mean_interval(v) for m, v in values.get(key, {}).items()}
    keys = list(dict.fromkeys(k for t in spec.trials() for k in t.group))
    return SweepSummary(spec.name, keys, list(groups.values()), left_out)


def write_summary(summary: SweepSummary, sweep_dir: str | Path) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.json`` in the sweep directory (each written atomically)."""
    sweep_dir = Path(sweep_dir)
    csv, js = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_JSON
    atomic_write_text(csv, summary.csv())
    atomic_write_text(js, json.dumps(summary.to_dict(), indent=1) + "\n")
    return csv, js

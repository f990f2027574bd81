"""Run configuration: model + data + trainer (+ parent run), as saved in a run directory's ``config.json``."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aelab import distributed
from aelab.config import ConfigError, apply_overrides, from_dict, load_json, to_dict
from aelab.data.base import DataConfig, DatasetInfo, DataSplits, Split, load_data
from aelab.data.batches import eval_batches
from aelab.data.codes import CodeDataset
from aelab.data.text import Vocab
from aelab.io import RunLock, sha256_file
from aelab.nn.modes import eval_mode
from aelab.protocol import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Model,
    ModelSpec,
    build_model,
    from_pretrained,
    load_weights,
    read_saved_config,
    require,
)
from aelab.registry import MODELS
from aelab.training.checkpoint import STATE_NAME
from aelab.training.trainer import Callback, Trainer, TrainerConfig, resolve_device


@dataclass
class RunConfig:
    """Everything that defines a training run, for every model family.

    Attributes:
        model: a registered model name (an autoencoder, a code prior, ...).
        model_config: that model's config (its dataclass).
        data: which data set and how much of it; ``None`` for runs whose data come from another
            run (a code prior trained on a VQ run's codes).
        trainer: optimisation and logging settings.
        parent: for a run derived from another one, what it was derived from (e.g. the VQ run's
            model, data set and the SHA-256 of its weights); ``None`` otherwise.
    """

    model: str = "ae"
    model_config: Any = None
    data: DataConfig | None = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    parent: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        spec: ModelSpec = MODELS.get(self.model)
        if self.model_config is None:
            self.model_config = spec.config_cls()
        elif isinstance(self.model_config, dict):
            self.model_config = from_dict(spec.config_cls, self.model_config, "model")

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "model_config": to_dict(self.model_config), "trainer": to_dict(self.trainer)}
        if self.data is not None:
            out["data"] = to_dict(self.data)
        if self.parent is not None:
            out["parent"] = self.parent
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        keys = {"model", "model_config", "data", "trainer", "parent"}
        unknown = sorted(set(data) - keys)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(keys))}")
        name = data.get("model", "ae")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: 'model' must be a model name, got {name!r}")
        parent = data.get("parent")
        if parent is not None and not isinstance(parent, dict):
            raise ConfigError(f"{where}: 'parent' must be a JSON object, got {parent!r}")
        spec: ModelSpec = MODELS.get(name)
        return cls(
            model=name,
            model_config=from_dict(spec.config_cls, data.get("model_config", {}), "model"),
            data=from_dict(DataConfig, data["data"], "data") if data.get("data") is not None else None,
            trainer=from_dict(TrainerConfig, data.get("trainer", {}), "trainer"),
            parent=parent,
        )

    def with_overrides(self, overrides: list[str], prefixes: dict[str, str] | None = None) -> RunConfig:
        """Apply ``section.key=value`` overrides; ``model.`` addresses the model's config.

        Args:
            overrides: ``section.key=value`` strings.
            prefixes: the prefixes accepted and the section each addresses (default: ``model.``,
                ``data.`` and ``trainer.``; a code prior's run takes ``{"prior": "model",
                "trainer": "trainer"}``); others are refused.
        """
        allowed = prefixes or {"model": "model", "data": "data", "trainer": "trainer"}
        by_section: dict[str, list[str]] = {"model": [], "data": [], "trainer": []}
        for item in overrides:
            head = item.split(".", 1)[0]
            if head not in allowed or "." not in item.split("=", 1)[0]:
                names = [f"{h}." for h in allowed]
                raise ConfigError(f"override {item!r} must start with {', '.join(names[:-1])} or {names[-1]}")
            by_section[allowed[head]].append(item.split(".", 1)[1])
        if by_section["data"] and self.data is None:
            raise ConfigError("this run has no data section to override (its data come from its parent run)")
        return RunConfig(
            model=self.model,
            model_config=apply_overrides(self.model_config, by_section["model"], "model"),
            data=apply_overrides(self.data, by_section["data"], "data") if self.data is not None else None,
            trainer=apply_overrides(self.trainer, by_section["trainer"], "trainer"),
            parent=self.parent,
        )


def load_run_config(path: str | Path, require_data: bool = True) -> RunConfig:
    """Read a run config from a JSON file or a run directory.

    Args:
        path: a ``config.json`` or a run directory holding one.
        require_data: refuse a config without a ``data`` section instead of assuming the default.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or config file")
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an aelab run directory")
    data = load_json(path)
    if require_data and isinstance(data, dict) and "data" not in data:
        raise ConfigError(f"{path} has no 'data' section (the model was trained on data passed in from Python); "
                          "add one, e.g. \"data\": {\"name\": \"fashion-mnist\"}")
    return RunConfig.from_dict(data, str(path))


#: the subdirectory of a VQ run that holds its code prior (``aelab train-prior RUN_DIR``)
PRIOR_DIR = "prior"
#: the override prefixes of a code prior's run: ``prior.`` addresses the prior's config
PRIOR_PREFIXES = {"prior": "model", "trainer": "trainer"}


def default_code_prior(model: Any) -> str:
    """``pixelcnn`` for a one-level VQ model, ``vqvae2`` (top conditioning the bottom) for two levels."""
    return "vqvae2_prior" if len(model.code_shapes) == 2 else "pixelcnn"


def prior_run_config(model: Any, name: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """The config of a code prior for VQ model ``model``, sized from its code grids, with overrides.

    ``num_codes`` and ``grid_shape`` (of each level for ``vqvae2``) are set from
    ``model.num_codes`` and ``model.code_shapes``; overriding them to other values is an error.

    Example:
        >>> from aelab.models import build_model
        >>> m = build_model("vqvae", image_shape=(1, 12, 12), num_codes=16, channels=(4, 8))
        >>> cfg = prior_run_config(m, overrides=["prior.channels=8", "trainer.epochs=2"])
        >>> cfg.model, cfg.model_config.num_codes, cfg.model_config.grid_shape, cfg.model_config.channels
        ('pixelcnn', 16, (3, 3), 8)
    """
    name = name or default_code_prior(model)
    levels = len(model.code_shapes)
    if (levels == 2) != (name == "vqvae2_prior"):
        want = "vqvae2_prior" if levels == 2 else "pixelcnn or pixelsnail"
        raise ConfigError(f"code prior {name!r} does not fit a model with {levels} code grid(s): use {want}")
    base = RunConfig(model=name, data=None)
    sized = to_dict(base.model_config)
    grids = [{"num_codes": k, "grid_shape": list(s)} for k, s in zip(model.num_codes, model.code_shapes)]
    if levels == 2:
        sized["top"] |= grids[0]
        sized["bottom"] |= grids[1]
    else:
        sized |= grids[0]
    cfg = RunConfig(model=name, model_config=sized, data=None).with_overrides(list(overrides), PRIOR_PREFIXES)
    levels_cfg = [cfg.model_config.top, cfg.model_config.bottom] if levels == 2 else [cfg.model_config]
    where = ["prior.top.", "prior.bottom."] if levels == 2 else ["prior."]
    for c, g, w in zip(levels_cfg, grids, where):
        if c.num_codes != g["num_codes"] or list(c.grid_shape) != g["grid_shape"]:
            raise ConfigError(f"{w}num_codes and {w}grid_shape come from the VQ model ({g['num_codes']} codes on a "
                              f"{tuple(g['grid_shape'])} grid); do not override them")
        if c.num_classes:
            raise ConfigError(f"{w}num_classes: class-conditional code priors are not supported from the command "
                              "line (sampling would need labels)")
    if levels == 1 and cfg.model_config.cond_codes:
        raise ConfigError("prior.cond_codes: a one-level VQ model has no conditioning grid")
    return cfg


# --- runs as the command line makes them ---------------------------------------------------------
def new_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """A fresh ``runs/MODEL-DATA-TIME`` directory name (suffixed ``-N`` if it exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = cfg.data.name if cfg.data is not None else "codes"
    base = Path(root) / f"{cfg.model}-{data}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def fit_config_to_data(cfg: RunConfig, info: DatasetInfo) -> RunConfig:
    """``cfg`` with the model-config fields the data set decides filled in (the registry entry's
    ``fit_to_data``, e.g. an image family's ``image_shape``), validated again."""
    fit = MODELS.get(cfg.model).fit_to_data
    if fit is None:
        return cfg
    return RunConfig.from_dict(dataclasses.replace(cfg, model_config=fit(cfg.model_config, info)).to_dict())


#: what ``--set`` may change when a run is resumed: how long it runs, and what only logging,
#: evaluation or pictures read (none of them touches the training arithmetic or its RNG stream)
RESUMABLE_FIELDS = frozenset({
    "trainer.epochs", "trainer.max_steps", "trainer.log_every", "trainer.progress", "trainer.images",
    "trainer.checkpoint_every", "trainer.eval_batch_size", "trainer.eval_limit", "trainer.diagnostics",
    "trainer.iwae_k", "trainer.iwae_limit", "trainer.divergence",
})


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A run config (``config.json``) as dotted keys, as ``--set`` addresses them
    (``model_config.`` is ``model.``).

    Example:
        >>> flatten_config({"model": "vae", "model_config": {"beta": 4.0, "backbone": {"hidden": [64]}}})
        {'model': 'vae', 'model.beta': 4.0, 'model.backbone.hidden': [64]}
    """
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = "model" if not prefix and key == "model_config" else str(key)
        out |= flatten_config(value, f"{prefix}.{name}" if prefix else name)
    return out


def check_run_directory(run_dir: str | Path, resume: bool, resume_hint: str = "") -> None:
    """Refuse a run directory that cannot be started (fresh) or continued (``resume``).

    A directory with both ``config.json`` and the trainer checkpoint holds a run (only resumable);
    one with just one of them is the leftover of a process killed during its first save, when
    nothing was trained yet: that is said, with what to do, instead of each command pointing to
    the other.
    """
    run_dir = Path(run_dir)
    has_state, has_config = (run_dir / STATE_NAME).is_file(), (run_dir / CONFIG_NAME).is_file()
    if has_state != has_config:
        have, missing = (STATE_NAME, CONFIG_NAME) if has_state else (CONFIG_NAME, STATE_NAME)
        raise ConfigError(f"{run_dir} holds a run stopped during its first save ({have} but no {missing}): nothing "
                          f"was trained yet; delete {run_dir} and start the run again")
    if not resume and has_state:
        raise ConfigError(f"{run_dir} already holds a run; continue it with `{resume_hint}` or choose another "
                          "directory (nothing was overwritten)")


def resume_config(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The saved config of ``run_dir`` with ``overrides`` applied, if they only change what a resumed
    run may change (:data:`RESUMABLE_FIELDS`: its length, logging, evaluation and pictures).

    Raises:
        ConfigError: naming each other field changed, and how to start a new run from this one.
    """
    check_run_directory(run_dir, resume=True)
    saved = load_run_config(run_dir)
    new = saved.with_overrides(overrides)
    before, after = flatten_config(saved.to_dict()), flatten_config(new.to_dict())
    changed = sorted(k for k in before.keys() | after.keys()
                     if before.get(k) != after.get(k) and k not in RESUMABLE_FIELDS)
    if changed:
        raise ConfigError(f"a resumed run continues exactly what it started, so {', '.join(changed)} cannot change "
                          f"(only the run's length, logging and evaluation may: trainer.epochs, trainer.max_steps, "
                          f"...); to train on from these weights with other settings start a new run: aelab train "
                          f"--init-from {run_dir} --config {Path(run_dir) / CONFIG_NAME} --set ... --out NEW_DIR")
    return new


def init_weights_from(model: Model, source: str | Path) -> None:
    """Load the weights of the run (or saved model) in ``source`` into ``model`` (fine-tuning),
    which must be the same model with the same architecture."""
    meta = read_saved_config(source)
    if meta["model"] != model.name:
        raise ConfigError(f"--init-from {source}: it holds a {meta['model']!r} model, this run trains {model.name!r}")
    load_weights(model, source)
    model.train()


def train_run(cfg: RunConfig, run_dir: str | Path, resume: bool = False,
              on_epoch_end: list[Callback] | None = None, on_start: Callable[[Trainer], None] | None = None,
              init_from: str | Path | None = None) -> tuple[Trainer, dict[str, float]]:
    """Train (or resume) the run ``cfg`` in ``run_dir``: what ``aelab train`` does.

    Loads the data, fills the model config from it, seeds torch with ``trainer.seed``, builds the
    model (with the weights of ``init_from``, a run to fine-tune, if given), and trains with the
    model family's per-epoch evaluation and pictures; the step-0 checkpoint makes the run directory
    usable from the start. ``on_start(trainer)`` runs before training (e.g. to print); when
    resuming, ``trainer.resumed_from`` is the step it continues from.

    Started by torchrun (``WORLD_SIZE`` > 1 in the environment), the process joins the process
    group (:func:`aelab.distributed.init_from_environment`) and trains data-parallel; rank 0
    writes the run directory and alone calls ``on_start`` and ``on_epoch_end``.

    Returns:
        The trainer and the last evaluation metrics (rank 0's; other ranks: the training logs).
    """
    if cfg.data is None:
        raise ConfigError(f"model {cfg.model!r}: a run needs a data section")
    try:
        setup = distributed.init_from_environment(resolve_device(cfg.trainer.device))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        return _train_run(cfg, run_dir, resume, on_epoch_end, on_start, init_from)
    finally:
        if setup is not None:
            setup.close()


def _train_run(cfg: RunConfig, run_dir: str | Path, resume: bool, on_epoch_end: list[Callback] | None,
               on_start: Callable[[Trainer], None] | None,
               init_from: str | Path | None) -> tuple[Trainer, dict[str, float]]:
    first = distributed.rank() == 0
    data = load_data(cfg.data)
    cfg = fit_config_to_data(cfg, data.info)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, cfg.model_config)
    if init_from is not None:
        if resume:
            raise ConfigError("--init-from starts a new run from another run's weights; it does not go with --resume")
        init_weights_from(model, init_from)
    run_config = cfg.to_dict() | ({"parent": {"init_from": str(init_from)}} if init_from is not None else {})
    # the per-epoch evaluation runs on the validation split where the data set has one
    trainer = Trainer(model, data.train, data.valid or data.test, cfg.trainer, run_dir=run_dir,
                      on_epoch_end=on_epoch_end if first else None, run_config=run_config)
    trainer.class_names = data.info.class_names  # legends of the per-epoch pictures
    trainer.data_info = data.info  # what loading the data changed, for on_start to tell
    with RunLock(run_dir) if first else contextlib.nullcontext():
        if first or resume:  # under torchrun rank 0 writes a new run's vocabulary
            check_vocabulary(run_dir, data.info.vocab, save=not resume)
        if resume:
            trainer.resume()  # here, so on_start can say where the run continues from
        if on_start is not None and first:
            on_start(trainer)
        return trainer, trainer.fit(resume=resume)


VOCAB_NAME = "vocab.json"


def check_vocabulary(run_dir: str | Path, vocab: Vocab | None, save: bool) -> None:
    """A text run's vocabulary: written to ``RUN_DIR/vocab.json`` when the run starts (``save``),
    and afterwards the one the data must still give (resume, eval, sampling).

    Raises:
        ConfigError: the data (or ``data.min_count`` / ``data.max_vocab``) now give another
            vocabulary than the run was trained with; the first difference is named.
    """
    if vocab is None:
        return
    path = Path(run_dir) / VOCAB_NAME
    if save:
        vocab.save(path)
        return
    saved = load_vocabulary(run_dir)
    if saved.tokens != vocab.tokens:
        i = next((i for i, (a, b) in enumerate(zip(saved.tokens, vocab.tokens)) if a != b),
                 min(len(saved), len(vocab)))
        first = (f"id {i}: {saved.tokens[i] if i < len(saved) else '(none)'!r} in the run, "
                 f"{vocab.tokens[i] if i < len(vocab) else '(none)'!r} now")
        raise ConfigError(f"{path}: the data now give another vocabulary than the run was trained with "
                          f"({len(saved)} vs {len(vocab)} tokens; first difference at {first}): the text files or "
                          "data.min_count / data.max_vocab changed")


def load_vocabulary(run_dir: str | Path) -> Vocab:
    """The vocabulary a text run was trained with (``RUN_DIR/vocab.json``)."""
    path = Path(run_dir) / VOCAB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a text run keeps the vocabulary it was trained with there")
    return Vocab.load(path)


def load_run(run_dir: str | Path) -> tuple[RunConfig, Model]:
    """A run directory's config and its model with the saved weights (in eval mode)."""
    return load_run_config(run_dir), from_pretrained(run_dir)


# --- code priors on a VQ run's codes --------------------------------------------------------------
@torch.no_grad()
def load_run_with_data(run_dir: str | Path) -> tuple[RunConfig, Model, DataSplits]:
    """A run's config, its trained model (:func:`load_run`) and its data splits, checked to be the
    data the model was trained for (a file replaced by one of other image sizes is named)."""
    cfg, model = load_run(run_dir)
    data = load_data(cfg.data)
    check_vocabulary(run_dir, data.info.vocab, save=False)
    fitted = fit_config_to_data(cfg, data.info)
    if fitted.model_config != cfg.model_config:
        source = cfg.data.path or cfg.data.name
        raise ConfigError(f"{source} no longer fits the model of {run_dir}: it now gives examples of shape "
                          f"{tuple(data.info.shape)}, and the model was built for other data (the data changed "
                          "since training)")
    return cfg, model, data


def metric_splits(cfg: RunConfig, data: DataSplits, metric: str) -> DataSplits:
    """The splits that ``metric`` scores a run on: the run's own, except for ``frechet``, whose
    feature classifier and real statistics use the whole data set, not the run's subsets."""
    if metric == "frechet" and (cfg.data.train_subset is not None or cfg.data.test_subset is not None):
        return load_data(dataclasses.replace(cfg.data, train_subset=None, test_subset=None))
    return data


def encode_codes(model: Model, split: Split, batch_size: int, device: torch.device) -> list[Tensor]:
    """The code grids of a whole split, one int64 ``(N, h, w)`` tensor per level (top first), on the CPU.

    Filled in place batch by batch (no list of batches to concatenate: peak memory is the result).
    """
    require(model, "codes", what="encoding a split to codes")
    out = [torch.empty(len(split), *shape, dtype=torch.long) for shape in model.code_shapes]
    i = 0
    model.to(device)
    with eval_mode(model):
        for batch in eval_batches(split, batch_size):
            codes = model.encode_codes(batch.x.to(device))
            for level, c in zip(out, [codes] if isinstance(codes, Tensor) else codes):
                level[i : i + len(batch)] = c.cpu()
            i += len(batch)
    return out


def code_dataset(codes: list[Tensor], labels: Tensor | None = None) -> CodeDataset:
    """A code prior's split: one level's grid, or the bottom grid conditioned on the top one."""
    return CodeDataset(codes[0], labels=labels) if len(codes) == 1 else CodeDataset(codes[1], cond=codes[0],
                                                                                      labels=labels)


def attach_code_prior(run_dir: str | Path, model: Model, required: bool) -> Model | None:
    """Load ``RUN_DIR/prior`` and attach it to the VQ model; ``None`` (or an error if ``required``)
    without one. Warns on stderr when the prior was trained on an earlier state of the weights."""
    run_dir = Path(run_dir)
    prior_dir = run_dir / PRIOR_DIR
    if not (prior_dir / CONFIG_NAME).is_file():
        if required:
            raise FileNotFoundError(f"{run_dir} has no code prior ({prior_dir} not found): train one on the run's "
                                    f"codes first with `aelab train-prior {run_dir}`")
        return None
    prior = from_pretrained(prior_dir)
    levels = tuple(prior.levels)
    if len(levels) != len(model.code_shapes) or any(
            p.config.num_codes != k or tuple(p.config.grid_shape) != tuple(s)
            for p, k, s in zip(levels, model.num_codes, model.code_shapes)):
        raise ConfigError(f"the code prior in {prior_dir} was built for other code grids than the model's "
                          f"({model.num_codes} codes on {model.code_shapes}); retrain it with `aelab train-prior`")
    parent = load_json(prior_dir / CONFIG_NAME).get("parent") or {}
    trained_on = parent.get("weights_sha256")
    if trained_on is not None and trained_on != sha256_file(run_dir / WEIGHTS_NAME):
        print(f"aelab: warning: the code prior in {prior_dir} was trained on the codes of an earlier state of "
              f"{run_dir / WEIGHTS_NAME}; delete {prior_dir} and run `aelab train-prior {run_dir}` again",
              file=sys.stderr)
    model.attach_prior(*levels)
    return prior


def prior_run(run_dir: str | Path, name: str | None, overrides: list[str],
              resume: bool) -> tuple[RunConfig, RunConfig, Model]:
    """The VQ run's config, the code prior's run config and the VQ model, for ``aelab train-prior``.

    A fresh prior is sized from the model (:func:`prior_run_config`); a resumed one keeps its
    config and takes ``trainer.`` overrides only, and only if the VQ weights are unchanged.
    """
    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir)
    if not model.capabilities.codes:
        raise ConfigError(f"{run_dir} is a {cfg.model!r} run, which has no discrete codes; train-prior needs a "
                          "vqvae or vqvae2 run")
    prior_dir = run_dir / PRIOR_DIR
    vq_hash = sha256_file(run_dir / WEIGHTS_NAME)
    check_run_directory(prior_dir, resume, f"aelab train-prior {run_dir} --resume")
    if resume:
        if name:
            raise ConfigError("--resume continues the saved prior; leave out --name")
        if not (prior_dir / STATE_NAME).is_file():
            raise FileNotFoundError(f"{prior_dir / STATE_NAME} not found: no prior to resume; start one with "
                                    f"`aelab train-prior {run_dir}`")
        pcfg = load_run_config(prior_dir, require_data=False)
        if (pcfg.parent or {}).get("weights_sha256") != vq_hash:
            raise ConfigError(f"{run_dir / WEIGHTS_NAME} changed since the prior in {prior_dir} was started: its codes "
                              f"differ; delete {prior_dir} and train a new prior")
        for item in overrides:
            if item.split(".", 1)[0] in ("prior", "model"):
                raise ConfigError(f"override {item!r}: a resumed prior keeps its architecture; only trainer. "
                                  "overrides apply (e.g. trainer.epochs)")
        pcfg = pcfg.with_overrides(overrides, {"trainer": "trainer"})
    else:
        pcfg = prior_run_config(model, name, overrides)
        pcfg.trainer = dataclasses.replace(pcfg.trainer, images=False)
        pcfg.parent = {"model": cfg.model, "data": cfg.data.name if cfg.data else None, "weights_sha256": vq_hash}
        # a log without a checkpoint is from an attempt stopped before its first save: start it afresh
        (prior_dir / "metrics.jsonl").unlink(missing_ok=True)
    return cfg, pcfg, model


def train_prior_run(run_dir: str | Path, name: str | None = None, overrides: list[str] = (),
                    resume: bool = False, on_epoch_end: list[Callback] | None = None,
                    on_start: Callable[[Trainer, dict[str, Any]], None] | None = None,
                    ) -> tuple[Trainer, dict[str, float]]:
    """Fit a code prior to a VQ run's codes in ``RUN_DIR/prior``: what ``aelab train-prior`` does.

    ``on_start(trainer, info)`` runs before training with ``info`` holding ``encode_seconds``.
    """
    cfg, pcfg, model = prior_run(run_dir, name, list(overrides), resume)
    data = load_data(cfg.data)
    device = resolve_device(pcfg.trainer.device)
    start = time.perf_counter()
    train, test = (code_dataset(encode_codes(model, split, pcfg.trainer.eval_batch_size, device))
                   for split in (data.train, data.test))
    encode_seconds = time.perf_counter() - start
    torch.manual_seed(pcfg.trainer.seed)
    prior = build_model(pcfg.model, pcfg.model_config)
    trainer = Trainer(prior, train, test, pcfg.trainer, Path(run_dir) / PRIOR_DIR, on_epoch_end=on_epoch_end,
                      run_config=pcfg.to_dict())
    if on_start is not None:
        on_start(trainer, {"encode_seconds": encode_seconds, "vq_config": cfg, "vq_model": model})
    return trainer, trainer.fit(resume=resume)

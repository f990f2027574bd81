"""A model-agnostic training loop with exact resume.

The loop knows nothing about the model beyond the protocol of :mod:`aelab.protocol`:
``model.loss(batch, step) -> LossOutput`` on :class:`~aelab.batch.Batch` structures it never looks
inside, or the model's own ``train_step`` over its ``optimizer_groups`` (one optimizer each) when
it declares ``capabilities.own_step``. The per-epoch evaluation and pictures are the callbacks the
model's registry entry names. Everything that changes with time is a pure function of the step
(learning-rate and weight schedules, the data order), and the one stateful thing, torch's RNG, is
checkpointed with the weights and every optimizer. So a run stopped after any checkpoint and
resumed ends bit-identical (on CPU, same thread count) to an uninterrupted run.

Under torchrun (a process group of :mod:`aelab.distributed` is initialised) the same loop is
data-parallel: every rank draws the same global batch of ``batch_size`` examples and trains on
its contiguous share, gradients are averaged by DistributedDataParallel (a model's own step
combines them through :meth:`StepContext.finish_gradients`), the logged losses are the global
batch's, rank 0 alone evaluates, draws and writes (checkpoints with every rank's RNG state,
``metrics.jsonl``, TensorBoard, the progress bar), and resume stays bit-identical at the same
number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from aelab import distributed
from aelab.batch import Batch
from aelab.data.base import Split
from aelab.data.batches import batch_indices, steps_per_epoch
from aelab.io import RunLock, atomic_write_text, remove_orphan_temporaries
from aelab.nn.precision import PRECISIONS, precision_context
from aelab.outputs import LossOutput
from aelab.protocol import Model, StepContext, model_spec
from aelab.registry import EPOCH_EVALUATIONS, EPOCH_FIGURES, MODELS
from aelab.schedules import lr_multiplier
from aelab.training import optim
from aelab.training.checkpoint import STATE_NAME, load_checkpoint, rng_state, save_checkpoint

# torch's Adam/AdamW with a leaner fused step (bitwise the same updates; aelab.training.optim)
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": optim.Adam, "adamw": optim.AdamW}


def resolve_device(name: str) -> torch.device:
    """``trainer.device`` as a :class:`torch.device` (``auto``: CUDA when available, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"trainer.device: expected cpu, cuda, cuda:N, mps or auto, got {name!r}") from None


@dataclass
class TrainerConfig:
    """Attributes:
    epochs: passes over the training split.
    max_steps: stop after this many optimizer steps in total (``None``: run all epochs).
    batch_size: training batch size.
    eval_batch_size: batch size for evaluation.
    optimizer: ``adam`` or ``adamw``.
    lr: base learning rate.
    weight_decay: L2 (adam) or decoupled (adamw) weight decay.
    betas: Adam's (beta1, beta2).
    lr_schedule: ``constant``, ``cosine`` or ``linear`` decay over the run, after warm-up.
    warmup_steps: linear learning-rate warm-up.
    grad_clip: clip the global gradient norm to this value (``None``: no clipping).
    fused: use PyTorch's fused Adam/AdamW kernel (one pass over all parameters instead of a
        Python loop of per-tensor ops: about 1.7x faster steps for a small MLP VAE on CPU; the
        same algorithm, deterministic, but not bit-identical to the unfused loop). The optimizers
        are :mod:`aelab.training.optim`'s subclasses of torch's Adam/AdamW, which call the fused
        kernel without torch's per-step Python around it (bitwise torch's fused updates and state).
    seed: seeds torch's RNG at the start of a fresh run and the data order of every epoch.
    checkpoint_every: write a resumable checkpoint every this many steps (and at each epoch end).
    log_every: log training losses every this many steps.
    eval_limit: evaluate on at most this many test examples (``None``: all).
    diagnostics: for models with a prior, add latent diagnostics to the per-epoch evaluation: KL
        per latent dimension, active units and the mutual information I(x; z)
        (:func:`aelab.metrics.latent.latent_diagnostics`).
    iwae_k: for models with a prior, also report the importance-weighted NLL with this many
        samples per example, ``nll_iwae_k{K}``, and the same samples' ``neg_elbo`` (0: off).
        On by default because it is cheap (with ``iwae_limit=1000``, 100k decoder passes: about
        a second per epoch for a 784-512-16 MLP VAE on 2 CPU cores); ``aelab eval --k 1000``
        gives the tighter number for reporting.
    iwae_limit: the IWAE is computed on a seeded random subset of this many test examples (the
        same subset every epoch; its mean differs from the full test set's by sampling error, so
        compare ``neg_elbo`` with ``nll_iwae_k{K}``, not with ``loss``).
    device: where the model trains: ``cpu``, ``cuda``, ``cuda:1``, ``mps``, or ``auto`` (CUDA when
        available). The trainer moves the model there once and each batch as it is drawn.
    precision: ``fp32``, or ``bf16``: the forward pass under ``torch.autocast`` with bfloat16
        (matrix products and convolutions in bfloat16, accumulated in float32; the weights, the
        optimizer and every distribution's log-density stay float32). About 1.4x faster steps on
        CPUs with AVX512-BF16 for an MLP VAE; the numerics differ from fp32, so compare results
        within one precision.
    channels_last: keep the model's 4-D weights and every 4-D training batch in channels-last
        (NHWC) memory layout, the one oneDNN's convolutions prefer. Measured on a 2-core AVX-512
        host (``benchmarks/roofline.py --channels-last``): 1.05-1.21x faster steps for the conv VAE,
        the dSprites VAE and the VQ-VAE in float32, 1.72-1.80x together with ``precision=bf16``
        (1.40-1.62x for bf16 alone); it changes no result beyond float rounding and is off by
        default because some networks run slower in it. Models without convolutions ignore it.
    images: write PNG grids of reconstructions (and samples) after each epoch; for models with a
        prior also latent traversals and, for 2-D latents, the decoded manifold and the test codes.
    progress: show a progress bar (only on a terminal).
    divergence: stop the run like a NaN does when the training loss's magnitude exceeds this
        (a finite blow-up, e.g. a weight schedule run away); ``None``: only NaN/inf stop it.
    """

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 500
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    fused: bool = True
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    eval_limit: int | None = None
    diagnostics: bool = True
    iwae_k: int = 100
    iwae_limit: int = 1000
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    images: bool = True
    progress: bool = True
    divergence: float | None = 1e10

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"trainer.optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        lr_multiplier(self.lr_schedule, 0, 1)  # validates the name
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        resolve_device(self.device)  # validates the name
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"trainer.lr must be a finite number > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"trainer.betas must lie in [0, 1), got {self.betas}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"trainer.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"trainer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"trainer.grad_clip must be > 0 or None (0 would stop learning, a negative value "
                             f"ascend the gradient), got {self.grad_clip}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"trainer.eval_limit must be >= 1 or None, got {self.eval_limit}")
        if self.divergence is not None and not self.divergence > 0:
            raise ValueError(f"trainer.divergence must be > 0 or None, got {self.divergence}")
        if self.iwae_k < 0 or self.iwae_limit < 1:
            raise ValueError(f"trainer.iwae_k must be >= 0 and trainer.iwae_limit >= 1, "
                             f"got {self.iwae_k} and {self.iwae_limit}")


class NonFiniteLossError(RuntimeError):
    """The loss, a gradient or the optimizer state became NaN/inf, or the loss diverged past
    ``trainer.divergence``; the last good checkpoint is kept on disk."""


Callback = Callable[["Trainer", dict[str, Any]], None]
Evaluation = Callable[[Model, Split], dict[str, float]]
Figures = Callable[[Model, Split, Path, int, Sequence[str] | None], None]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``. A last line cut short by a kill is dropped (it
    is redone on resume); any other unreadable line, or a record without ``step``, is a
    :class:`ValueError` naming the file and the line."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a metrics log (it holds bytes that are not UTF-8); move it away to "
                         "resume without the old records") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break  # a write interrupted mid-line: the step it logged is after the checkpoint
            raise ValueError(f"{path}, line {i + 1}: not a JSON record ({e}); fix or delete that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}, line {i + 1}: a record needs an integer 'step', got {line[:80]!r}")
        records.append(record)
    return records


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNG in a fresh torchrun run: ``seed`` itself on rank 0 (so
    rank 0 draws what a single process would), a different stream on every other rank."""
    return seed if rank == 0 else (seed * 1_000_003 + rank) * 7_919 + 104_729


class LossForward(nn.Module):
    """``model.loss`` as a module's ``forward``, the call DistributedDataParallel wraps (its
    parameters are the model's own)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, step: int) -> LossOutput:
        return self.model.loss(batch, step)


def epoch_callbacks(model: Model) -> tuple[Callable | None, Callable | None]:
    """The per-epoch evaluation ``f(model, split, trainer_cfg)`` and pictures
    ``f(model, split, out_dir, epoch, class_names)`` that ``model``'s registry entry names
    (``None`` where it names none, and for a model that is not registered)."""
    if model.name not in MODELS:
        return None, None
    spec = model_spec(model)
    ev = EPOCH_EVALUATIONS.get(spec.evaluation) if isinstance(spec.evaluation, str) else spec.evaluation
    fig = EPOCH_FIGURES.get(spec.figures) if isinstance(spec.figures, str) else spec.figures
    return ev, fig


class Trainer:
    """Trains ``model`` on ``train`` and evaluates on ``test`` after each epoch.

    Args:
        model: a :class:`~aelab.protocol.Model` (every registered aelab model).
        train, test: data splits.
        cfg: trainer settings.
        run_dir: where checkpoints, metrics, TensorBoard events and pictures go (``None``: nowhere).
        evaluate: ``evaluate(model, test) -> dict[str, float]`` run after each epoch (default: the
            evaluation the model's registry entry names, given ``cfg``; for the image families
            reconstruction metrics, plus latent diagnostics and the IWAE NLL for models with a
            prior, as ``cfg`` asks).
        figures: ``figures(model, test, out_dir, epoch, class_names)`` run after each epoch when
            ``cfg.images`` (default: the pictures the model's registry entry names).
        on_epoch_end: callbacks ``(trainer, metrics)``, e.g. for printing.
        run_config: the full run configuration, saved as ``config.json`` with the weights.

    Attributes:
        class_names: names of the test classes for picture legends (``None``: ``class k``); the
            CLI sets them from the data set's info.
        data_info: the data set's :class:`~aelab.data.base.DatasetInfo`, when the run was set up
            from a data config (``aelab.runs.train_run``).

    Example:
        >>> from aelab.data.base import TensorImageDataset
        >>> from aelab.protocol import build_model
        >>> data = TensorImageDataset(torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8),
        ...                           torch.zeros(64, dtype=torch.long))
        >>> model = build_model("ae", image_shape=(1, 8, 8), latent_dim=4, backbone={"hidden": (16,)})
        >>> t = Trainer(model, data, data, TrainerConfig(epochs=2, batch_size=16, images=False))
        >>> t.fit().keys() >= {"loss", "mse"}, t.step
        (True, 8)
    """

    class_names: Sequence[str] | None = None
    data_info: Any = None

    def __init__(self, model: Model, train: Split, test: Split | None,
                 cfg: TrainerConfig, run_dir: str | Path | None = None,
                 evaluate: Evaluation | None = None, figures: Figures | None = None,
                 on_epoch_end: list[Callback] | None = None,
                 run_config: dict[str, Any] | None = None) -> None:
        self.model, self.train_data, self.test_data, self.cfg = model, train, test, cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if evaluate is None or figures is None:
            spec_evaluate, spec_figures = epoch_callbacks(model)
            if evaluate is None and spec_evaluate is not None:
                evaluate = partial(spec_evaluate, cfg=cfg)
            figures = figures if figures is not None else spec_figures
        self.evaluate = evaluate
        self.figures = figures
        self.callbacks = list(on_epoch_end or [])
        self.run_config = run_config
        self.device = resolve_device(cfg.device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if self.world_size > 1 and self.device.type == "cuda":  # torchrun: this rank's own GPU
            self.device = torch.device("cuda", torch.cuda.current_device())
        if cfg.batch_size % self.world_size:
            raise ValueError(f"trainer.batch_size={cfg.batch_size} is the global batch and must divide evenly over "
                             f"the {self.world_size} processes; choose a multiple of {self.world_size}")
        model.to(self.device)
        if cfg.channels_last:  # before the optimizers: their state takes the weights' layout
            model.to(memory_format=torch.channels_last)
        self.own_step = model.capabilities.own_step
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                            fused=cfg.fused or None)
            for name, params in model.optimizer_groups().items()}
        if len(self.optimizers) > 1 and not self.own_step:
            raise ValueError(f"model {model.name!r} has {len(self.optimizers)} optimizer groups but no train_step "
                             "of its own (capabilities.own_step)")
        self._context = StepContext(autocast=self._autocast, grad_clip=cfg.grad_clip, check_finite=self._check_finite,
                                    draw=self._draw, sync=self._sync if self.world_size > 1 else None,
                                    world_size=self.world_size)
        # the loss through DistributedDataParallel under torchrun (gradients averaged during backward)
        self._loss: Callable[[Batch, int], LossOutput] = model.loss
        if self.world_size > 1 and not self.own_step:
            self._loss = DistributedDataParallel(LossForward(model))
        self._share = 1.0  # this rank's share of the current global batch
        #: what a resume found worth telling (e.g. a different number of processes); the CLI prints it
        self.notes: list[str] = []
        self.steps_per_epoch = steps_per_epoch(len(train), cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.step = 0
        self.resumed_from: int | None = None
        self.last_metrics: dict[str, float] = {}
        self._writer = None
        self._checkpoint_step: int | None = None

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (rank 0 under torchrun)."""
        return self.run_dir is not None and self.rank == 0

    # --- bookkeeping --------------------------------------------------------------------------
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of a model with one parameter group."""
        if len(self.optimizers) != 1:
            raise AttributeError(f"the model has {len(self.optimizers)} optimizers: use trainer.optimizers")
        return next(iter(self.optimizers.values()))

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def _log(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            split = record["split"]
            for k, v in record.items():
                if k not in ("step", "epoch", "split", "time") and isinstance(v, (int, float)):
                    self._writer.add_scalar(f"{split}/{k}", v, record["step"])

    def _open_writer(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional; metrics.jsonl has everything
            return
        self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)

    def save(self) -> None:
        """Write a resumable checkpoint and the current weights (each file atomically).

        Refuses (:class:`NonFiniteLossError`) when a weight or an optimizer moment is not finite,
        so a checkpoint on disk is always one training can continue from. Under torchrun every
        rank must call it (it gathers their RNG states); rank 0 writes.
        """
        if self.run_dir is None:
            return
        states = [rng_state(self.model)]
        if self.world_size > 1:  # one all-gather per generator, split into the ranks' states
            gathered = {k: distributed.all_gather_cat(v[None]) for k, v in states[0].items()}
            states = [{k: v[r] for k, v in gathered.items()} for r in range(self.world_size)]
        if not self.writes:
            self._checkpoint_step = self.step
            return
        for what, tensors in [("weight", self.model.parameters()),
                              *[(f"{g} optimizer state", (v for st in opt.state.values() for v in st.values()
                                                          if torch.is_tensor(v) and v.is_floating_point()))
                                for g, opt in self.optimizers.items()]]:
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                self._non_finite(f"a {what}", float("nan"), {})
        save_checkpoint(self.run_dir / STATE_NAME, self.model, self.optimizers,
                        {"step": self.step, "epoch": self.epoch, "total_steps": self.total_steps}, states)
        extra = {k: v for k, v in (self.run_config or {}).items() if k not in ("model", "model_config")}
        self.model.save_pretrained(self.run_dir, extra_config=extra)
        self._checkpoint_step = self.step

    def resume(self) -> None:
        """Continue from ``run_dir``'s checkpoint: weights, optimizer, RNG and step."""
        if self.run_dir is None:
            raise ValueError("resume needs a run directory")
        meta = load_checkpoint(self.run_dir / STATE_NAME, self.model, self.optimizers, self.rank)
        self.step = int(meta["step"])
        self._checkpoint_step = self.step
        self.resumed_from = self.step
        if meta["world_size"] != self.world_size:
            self.notes.append(f"the checkpoint was written by {meta['world_size']} process(es), this run has "
                              f"{self.world_size}: it continues from step {self.step} at the same data position "
                              "(same global batch), but the result is not bit-identical to an uninterrupted run")
        if not meta["rng_restored"]:  # a rank the checkpoint's run did not have: a stream of its own
            torch.manual_seed(rank_seed(self.cfg.seed, self.rank) + self.step)
        metrics = self.run_dir / "metrics.jsonl"
        if self.writes and metrics.is_file():  # drop records written after the checkpoint: they will be redone
            atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in read_metrics(metrics)
                                               if r["step"] <= self.step))

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train until ``total_steps``; returns the last evaluation metrics.

        With a run directory the trainer holds its lock (:class:`aelab.io.RunLock`) while it
        runs, removes the temporary files of writes a killed process left, and a fresh run writes
        its step-0 checkpoint right after seeding, so a run stopped at any step resumes exactly.
        """
        with RunLock(self.run_dir) if self.writes else contextlib.nullcontext():
            if self.writes:
                remove_orphan_temporaries(self.run_dir)
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, float]:
        cfg = self.cfg
        if resume:
            if self.resumed_from is None:
                self.resume()
        else:
            torch.manual_seed(rank_seed(cfg.seed, self.rank))
            self.save()  # step 0: the config, the initial weights and the seeded RNG
        if self.writes:
            self._open_writer()
        self.model.train()
        bar = None
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        if cfg.progress and self.rank == 0:
            bar = tqdm(total=self.total_steps, initial=self.step, disable=None, dynamic_ncols=True,
                       desc=f"epoch {min(self.epoch + 1, epochs)}/{epochs}")
        # short runs log their training losses too (a few records an epoch at least)
        log_every = min(cfg.log_every, max(1, self.steps_per_epoch // 4))
        try:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                t0 = time.perf_counter()
                seen = 0
                for idx in batch_indices(self.train_data, cfg.batch_size, cfg.seed, epoch, start):
                    logs = self._train_step(self._local_batch(idx))
                    seen += len(idx)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)
                    if self.step % log_every == 0:
                        self._log({"step": self.step, "epoch": epoch, "split": "train", **logs})
                    if self.step % cfg.checkpoint_every == 0 and self.step % self.steps_per_epoch:
                        self.save()
                    if self.step >= self.total_steps:
                        break
                seconds = time.perf_counter() - t0
                if bar is not None:
                    bar.clear()  # the epoch's printed line goes on a line of its own
                self._end_epoch(epoch, seconds, seen)
                if bar is not None:
                    bar.set_description(f"epoch {min(self.epoch + 1, epochs)}/{epochs}")
                    bar.refresh()
        finally:
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self.last_metrics

    def _autocast(self) -> contextlib.AbstractContextManager:
        return precision_context(self.cfg.precision, self.device)

    def _draw(self, i: int) -> Batch:
        """The ``i``-th extra batch of the current step (a model's own step asks for it): random
        training examples, a pure function of ``(seed, step, i)``."""
        g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.step) * 1_009 + i)
        n = len(self.train_data)
        idx = torch.randperm(n, generator=g)[: min(self.cfg.batch_size, n)]
        return self.train_data.get_batch(idx).to(self.device, non_blocking=True)

    def _local_batch(self, idx: torch.Tensor) -> Batch:
        """This rank's share of the global batch ``idx`` (all of it in one process)."""
        if self.world_size == 1:
            return self.train_data.get_batch(idx)
        mine = distributed.shard(idx, self.rank, self.world_size)
        # DDP averages the ranks' gradients; weighting each rank's loss by its share makes that
        # average the global batch's gradient also when the last batch of an epoch is uneven
        # (a rank left without examples computes on one with weight 0)
        self._share = len(mine) / len(idx)
        return self.train_data.get_batch(mine if len(mine) else idx[:1])

    def _sync(self, params: list[nn.Parameter]) -> None:
        """A model's own step: each gradient becomes the global batch's (the ranks' gradients
        weighted by their share of the batch, summed)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(self._share)
        distributed.all_reduce_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _global_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """The logged values of the global batch: each rank's weighted by its share, summed."""
        if self.world_size == 1:
            return logs
        keys = sorted(logs)
        values = distributed.all_reduce_(torch.tensor([logs[k] * self._share for k in keys], dtype=torch.float64))
        return dict(zip(keys, values.tolist()))

    def _check_finite(self, what: str, value: float, terms: dict[str, torch.Tensor]) -> None:
        limit = self.cfg.divergence
        if not math.isfinite(value) or (what == "loss" and limit is not None and abs(value) > limit):
            self._non_finite(what, value, terms)

    def _train_step(self, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        lr = cfg.lr * lr_multiplier(cfg.lr_schedule, self.step, self.total_steps, cfg.warmup_steps)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        batch = batch.to(self.device, non_blocking=True)
        if cfg.channels_last and batch.x.dim() == 4:
            batch = dataclasses.replace(batch, x=batch.x.contiguous(memory_format=torch.channels_last))
        if self.own_step:
            logs = self._global_logs(self.model.train_step(batch, self.step, self.optimizers, self._context))
            self._check_finite("loss", logs["loss"], {})
            self.step += 1
            return {**logs, "lr": lr}
        optimizer = self.optimizer
        with self._autocast():
            out = self._loss(batch, self.step)
        # under torchrun every rank checks (and logs) the global batch's values, so all stop together
        logs = self._global_logs({"loss": out.loss.item(), **{k: v.item() for k, v in out.terms.items()}})
        loss = logs["loss"]
        self._check_finite("loss", loss, out.terms)
        optimizer.zero_grad(set_to_none=True)
        scale = self._share * self.world_size  # 1 except on an uneven last batch under torchrun
        (out.loss if scale == 1.0 else out.loss * scale).backward()
        if cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
            if not math.isfinite(norm):
                self._non_finite("gradient norm", norm, out.terms)
        optimizer.step()
        self.step += 1
        return {**logs, "lr": lr}

    def _non_finite(self, what: str, value: float, terms: dict[str, torch.Tensor]) -> None:
        detail = "; terms: " + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()) if terms else ""
        where = (f"the last good checkpoint in {self.run_dir} is from step {self._checkpoint_step}"
                 if self._checkpoint_step is not None and self.run_dir is not None
                 else "no checkpoint had been written yet")
        became = (f"exceeded trainer.divergence={self.cfg.divergence:g} in magnitude ({value:.4g})"
                  if math.isfinite(value) else f"became {value}")
        raise NonFiniteLossError(
            f"{what} {became} at step {self.step} (epoch {self.epoch + 1}){detail}. "
            f"Nothing was written for this step; {where}. Lower trainer.lr or set trainer.grad_clip."
        )

    def _end_epoch(self, epoch: int, seconds: float, seen: int) -> None:
        metrics: dict[str, Any] = {"step": self.step, "epoch": epoch, "split": "test"}
        if self.rank != 0:  # rank 0 evaluates and writes; the others wait for it in save()
            self.model.train()
            self.save()
            return
        # evaluation and pictures must not consume the training RNG stream (exact resume)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if self.test_data is not None and self.evaluate is not None:
                metrics |= self.evaluate(self.model, self.test_data)
            if (self.run_dir is not None and self.cfg.images and self.test_data is not None
                    and self.figures is not None):
                self.figures(self.model, self.test_data, self.run_dir / "images", epoch, self.class_names)
        metrics |= {"seconds": seconds, "samples_per_second": seen / max(seconds, 1e-9)}
        self.model.train()
        self._log(metrics)
        self.last_metrics = {k: v for k, v in metrics.items() if k not in ("split",)}
        self.save()
        for cb in self.callbacks:
            cb(self, self.last_metrics)

"""Shared fixtures: the shared real data directory and tiny model configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aelab.batch import Batch
from aelab.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
# tests and CI read the real data sets beside the checkout unless told otherwise
os.environ.setdefault("AELAB_DATA_DIR", str(REPO.parent / "shared" / "data"))
DATA_DIR = Path(os.environ["AELAB_DATA_DIR"])

# the tests use tiny tensors: one thread is faster than two and immune to an oversubscribed machine
torch.set_num_threads(1)

#: a non-square, odd-sized image shape: proves nothing is hard-wired to 28x28
TINY_SHAPE = (1, 12, 10)


#: the code grid of the tiny code-prior configs
TINY_GRID = (3, 4)


def tiny_overrides(name: str, kind: str = "mlp") -> dict:
    """Smallest sensible config for each registered model, for the contract tests."""
    code = {"num_codes": 5, "grid_shape": TINY_GRID, "channels": 8, "kernel_size": 3}
    if name == "pixelcnn":
        return code | {"layers": 2}
    if name == "pixelsnail":
        return code | {"layers": 1, "blocks": 1, "heads": 2}
    if name == "vqvae2_prior":
        return {"top": code | {"grid_shape": (2, 2), "layers": 1, "blocks": 1, "heads": 2},
                "bottom": code | {"layers": 2, "cond_channels": 4}}
    if MODELS.get(name).family == "text":  # kind: the decoder (lstm or cnn; others: lstm)
        decoder = kind if kind in ("lstm", "cnn") else "lstm"
        cfg = {"vocab_size": 20, "max_len": 9, "embed_dim": 8, "hidden": 16, "decoder": decoder, "cnn_preset": "small"}
        return cfg if name == "text_lm" else cfg | {"latent_dim": 6, "bow_weight": 0.5, "bow_hidden": 8}
    if MODELS.get(name).family == "sequence":  # frames of the tiny image shape; kind: the backbone
        return {"image_shape": TINY_SHAPE, "latent_dim": 3, "belief_dim": 8, "hidden": 8, "max_jump": 2, "pairs": 2,
                "backbone": {"kind": kind, "hidden": (16,), "channels": (4, 8), "fc": 12}}
    if name == "feature_classifier":  # labels are batch.y (tiny_inputs: class 0 of 3)
        return {"image_shape": TINY_SHAPE, "num_classes": 3, "channels": (4,), "pool": 2, "feature_dim": 8}
    if name in ("vqvae", "vqvae2"):  # spatial code grids: no backbone kind (3 x 2 bottom grid, 1 x 1 top)
        cfg = {"image_shape": TINY_SHAPE, "embedding_dim": 3, "num_codes": 8, "channels": (4, 8),
               "res_blocks": 1, "res_channels": 4, "quantizer": {"dead_after": 3, "kmeans_iters": 2}}
        # vqvae: EMA codebook from k-means (the defaults); vqvae2: codebook loss from a random start
        # (with k-means on 5 one-position top grids every vector would be a centroid: zero codebook loss)
        vq2 = {"top_channels": 4, "quantizer": cfg["quantizer"] | {"ema": False, "kmeans_init": False}}
        return cfg | (vq2 if name == "vqvae2" else {})
    cfg: dict = {"image_shape": TINY_SHAPE, "latent_dim": 6,
                 "backbone": {"kind": kind, "hidden": (16,), "channels": (4, 8), "fc": 12}}
    if name == "ksparse_ae":
        cfg |= {"k": 2, "k_start": 5, "k_steps": 10, "alpha": 2.0}
    if name == "iaf_vae":
        cfg |= {"flow_hidden": 16, "context_dim": 4}
    if name == "factor_vae":
        cfg |= {"discriminator_hidden": (16, 16)}
    if name == "annealed_vae":  # the capacity reaches c_max by step 10 (train_steps trains at step 100)
        cfg |= {"c_max": 2.0, "c_steps": 10}
    return cfg


def tiny_inputs(name: str, n: int = 5) -> Batch:
    """A seeded batch of ``n`` examples for model ``name``'s tiny config (by its registered family)."""
    g = torch.Generator().manual_seed(0)
    if MODELS.get(name).family == "code prior":
        if name == "vqvae2_prior":
            return Batch(torch.randint(0, 5, (n, *TINY_GRID), generator=g), torch.full((n,), -1),
                         cond=torch.randint(0, 5, (n, 2, 2), generator=g))
        return Batch(torch.randint(0, 5, (n, *TINY_GRID), generator=g), torch.full((n,), -1))
    if MODELS.get(name).family == "text":  # sentences of 1-7 words (ids 4..19), <eos>, then <pad>
        lengths = torch.randint(2, 9, (n,), generator=g)
        x = torch.randint(4, 20, (n, int(lengths.max())), generator=g)
        x[torch.arange(n), lengths - 1] = 3
        x[torch.arange(x.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
        return Batch(x, lengths=lengths)
    if MODELS.get(name).family == "sequence":  # 4 frames each
        return Batch(torch.rand(n, 4, *TINY_SHAPE, generator=g))
    return Batch(torch.rand(n, *TINY_SHAPE, generator=g), torch.zeros(n, dtype=torch.long))


def train_steps(model, batch: torch.Tensor | Batch, steps: int, lr: float) -> tuple[float, float]:
    """Seeded evaluation loss before and after ``steps`` Adam steps on one fixed batch.

    Evaluation uses the same seed both times, so stochastic models (VAEs) compare like with like.
    """
    batch = batch if isinstance(batch, Batch) else Batch(batch)
    def eval_loss() -> float:
        model.eval()
        torch.manual_seed(0)
        return model.loss(batch).loss.item()

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        model.loss(batch, step=100).loss.backward()
        opt.step()
    return before, eval_loss()


def require_shared_data() -> Path:
    """The real data directory. Without it a test on real data is skipped with the reason (a
    checkout alone), except in CI (``CI`` set), where the data must be there: a failure."""
    if not (DATA_DIR / "fashion-mnist.npz").is_file():
        why = (f"real data not found in {DATA_DIR}: set AELAB_DATA_DIR to a directory holding "
               "fashion-mnist.npz and mnist-10k.npz (the project's ../shared/data)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return DATA_DIR


@pytest.fixture
def shared_data() -> Path:
    """The real data directory (:func:`require_shared_data`)."""
    return require_shared_data()


@pytest.fixture
def tiny_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, *TINY_SHAPE, generator=g)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


class InterruptedRunError(Exception):
    """Raised in place of the training step a run is killed at."""


def fit_until_interrupted(trainer, stop_at: int) -> None:
    """Run ``trainer.fit()`` and kill it just before optimizer step ``stop_at`` (as a crash
    would: nothing of that step is written), for resume tests."""
    step = trainer._train_step

    def dying_step(x):
        if trainer.step == stop_at:
            raise InterruptedRunError
        return step(x)

    trainer._train_step = dying_step
    with pytest.raises(InterruptedRunError):
        trainer.fit()


def sigkill_at(trainer, step: int) -> None:
    """Make ``trainer`` SIGKILL its own process just before optimizer step ``step`` (for resume
    tests that run the dying training in a subprocess)."""
    train_step = trainer._train_step

    def step_or_die(batch):
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(batch)

    trainer._train_step = step_or_die


def run_aelab(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """``python -m aelab --threads 1 ARGS`` in a subprocess (warnings are errors); fails the test
    with both outputs unless it exits 0 (``check``)."""
    env = env if env is not None else os.environ | {"PYTHONWARNINGS": "error"}
    proc = subprocess.run([sys.executable, "-m", "aelab", "--threads", "1", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"aelab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc

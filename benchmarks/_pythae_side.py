"""The pythae half of ``benchmarks/vae_vs_pythae.py``; runs inside the pythae virtual environment.

Not meant to be run by hand: ``vae_vs_pythae.py`` starts it with the pythae venv's interpreter.
It imports only torch, numpy and pythae (never aelab), trains pythae 0.1.2's ``VAE`` with its own
``BaseTrainer`` on the arrays handed over in ``--data`` (``--network mlp``: the MLP below;
``--network conv``: pythae's own ``Encoder_Conv_VAE_MNIST`` and ``Decoder_Conv_AE_MNIST``), and
writes into ``--out``:

* ``weights.npz``: the trained ``state_dict`` (plain arrays, no pickle; BatchNorm buffers included);
* ``reference.npz``: pythae's own encoder means/log-variances and decoder probabilities on the
  ``x_check`` images (in eval mode: BatchNorm on its running statistics), so the caller can
  verify that it rebuilt the very same function;
* ``result.json``: per-epoch training times, pythae's own test loss, versions.

Turn-taking protocol (the two libraries share the machine but never compute at the same time):
pythae trains only after reading a line ``go`` from stdin, and after every ``--turn-steps``
optimizer steps it writes one JSON line to stdout and waits for the next ``go``. After the last
step it finishes (pythae's final save, its own test loss, the files above) and writes a last line
with ``"finished": true``. Everything pythae itself prints goes to stderr.

Timing: ``BaseTrainer.train_step(epoch)`` is the loop over one epoch's batches (DataLoader
batching, forward, loss, backward, Adam step, ``loss.item()``, the progress-bar callback). It is
wrapped with ``time.perf_counter``, less the time spent waiting for ``go`` inside it (the CPU time
of the process over the same span is recorded too, as a check). Nothing else
is counted: not ``prepare_training`` (seed, optimizer, output folders), not the per-epoch
``deepcopy`` of the best model, not the logging and not the final ``save_model``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pythae.data.datasets import BaseDataset
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST
from pythae.trainers import BaseTrainer, BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback
from torch import nn


class Encoder(BaseEncoder):
    """784 -> hidden (ReLU) -> (mu, log_var), pythae's encoder interface."""

    def __init__(self, input_dim: int, hidden: int, latent_dim: int) -> None:
        BaseEncoder.__init__(self)
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU())
        self.embedding = nn.Linear(hidden, latent_dim)
        self.log_var = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.net(x.reshape(x.shape[0], -1))
        return ModelOutput(embedding=self.embedding(h), log_covariance=self.log_var(h))


class Decoder(BaseDecoder):
    """latent -> hidden (ReLU) -> 784 Bernoulli means (sigmoid), pythae's decoder interface."""

    def __init__(self, latent_dim: int, hidden: int, shape: tuple[int, int, int]) -> None:
        BaseDecoder.__init__(self)
        self.shape = shape
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, int(np.prod(shape))), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.net(z).reshape(z.shape[0], *self.shape))


class Turns(TrainingCallback):
    """Hands the machine back to the driver every ``every`` steps (see the module docstring)."""

    def __init__(self, every: int, total_steps: int) -> None:
        self.every, self.total_steps, self.step, self.waited = every, total_steps, 0, 0.0
        # stdout carries the protocol only: keep a private handle, send all other output to stderr
        self.channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def send(self, message: dict[str, Any]) -> None:
        self.channel.write(json.dumps(message) + "\n")

    def wait_for_go(self) -> None:
        t0 = time.perf_counter()
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the benchmark driver went away")
        self.waited += time.perf_counter() - t0

    def on_train_begin(self, training_config: BaseTrainerConfig, **kwargs: Any) -> None:
        self.wait_for_go()

    def on_train_step_end(self, training_config: BaseTrainerConfig, **kwargs: Any) -> None:
        self.step += 1
        if self.step % self.every == 0 and self.step < self.total_steps:
            self.send({"step": self.step})
            self.wait_for_go()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="npz with x_train, y_train, x_test (uint8), x_check (float32)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=512, help="mlp only: the hidden width")
    p.add_argument("--network", choices=["mlp", "conv"], default="mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turn-steps", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # --- data prep (not timed): uint8 -> float in [0, 1], as pythae's BaseDataset wants -----
    arrays = np.load(args.data, allow_pickle=False)
    x_train = torch.from_numpy(arrays["x_train"]).float().div_(255.0)  # (N, 1, 28, 28)
    y_train = torch.from_numpy(arrays["y_train"].astype(np.int64))
    x_test = torch.from_numpy(arrays["x_test"]).float().div_(255.0)
    x_check = torch.from_numpy(arrays["x_check"])
    shape = tuple(int(s) for s in x_train.shape[1:])
    train_set = BaseDataset(x_train, y_train)

    torch.manual_seed(args.seed)
    model_cfg = VAEConfig(input_dim=shape, latent_dim=args.latent_dim, reconstruction_loss="bce")
    if args.network == "conv":  # pythae's benchmark nets, written for (1, 28, 28)
        encoder, decoder = Encoder_Conv_VAE_MNIST(model_cfg), Decoder_Conv_AE_MNIST(model_cfg)
    else:
        encoder = Encoder(int(np.prod(shape)), args.hidden, args.latent_dim)
        decoder = Decoder(args.latent_dim, args.hidden, shape)
    model = VAE(model_cfg, encoder=encoder, decoder=decoder)
    steps_per_epoch = -(-len(train_set) // args.batch_size)
    turns = Turns(args.turn_steps, args.epochs * steps_per_epoch)
    logging.getLogger("pythae").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="pythae-run-") as run_dir:
        # pythae 0.1.2's defaults are already plain Adam (betas 0.9, 0.999) and no scheduler;
        # they are spelled out so that a change of defaults cannot change the comparison.
        train_cfg = BaseTrainerConfig(
            output_dir=run_dir, learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
            num_epochs=args.epochs, optimizer_cls="Adam", optimizer_params=None, scheduler_cls=None,
            scheduler_params=None, steps_saving=None, steps_predict=None, seed=args.seed, no_cuda=True,
        )
        trainer = BaseTrainer(model, train_set, None, train_cfg, callbacks=[turns])
        epoch_seconds: list[float] = []
        epoch_cpu_seconds: list[float] = []
        train_step = trainer.train_step

        def timed_train_step(epoch: int) -> float:
            waited, t0, c0 = turns.waited, time.perf_counter(), time.process_time()
            loss = train_step(epoch)
            epoch_seconds.append(time.perf_counter() - t0 - (turns.waited - waited))
            epoch_cpu_seconds.append(time.process_time() - c0)
            return loss

        trainer.train_step = timed_train_step
        trainer.train()
        optimizer = " ".join(repr(trainer.optimizer).split())
        scheduler = repr(trainer.scheduler)
    model = trainer.model.eval()  # the final weights (pythae also keeps a "best on train" copy)

    # --- pythae's own numbers, for cross-checking the shared estimator -------------------------
    with torch.no_grad():
        torch.manual_seed(args.seed)
        losses = [model({"data": xb}).loss.item() * xb.shape[0] for xb in x_test.split(500)]
        enc = model.encoder(x_check)
        probs = model.decoder(enc.embedding).reconstruction
    np.savez(out / "reference.npz", mu=enc.embedding.numpy(), log_var=enc.log_covariance.numpy(),
             probs_at_mu=probs.numpy())
    np.savez(out / "weights.npz", **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    (out / "result.json").write_text(json.dumps({
        "epoch_seconds": epoch_seconds,
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "epoch_samples": len(train_set),
        "own_test_loss_one_sample": sum(losses) / x_test.shape[0],
        "optimizer": optimizer,
        "scheduler": scheduler,
        "pythae": metadata.version("pythae"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }, indent=2))
    turns.send({"step": turns.step, "finished": True})


if __name__ == "__main__":
    main()

"""The pythae half of ``benchmarks/roofline.py``; runs inside the pythae virtual environment.

Not meant to be run by hand: ``roofline.py`` starts it with the interpreter of the venv that
``vae_vs_pythae.py`` builds. It imports only torch, numpy and pythae (never aelab); the network is
``_pythae_side.py``'s (the pythae comparison's 784-512-16 VAE), trained by pythae 0.1.2's own
``BaseTrainer`` step: ``model(inputs, epoch=..., dataset_size=..., uses_ddp=False)``, then
``trainer._optimizers_step(output)`` (zero_grad, backward, ``torch.optim.Adam``'s step), then
``loss.item()`` -- the body of ``BaseTrainer.train_step``'s loop, without its DataLoader.

Protocol (one JSON line answers each command line on stdin):
    ``count``: one step on each batch of ``--batches`` under ``FlopCounterMode``:
        ``{"flops": [...], "by_op": {op: flops summed over the batches}}``;
    ``run STEPS WARMUP``: ``WARMUP`` untimed steps, then ``STEPS`` steps timed one at a time,
        cycling over the batches: ``{"seconds": [...], "cpu_seconds": [...], "preempted": [...]}``
        (wall time, the process's CPU time, involuntary context switches; per step);
    ``quit``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from importlib import metadata

import numpy as np
import torch
from _pythae_side import Decoder, Encoder
from pythae.data.datasets import DatasetOutput
from pythae.models import VAE, VAEConfig
from pythae.trainers import BaseTrainer, BaseTrainerConfig
from torch.utils.flop_counter import FlopCounterMode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", required=True, help="npz with x: (n, B, 1, 28, 28) float32 in [0, 1]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--dataset-size", type=int, default=60000)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # stdout carries the protocol only: keep a private handle, send everything pythae prints to stderr
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with np.load(args.batches, allow_pickle=False) as f:
        batches = [torch.from_numpy(x) for x in f["x"]]
    shape = tuple(int(s) for s in batches[0].shape[1:])
    torch.manual_seed(0)
    model = VAE(VAEConfig(input_dim=shape, latent_dim=args.latent_dim, reconstruction_loss="bce"),
                encoder=Encoder(int(np.prod(shape)), args.hidden, args.latent_dim),
                decoder=Decoder(args.latent_dim, args.hidden, shape))
    dataset = [DatasetOutput(data=batches[0][0])]  # BaseTrainer wants a data set; it is never iterated here
    with tempfile.TemporaryDirectory(prefix="pythae-roofline-") as run_dir:
        cfg = BaseTrainerConfig(output_dir=run_dir, learning_rate=args.lr, per_device_train_batch_size=len(batches[0]),
                                num_epochs=1, optimizer_cls="Adam", optimizer_params=None, scheduler_cls=None,
                                scheduler_params=None, steps_saving=None, steps_predict=None, seed=0, no_cuda=True)
        trainer = BaseTrainer(model, dataset, None, cfg)
        trainer.prepare_training()  # pythae's own set-up: seed, optimizer, scheduler
        trainer.model.train()
        state = {"next": 0}

        def step(x: torch.Tensor) -> float:
            out = trainer.model(DatasetOutput(data=x), epoch=1, dataset_size=args.dataset_size, uses_ddp=False)
            trainer._optimizers_step(out)
            return out.loss.item()

        def next_batch() -> torch.Tensor:
            x = batches[state["next"] % len(batches)]
            state["next"] += 1
            return x

        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            if cmd[0] == "count":
                flops, by_op = [], {}
                for x in batches:
                    counter = FlopCounterMode(display=False)
                    with counter:
                        step(x)
                    flops.append(int(counter.get_total_flops()))
                    for op, n in counter.get_flop_counts()["Global"].items():
                        key = str(op).removeprefix("aten.")
                        by_op[key] = by_op.get(key, 0) + int(n)
                reply = {"flops": flops, "by_op": by_op, "optimizer": " ".join(repr(trainer.optimizer).split()),
                         "pythae": metadata.version("pythae"), "torch": torch.__version__,
                         "threads": torch.get_num_threads()}
            elif cmd[0] == "run":
                steps, warmup = int(cmd[1]), int(cmd[2])
                seconds, cpu_seconds, preempted = [], [], []
                for i in range(warmup + steps):
                    x = next_batch()
                    t0, c0 = time.perf_counter(), time.process_time()
                    n0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
                    step(x)
                    if i >= warmup:
                        seconds.append(time.perf_counter() - t0)
                        cpu_seconds.append(time.process_time() - c0)
                        preempted.append(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - n0)
                reply = {"seconds": seconds, "cpu_seconds": cpu_seconds, "preempted": preempted}
            else:
                reply = {"error": f"unknown command {cmd[0]!r}"}
            channel.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()

"""Train every kind of aelab model on an accelerator and check what a CPU run guarantees, as JSON.

For each model: a few hundred steps on generated dSprites (no download) with ``trainer.device``
set to the accelerator, in fp32 and in bf16; the losses must stay finite and fall, and the
first step's loss must match the CPU's for the same weights and batch. Then exact resume on the
device: a run interrupted mid-epoch and resumed is compared with an uninterrupted one (weights
equal bit for bit, or the largest difference). Training throughput is printed for both
precisions and for the CPU on the same machine.

Where more than one GPU is visible, a data-parallel check too (``ddp`` in the JSON): the same AE
run through ``torchrun --nproc_per_node 2`` (NCCL, one GPU a rank) and as one process with the
same global batch, each from the command line; both must finish, and the logged loss curves must
agree to float tolerance (CUDA kernels are not bitwise deterministic), with samples/s of each.

  python benchmarks/device_check.py --device cuda --save benchmarks/results/device_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import aelab
from aelab.batch import Batch
from aelab.data.base import DataConfig, load_data
from aelab.io import atomic_write_text
from aelab.models import build_model
from aelab.training.trainer import Trainer, TrainerConfig

MODELS: dict[str, dict] = {
    "vae": {"latent_dim": 10, "backbone": {"kind": "conv", "channels": (32, 32, 64, 64)}},
    "iaf_vae": {"latent_dim": 10, "backbone": {"kind": "conv", "channels": (32, 32, 64, 64)}},
    "decomposition_vae": {"latent_dim": 10, "backbone": {"kind": "conv", "channels": (32, 32, 64, 64)},
                          "prior": {"name": "anisotropic"}, "alpha": "10"},
    "vqvae": {},
    "vqvae2": {},
}


class _StopError(Exception):
    pass


def _build(name: str, shape, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, image_shape=shape, **MODELS[name])


def _train(name, data, cfg, run_dir=None, stop_at=None, resume=False, seed=0):
    t = Trainer(_build(name, data.info.shape, seed), data.train, None, cfg, run_dir=run_dir)
    if stop_at is not None:
        step = t._train_step
        t._train_step = lambda x: (_ for _ in ()).throw(_StopError) if t.step == stop_at else step(x)
    losses: list[float] = []
    stamps: list[float] = []
    inner = t._train_step

    def timed_step(x):
        logs = inner(x)  # its loss.item() waits for the device
        losses.append(logs["loss"])
        stamps.append(time.perf_counter())
        return logs

    t._train_step = timed_step
    with contextlib.suppress(_StopError):
        t.fit(resume=resume)
    warm = min(5, len(stamps) - 2)  # steps after the first few (CUDA context, kernel selection)
    per_second = (len(stamps) - 1 - warm) * cfg.batch_size / (stamps[-1] - stamps[warm]) if warm >= 0 else float("nan")
    return t, losses, per_second


def ddp_check(images: int) -> dict:
    """2 GPUs under torchrun vs 1 GPU, the same global batch, through ``aelab train``."""
    args = ["ae", "--data", "dsprites", "--set", f"data.train_subset={images}", "--set", "data.test_subset=500",
            "--set", "trainer.device=cuda", "--set", "trainer.batch_size=256", "--set", "trainer.max_steps=200",
            "--set", "trainer.log_every=1", "--set", "trainer.images=false", "--set", "trainer.progress=false",
            "--set", "trainer.iwae_k=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        curves = {}
        for name, launcher in [("1 gpu", [sys.executable]),
                               ("2 gpus", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc_per_node", "2"])]:
            run = Path(tmp) / name.replace(" ", "")
            t0 = time.perf_counter()
            r = subprocess.run([*launcher, "-m", "aelab", "train", *args, "--out", str(run)], env=env,
                               capture_output=True, text=True)
            if r.returncode:
                return {"error": f"{name}: exit {r.returncode}: {(r.stdout + r.stderr)[-2000:]}"}
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            curves[name] = {rec["step"]: rec["loss"] for rec in records if rec["split"] == "train"}
            out[name] = {"seconds": time.perf_counter() - t0,
                         "samples_per_second": [rec["samples_per_second"] for rec in records
                                                if "samples_per_second" in rec]}
        a, b = curves["1 gpu"], curves["2 gpus"]
        rel = [abs(a[k] - b[k]) / abs(a[k]) for k in a if k in b]
        out["same_steps"] = sorted(a) == sorted(b)
        out["loss_curve_max_rel_diff"] = max(rel) if rel else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=12_800, help="dSprites training images (one epoch)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--cpu-threads", type=int, default=2)
    p.add_argument("--save")
    p.add_argument("--ddp-only", action="store_true", help="only the 2-GPU torchrun check")
    args = p.parse_args()
    torch.set_num_threads(args.cpu_threads)
    data = load_data(DataConfig(name="dsprites", train_subset=args.images, test_subset=500))
    report: dict = {"benchmark": "device_check", "device": args.device, "images": args.images,
                    "aelab": aelab.__version__, "torch": torch.__version__, "python": platform.python_version(),
                    "accelerator": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
                    "models": {}}
    if args.device.startswith("cuda") and torch.cuda.device_count() > 1:
        report["ddp"] = ddp_check(args.images)
        print("ddp", json.dumps(report["ddp"]), flush=True)
    if args.ddp_only:
        args.models = ""
    base = dict(epochs=1, batch_size=128, images=False, progress=False, checkpoint_every=40, seed=0)
    x0 = data.train.get_batch(torch.arange(128)).x
    for name in filter(None, args.models.split(",")):
        row: dict = {}
        for precision in ("fp32", "bf16"):
            cfg = TrainerConfig(**base, device=args.device, precision=precision)
            _, losses, per_second = _train(name, data, cfg)
            n = 8 if len(losses) > 16 else 1
            row[precision] = {"samples_per_second": per_second, "first_loss": losses[0],
                              "last_loss": losses[-1], "all_finite": all(abs(v) < float("inf") for v in losses),
                              "loss_fell": sum(losses[-n:]) / n < sum(losses[:n]) / n}
        cpu_cfg = TrainerConfig(**base, device="cpu", max_steps=40)
        row["cpu_samples_per_second"] = _train(name, data, cpu_cfg)[2]
        # the same weights and batch give the same loss on both devices (eval mode: no dropout/EMA updates)
        m = _build(name, data.info.shape).eval()
        torch.manual_seed(1)
        cpu_loss = m.loss(Batch(x0), step=0).per_example
        m.to(args.device)
        torch.manual_seed(1)
        dev_loss = m.loss(Batch(x0.to(args.device)), step=0).per_example.cpu()
        rel = (dev_loss - cpu_loss).abs() / cpu_loss.abs().clamp_min(1e-6)
        row["cpu_vs_device_loss_max_rel_diff"] = rel.max().item()
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainerConfig(**base, device=args.device)
            full, _, _ = _train(name, data, cfg, Path(tmp) / "a")
            _train(name, data, cfg, Path(tmp) / "b", stop_at=50)
            resumed, _, _ = _train(name, data, cfg, Path(tmp) / "b", resume=True, seed=99)
            a, b = full.model.state_dict(), resumed.model.state_dict()
            diffs = [(a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()]
            row["resume"] = {"bit_identical": all(torch.equal(a[k], b[k]) for k in a), "max_abs_diff": max(diffs)}
        report["models"][name] = row
        print(name, json.dumps(row), flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        atomic_write_text(args.save, text + "\n")


if __name__ == "__main__":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    main()

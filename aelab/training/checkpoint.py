"""Pickle-free trainer checkpoints: one safetensors file, written atomically.

``trainer_state.safetensors`` holds everything a resumed run needs (model weights, the moments of
every optimizer, keyed by its parameter group's name, the RNG state) as tensors, plus JSON
metadata (step, epoch, each optimizer's hyper-parameters).
One file means one atomic rename: a run killed at any moment leaves the previous checkpoint or
the new one, never a mixture.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from aelab.io import atomic_path, read_safetensors, tensors_sha256

STATE_NAME = "trainer_state.safetensors"


def rng_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """This process's RNG state: torch's CPU generator and, for a model on CUDA, its device's."""
    state = {"torch": torch.get_rng_state()}
    device = _cuda_device(model)
    if device is not None:  # training draws (reparameterisation noise) come from the CUDA generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(path: Path, model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                    meta: dict[str, Any], rng_states: list[dict[str, torch.Tensor]] | None = None) -> None:
    """Write model, optimizers (``{group name: optimizer}``), RNG and ``meta`` to ``path`` atomically.

    ``rng_states``: each rank's :func:`rng_state` under torchrun (rank 0's is stored as
    ``rng.torch``, rank ``r``'s as ``rng.torch.rank{r}``); default: this process's."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().contiguous()
    param_groups: dict[str, Any] = {}
    for group, optimizer in optimizers.items():
        if "." in group:
            raise ValueError(f"optimizer group names must not contain '.', got {group!r}")
        opt = optimizer.state_dict()
        param_groups[group] = opt["param_groups"]
        for pid, state in opt["state"].items():
            for k, v in state.items():
                if not torch.is_tensor(v):
                    raise TypeError(f"optimizer {group!r} state {pid}.{k} is not a tensor ({type(v).__name__})")
                tensors[f"optim.{group}.{pid}.{k}"] = v.detach().contiguous()
    for r, state in enumerate(rng_states or [rng_state(model)]):
        for kind, value in state.items():
            tensors[f"rng.{kind}" + (f".rank{r}" if r else "")] = value.cpu()
    info = {**meta, "optimizers": param_groups, "world_size": len(rng_states or [None])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"aelab": json.dumps(info), "sha256": tensors_sha256(tensors)})


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The metadata of a checkpoint (step, total_steps, world_size, ...) from its header alone,
    without reading a tensor; a damaged header is a :class:`ValueError` naming the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["aelab"])
    except Exception as e:  # safetensors raises several types for a damaged header
        raise ValueError(f"{path}: cannot read the trainer checkpoint's header "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load_checkpoint(path: Path, model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                    rank: int = 0) -> dict[str, Any]:
    """Restore model, optimizers and RNG from ``path``; returns the metadata (step, epoch, ...,
    ``world_size``: the processes that wrote it, ``rng_restored``: whether the checkpoint held
    the RNG state of ``rank``, this process's rank under torchrun)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: nothing to resume from")
    tensors, metadata = read_safetensors(path, "trainer checkpoint")
    try:
        meta = json.loads(metadata["aelab"])
        missing = sorted({"step", "optimizers"} - set(meta)) + ([] if "rng.torch" in tensors else ["rng.torch"])
    except (KeyError, TypeError, json.JSONDecodeError):
        missing = ["its aelab metadata"]
    if missing:
        raise ValueError(f"{path}: not a complete aelab trainer checkpoint (missing {', '.join(missing)})")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    saved = meta.pop("optimizers")
    if set(saved) != set(optimizers):
        raise ValueError(f"{path}: the checkpoint holds optimizers {sorted(saved)}, the model has {sorted(optimizers)}")
    states: dict[str, dict[int, dict[str, torch.Tensor]]] = {g: {} for g in saved}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, group, pid, name = k.split(".", 3)
            states[group].setdefault(int(pid), {})[name] = v
    for group, optimizer in optimizers.items():
        optimizer.load_state_dict({"state": states[group], "param_groups": saved[group]})
        _state_in_weight_layout(optimizer)
    suffix = f".rank{rank}" if rank else ""
    meta.setdefault("world_size", 1)
    meta["rng_restored"] = f"rng.torch{suffix}" in tensors
    if meta["rng_restored"]:
        torch.set_rng_state(tensors[f"rng.torch{suffix}"])
        device = _cuda_device(model)
        if device is not None and f"rng.cuda{suffix}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"], device)
    return meta


def _state_in_weight_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each weight's optimizer state the weight's memory layout: the checkpoint stores it
    contiguous, and a channels-last weight's moments (``trainer.channels_last``) must be
    channels-last again, as in the run that was not interrupted."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_strided(p.shape, p.stride(), dtype=v.dtype, device=v.device).copy_(v)


def _cuda_device(model: nn.Module) -> torch.device | None:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None and p.device.type == "cuda" else None

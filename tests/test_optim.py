"""aelab.training.optim: the lean Adam/AdamW step against torch's fused Adam/AdamW, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aelab.compat import public_torch
from aelab.training import optim
from aelab.training.trainer import OPTIMIZERS

needs_lean = pytest.mark.skipif(not optim.LEAN_AVAILABLE,
                                reason="lean step off: unchecked PyTorch or private API missing")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Linear(3, 2, bias=False))


def _loss(net: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 6, generator=g)
    return (net(x) ** 2).mean()


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, frozen: str | None = None) -> list[float]:
    losses = []
    for step in range(steps):
        for group in opt.param_groups:  # a changing learning rate, as the trainer's schedules make
            group["lr"] = 1e-2 * (1 + step % 3)
        opt.zero_grad(set_to_none=True)
        loss = _loss(net, step)
        loss.backward()
        if frozen is not None:  # a parameter without a gradient is skipped, as in torch
            net.get_parameter(frozen).grad = None
        opt.step()
        losses.append(loss.item())
    return losses


def _same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, t in sa["state"][k].items():
            assert torch.equal(t, sb["state"][k][name]), (k, name)


@pytest.mark.parametrize("kind,kwargs", [
    ("Adam", {}),
    ("Adam", {"weight_decay": 0.1, "amsgrad": True}),
    ("Adam", {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("AdamW", {"weight_decay": 0.05}),
    ("AdamW", {"amsgrad": True}),
])
def test_bitwise_equal_to_torch_fused(kind: str, kwargs: dict) -> None:
    ref_net, net = _net(), _net()
    ref = getattr(torch.optim, kind)(ref_net.parameters(), fused=True, **kwargs)
    ours = getattr(optim, kind)(net.parameters(), fused=True, **kwargs)
    assert _train(ref_net, ref, 7, frozen="2.weight") == _train(net, ours, 7, frozen="2.weight")
    for p, q in zip(ref_net.parameters(), net.parameters()):
        assert torch.equal(p, q)
    _same_state(ref, ours)


@needs_lean
def test_lean_path_is_taken_after_the_first_step(monkeypatch) -> None:
    net = _net()
    opt = optim.Adam(net.parameters(), fused=True)
    assert optim._lean_groups(opt) is not None  # no state, no grads: nothing for the kernel yet
    _train(net, opt, 1)  # the first step creates the state through torch's own step
    calls = []
    real = optim._FUSED[False]
    monkeypatch.setitem(optim._FUSED, False, lambda *a, **k: (calls.append(len(a[0])), real(*a, **k)))
    _train(net, opt, 2)
    assert calls == [5, 5]  # one kernel call per step for all five parameters


def test_full_step_when_hooks_closure_or_unfused() -> None:
    # each of these must go through torch's step and still give torch's result
    net, ref_net = _net(), _net()
    opt = optim.Adam(net.parameters(), fused=True)
    ref = torch.optim.Adam(ref_net.parameters(), fused=True)
    _train(net, opt, 2)
    _train(ref_net, ref, 2)
    seen = []
    handle = opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    assert optim._lean_groups(opt) is None
    opt.zero_grad()
    _loss(net, 5).backward()
    opt.step()
    handle.remove()
    ref.zero_grad()
    _loss(ref_net, 5).backward()
    ref.step()
    assert seen == ["pre"]

    def closure(model, o):
        o.zero_grad()
        loss = _loss(model, 6)
        loss.backward()
        return loss

    assert opt.step(lambda: closure(net, opt)).item() == ref.step(lambda: closure(ref_net, ref)).item()
    for p, q in zip(ref_net.parameters(), net.parameters()):
        assert torch.equal(p, q)

    unfused_net = _net()
    unfused = optim.Adam(unfused_net.parameters(), fused=False)
    _train(unfused_net, unfused, 2)
    assert optim._lean_groups(unfused) is None


def test_state_dict_moves_between_torch_and_aelab() -> None:
    net = _net()
    ref = torch.optim.Adam(net.parameters(), fused=True)
    _train(net, ref, 3)
    net2 = copy.deepcopy(net)
    ours = optim.Adam(net2.parameters(), fused=True)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # state_dict() shares its tensors
    _train(net, ref, 3)
    _train(net2, ours, 3)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    _same_state(ref, ours)


def test_zero_grad_and_profiler_names() -> None:
    net = _net()
    opt = optim.Adam(net.parameters(), fused=True)
    _train(net, opt, 2)
    _loss(net, 0).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    # under the profiler the step goes through torch's path and keeps its named range
    _loss(net, 0).backward()
    with torch.profiler.profile() as prof:
        opt.step()
    assert any(e.name == "Optimizer.step#Adam.step" for e in prof.events())


def test_trainer_uses_the_lean_optimizers() -> None:
    assert {"adam": optim.Adam, "adamw": optim.AdamW} == OPTIMIZERS
    assert issubclass(optim.Adam, torch.optim.Adam) and issubclass(optim.AdamW, torch.optim.AdamW)


def _no_kernel(*args, **kwargs):
    raise AssertionError("the private fused kernel ran under public_torch()")


@pytest.mark.parametrize("kind,kwargs", [("Adam", {"amsgrad": True, "weight_decay": 0.1}),
                                         ("AdamW", {"weight_decay": 0.05})])
def test_forced_public_step_is_bitwise_the_lean_step(kind: str, kwargs: dict, monkeypatch) -> None:
    """Under public_torch() every step is torch's own (no private kernel call), with the same bits."""
    fast_net, public_net, ref_net = _net(), _net(), _net()
    fast = getattr(optim, kind)(fast_net.parameters(), fused=True, **kwargs)
    public = getattr(optim, kind)(public_net.parameters(), fused=True, **kwargs)
    ref = getattr(torch.optim, kind)(ref_net.parameters(), fused=True, **kwargs)
    fast_losses = _train(fast_net, fast, 7, frozen="2.weight")
    with monkeypatch.context() as m, public_torch():
        m.setitem(optim._FUSED, False, _no_kernel)
        m.setitem(optim._FUSED, True, _no_kernel)
        assert optim._lean_groups(public) is None
        public_losses = _train(public_net, public, 7, frozen="2.weight")
    assert public_losses == fast_losses == _train(ref_net, ref, 7, frozen="2.weight")
    for p, q, r in zip(fast_net.parameters(), public_net.parameters(), ref_net.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)
    _same_state(fast, public)


def test_switching_paths_mid_run_changes_nothing() -> None:
    """Fast, then public, then fast again: the same bits as the fast path throughout (one state format)."""
    net, mixed_net = _net(), _net()
    opt, mixed = optim.Adam(net.parameters(), fused=True), optim.Adam(mixed_net.parameters(), fused=True)
    for _ in range(3):  # _train restarts its batches and learning rates at step 0
        _train(net, opt, 3)
    _train(mixed_net, mixed, 3)
    with public_torch():
        _train(mixed_net, mixed, 3)
    _train(mixed_net, mixed, 3)
    for p, q in zip(net.parameters(), mixed_net.parameters()):
        assert torch.equal(p, q)
    _same_state(opt, mixed)


def test_public_step_matches_unfused_torch_adam_within_tolerance() -> None:
    """The forced-public fused step and torch's unfused (foreach) Adam agree to float32 rounding."""
    net, ref_net = _net(), _net()
    opt = optim.Adam(net.parameters(), fused=True)
    ref = torch.optim.Adam(ref_net.parameters(), foreach=True)
    with public_torch():
        _train(net, opt, 7)
    _train(ref_net, ref, 7)
    for p, q in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

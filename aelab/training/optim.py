"""Adam and AdamW with a lean step: PyTorch's own fused kernel, without the per-step Python around it.

``torch.optim.Adam(fused=True)`` spends most of a small model's optimizer time outside its
kernel: a profiler range and hook dispatch around ``step`` and ``zero_grad``, per-step
re-collection of the parameter, gradient and state lists, and their grouping by device and
dtype. For the 784-512-16 MLP VAE on 2 CPU cores, swapping torch's Adam for this one takes
0.09-0.11 ms off a ~2.4 ms training step (medians of interleaved runs in one process).
:class:`Adam` and :class:`AdamW` are subclasses of torch's that call the same fused kernels
(``torch._fused_adam_`` / ``torch._fused_adamw_``) with the same arguments, so parameters and
state are bitwise those of ``torch.optim.Adam(fused=True)`` (tested), and ``state_dict`` /
``load_state_dict`` are torch's (checkpoints move freely between the two).

The lean path runs when it can give exactly torch's result: fused groups with number (not
tensor) hyperparameters, no closure, no step hooks (global or per optimizer), no gradient scaler
attached (``grad_scale`` / ``found_inf``), no profiler running, every parameter with a gradient
already holding its state, and each group's tensors on one device with one dtype. Otherwise,
and always on the first step (which creates the state), ``step`` is torch's own, with its hooks
and profiler range.

The lean path calls PyTorch's private functions, so it exists only on a checked PyTorch with every
one of them present (:mod:`aelab.compat`: ``CHECKED_TORCH`` and a probe of each function); elsewhere
:class:`Adam` and :class:`AdamW` are torch's classes unchanged (plain subclasses). ``AELAB_TORCH_PRIVATE=0``
or :func:`aelab.compat.public_torch` sends every step through torch's own ``step`` at run time.
"""

from __future__ import annotations

from typing import Any

import torch

from aelab.compat import private_attr, private_torch_enabled

# the private functions and objects the lean path uses; None where this torch lacks one or is unchecked
_FUSED = {False: private_attr("torch._fused_adam_"), True: private_attr("torch._fused_adamw_")}
_foreach_add_ = private_attr("torch._foreach_add_")
_profiler_enabled = private_attr("torch._C._autograd._profiler_enabled")
_global_optimizer_pre_hooks = private_attr("torch.optim.optimizer._global_optimizer_pre_hooks")
_global_optimizer_post_hooks = private_attr("torch.optim.optimizer._global_optimizer_post_hooks")
_profile_hook_step = private_attr("torch.optim.Optimizer.profile_hook_step")
# whether the lean step is defined at all (each group still needs its own kernel, see _lean_groups)
LEAN_AVAILABLE = None not in (_foreach_add_, _profiler_enabled, _global_optimizer_pre_hooks,
                              _global_optimizer_post_hooks, _profile_hook_step) and any(
    f is not None for f in _FUSED.values())


def _lean_groups(opt: torch.optim.Adam) -> list[tuple[dict[str, Any], list[list[torch.Tensor]]]] | None:
    """Per group: (group, [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps]), or
    ``None`` where torch's full step is needed (see the module doc)."""
    if not LEAN_AVAILABLE or not private_torch_enabled():  # public path: torch's own step
        return None
    if (opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks or getattr(opt, "grad_scale", None) is not None
            or getattr(opt, "found_inf", None) is not None or _profiler_enabled()):
        return None
    out = []
    for group in opt.param_groups:
        if (not group["fused"] or group["differentiable"] or group["capturable"]
                or _FUSED[bool(group["decoupled_weight_decay"])] is None
                or any(isinstance(v, torch.Tensor) for v in (group["lr"], group["eps"], group["weight_decay"],
                                                             *group["betas"]))):
            return None
        lists: list[list[torch.Tensor]] = [[], [], [], [], [], []]
        params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = lists
        amsgrad = group["amsgrad"]
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            state = opt.state.get(p)
            if not state or g.is_sparse or p.is_complex():
                return None
            params.append(p)
            grads.append(g)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if amsgrad:
                max_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        if params:
            device, dtype = params[0].device, params[0].dtype
            if any(t.device != device or t.dtype != dtype for t in params[1:]) or any(
                    g.device != device or g.dtype != dtype for g in grads):
                return None
        out.append((group, lists))
    return out


# torch's Adam.step with the hooks and profiler range every optimizer step has (torch adds them to
# a class's step when its first instance is made; wrap it here unless that already happened)
_FULL_STEP = (torch.optim.Adam.step if getattr(torch.optim.Adam.step, "hooked", False) or not LEAN_AVAILABLE
              else _profile_hook_step(torch.optim.Adam.step))


class _LeanStep:
    """Mixin for torch's Adam family: the lean ``step`` and ``zero_grad`` (see the module doc)."""

    def step(self, closure=None):  # noqa: D102 - torch's semantics
        groups = None if closure is not None else _lean_groups(self)
        if groups is None:
            return _FULL_STEP(self, closure)
        with torch.no_grad():
            for group, (params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps) in groups:
                if not params:
                    continue
                beta1, beta2 = group["betas"]
                _foreach_add_(steps, 1)
                _FUSED[bool(group["decoupled_weight_decay"])](
                    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps, amsgrad=group["amsgrad"],
                    lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=group["maximize"], grad_scale=None, found_inf=None)
        return None

    step.hooked = True  # keep torch from wrapping it in the profiler/hook wrapper (it delegates itself)

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102 - torch's semantics
        if not set_to_none or not private_torch_enabled() or _profiler_enabled():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


# on an unchecked torch, or one without the private functions: torch's classes, unchanged
_LEAN: tuple[type, ...] = (_LeanStep,) if LEAN_AVAILABLE else ()


class Adam(*_LEAN, torch.optim.Adam):
    """``torch.optim.Adam`` with the lean fused step (bitwise the same updates; see the module doc).

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = Adam([w], lr=0.1, fused=True)
        >>> for _ in range(2):
        ...     opt.zero_grad(); (w * w).sum().backward(); opt.step()
        >>> [round(v, 4) for v in w.tolist()]
        [0.8004, 0.8004, 0.8004]
    """


class AdamW(*_LEAN, torch.optim.AdamW):
    """``torch.optim.AdamW`` with the lean fused step (bitwise the same updates; see the module doc)."""

"""Linear-probe accuracy: multinomial logistic regression on frozen codes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from aelab.data.base import DataSplits, ImageDataset
from aelab.metrics.reconstruction import encode_dataset
from aelab.registry import METRICS


def linear_probe(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor,
                 l2: float = 1e-4, max_iter: int = 200) -> dict[str, float]:
    """Fit softmax regression on standardised codes with L-BFGS; report train and test accuracy.

    Args:
        z_train, z_test: codes ``(N, D)``.
        y_train, y_test: integer labels ``(N,)``.
        l2: weight-decay strength on the weights (not the bias), per example.
        max_iter: L-BFGS iterations (full batch, strong-Wolfe line search).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> z = torch.randn(200, 3, generator=g) + 3 * y[:, None]
        >>> linear_probe(z, y, z, y)["probe_test_acc"] > 0.95
        True
    """
    z_train, z_test = z_train.double(), z_test.double()
    mu, sd = z_train.mean(0), z_train.std(0).clamp_min(1e-8)
    a, b = (z_train - mu) / sd, (z_test - mu) / sd
    y_train, y_test = y_train.long(), y_test.long()
    k = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(a.shape[1], k, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + c, y_train) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        train_acc = ((a @ w + c).argmax(1) == y_train).double().mean().item()
        test_acc = ((b @ w + c).argmax(1) == y_test).double().mean().item()
    return {"probe_train_acc": train_acc, "probe_test_acc": test_acc}


def linear_probe_metric(model: nn.Module, train: ImageDataset, test: ImageDataset, limit: int | None = None,
                        batch_size: int = 1000) -> dict[str, float]:
    """Linear-probe accuracy of a model's codes (class labels required), fitted on ``train``."""
    z_tr, y_tr = encode_dataset(model, train, batch_size=batch_size, limit=limit)
    z_te, y_te = encode_dataset(model, test, batch_size=batch_size)
    if y_tr.dim() != 1:
        raise ValueError("linear_probe needs class labels; this data set has factors instead")
    return linear_probe(z_tr, y_tr, z_te, y_te)


@METRICS.register("linear_probe")
def linear_probe_on_splits(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Linear-probe accuracy of a model's codes, fitted on the train split and scored on the test split.

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`linear_probe_metric`.
    """
    return linear_probe_metric(model, splits.train, splits.test, **options)

"""Figures of a trained model: latent traversals, the 2-D manifold and code scatter, KL per
dimension, training curves.

Two layers, as for metrics: functions that compute tensors from a model (``latent_traversal``,
``decoded_manifold``, ``prior_quantiles``), and ``plot_*`` functions that draw tensors or a
``metrics.jsonl`` into a PNG of a fixed pixel size (matplotlib's object API on the Agg canvas: no
pyplot state, no display needed). :func:`write_run_figures` writes them all for a model and a test
split. Files are written atomically. matplotlib is imported only when a figure is drawn; without
it, drawing raises :class:`aelab.compat.MissingDependencyError` (image grids need only pillow).

References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (the learned 2-D manifold).
    Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
    Framework", ICLR 2017 (latent traversals).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from aelab.compat import MissingDependencyError
from aelab.data.base import ImageDataset
from aelab.io import atomic_path
from aelab.likelihoods import mean_image
from aelab.metrics.latent import LatentStatistics, collect_latent_statistics, posterior_mean
from aelab.nn.modes import eval_mode, evaluation
from aelab.protocol import Model, require
from aelab.registry import EPOCH_FIGURES
from aelab.report.images import make_grid, reconstruction_grid, save_image_grid
from aelab.training.trainer import read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "decoded_manifold",
    "epoch_images",
    "latent_traversal",
    "plot_image_rows",
    "plot_kl_per_dimension",
    "plot_latent_scatter",
    "plot_training_curves",
    "plot_traversal",
    "prior_quantiles",
    "top_dimensions",
    "traversal_values",
    "write_run_figures",
]

DPI = 100


# --- computing pictures from a model ------------------------------------------------------------
def _normal_cdf(t: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def prior_quantiles(model: nn.Module, levels: Tensor, n_samples: int = 20000, seed: int = 0) -> Tensor:
    """Quantiles of each marginal of ``p(z)`` at ``levels`` in (0, 1), from prior samples: ``(L, D)``.

    Estimated by sampling, so any prior works (for N(0, I) the level ``Phi(t)`` gives ``~t``).
    """
    with evaluation(model, seed):
        z = model.prior().sample((n_samples,)).flatten(1).double()
    return torch.quantile(z, levels.double().to(z.device), dim=0).to(torch.float32)


@torch.no_grad()
def latent_traversal(model: nn.Module, x: Tensor, dims: Sequence[int], values: Tensor) -> Tensor:
    """Decode the code of ``x`` with one dimension at a time set to each of ``values``.

    Args:
        model: an autoencoder (evaluation mode is the caller's choice).
        x: one image ``(1, C, H, W)``; its posterior mean is the base code.
        dims: the latent dimensions to traverse, one row each.
        values: ``(K,)`` values used for every dimension, or ``(K, D)`` per dimension (e.g. from
            :func:`prior_quantiles`).

    Returns:
        Mean images ``(len(dims), K, C, H, W)`` in [0, 1].
    """
    base = posterior_mean(model.encode(x[:1], encoding=False))  # (1, D)
    k, d = values.shape[0], base.shape[-1]
    values = values.to(base).reshape(k, -1).expand(k, d)
    z = base.expand(len(dims), k, d).clone()
    for row, j in enumerate(dims):
        z[row, :, j] = values[:, j]
    images = mean_image(model.decode(z.reshape(len(dims) * k, d)))
    return images.reshape(len(dims), k, *images.shape[1:])


@torch.no_grad()
def decoded_manifold(model: nn.Module, n: int = 20, levels: tuple[float, float] = (0.05, 0.95),
                     seed: int = 0) -> tuple[Tensor, Tensor]:
    """The decoded grid of a 2-D latent space over the prior's marginal quantiles.

    Args:
        model: an autoencoder with a prior over 2-D codes.
        n: grid points per axis.
        levels: the lowest and highest quantile levels (Kingma & Welling use 0.05 and 0.95).
        seed: seeds the prior samples behind the quantiles.

    Returns:
        Images ``(n, n, C, H, W)`` with row ``i`` at the ``i``-th *largest* ``z_1`` (so the top row
        is up on the plot) and column ``j`` at the ``j``-th smallest ``z_0``; and the grid values
        ``(n, 2)`` in increasing order.
    """
    q = prior_quantiles(model, torch.linspace(levels[0], levels[1], n), seed=seed)
    if q.shape[1] != 2:
        raise ValueError(f"the manifold needs a 2-D latent space, got D = {q.shape[1]}")
    z0, z1 = q[:, 0], q[:, 1].flip(0)
    z = torch.stack(torch.meshgrid(z1, z0, indexing="ij")[::-1], dim=-1).reshape(n * n, 2)
    with eval_mode(model):
        images = mean_image(model.decode(z.to(next(model.parameters()).device)))
    return images.reshape(n, n, *images.shape[1:]), q


def traversal_values(model: nn.Module, steps: int = 11, span: float = 3.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sweep values for traversals: ``t`` from ``-span`` to ``span`` standard deviations ``(K,)``, and
    the prior's marginal quantiles at levels ``Phi(t)``, ``(K, D)`` (``= t`` for N(0, I))."""
    t = torch.linspace(-span, span, steps).round(decimals=6) + 0.0  # no "-0.0" labels
    return t, prior_quantiles(model, _normal_cdf(t), seed=seed)


def top_dimensions(stats: LatentStatistics, n: int) -> list[int]:
    """The ``n`` latent dimensions with the largest mean KL (or, without a per-dimension KL, the
    largest variance of the posterior mean), largest first."""
    score = stats.kl.mean(0) if stats.kl.dim() == 2 else stats.codes.var(0)
    return score.argsort(descending=True)[: min(n, score.shape[0])].tolist()


# --- drawing --------------------------------------------------------------------------------------
MATPLOTLIB_MISSING = "aelab: figures need matplotlib: pip install 'matplotlib>=3.7'"


def _matplotlib(module: str = "matplotlib") -> Any:
    """The module ``module`` of matplotlib, or a one-line :class:`MissingDependencyError` without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(MATPLOTLIB_MISSING) from e


def _figure(width_px: int, height_px: int) -> Figure:
    figure = _matplotlib("matplotlib.figure").Figure
    return figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG of exactly its pixel size (no tight bounding box), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def plot_image_rows(images: Tensor, path: str | Path, title: str, row_labels: Sequence[str] | None = None,
                    col_labels: Sequence[str] | None = None, xlabel: str | None = None,
                    ylabel: str | None = None, scale: int = 2) -> Path:
    """Draw ``(R, K, C, H, W)`` images as an R x K grid with labelled rows and columns.

    The figure is ``scale`` screen pixels per image pixel plus fixed margins for the labels.
    """
    r, k, c, h, w = images.shape
    pad = 2
    grid = make_grid(images.reshape(r * k, c, h, w), nrow=k, pad=pad)  # (H', W', C) uint8
    gh, gw = grid.shape[:2]
    left = 40
    if row_labels is not None:  # room for the longest label as drawn (mathtext markup takes none)
        drawn = max((len(re.sub(r"[${}_\\]", "", str(label))) for label in row_labels), default=0)
        left = max(150, 8 * drawn + 30)
    top, bottom = 50, 60 + (25 if xlabel else 0)
    width, height = gw * scale + left + 30, gh * scale + top + bottom
    fig = _figure(width, height)
    fig.set_layout_engine("none")  # the grid at its pixel size, the labels in the margins reserved for them
    ax = fig.add_axes((left / width, bottom / height, gw * scale / width, gh * scale / height))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=255,
              interpolation="nearest")
    centers = lambda n, size: [pad + i * (size + pad) + (size - 1) / 2 for i in range(n)]  # noqa: E731
    ax.set_xticks(centers(k, w) if col_labels is not None else [])
    if col_labels is not None:
        ax.set_xticklabels(col_labels, fontsize=9)
    ax.set_yticks(centers(r, h) if row_labels is not None else [])
    if row_labels is not None:
        ax.set_yticklabels(row_labels, fontsize=10)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=10)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=10)
    fig.suptitle(title, fontsize=12, y=1 - 10 / height, va="top")
    return _save(fig, path)


def plot_traversal(images: Tensor, dims: Sequence[int], t: Tensor, path: str | Path, title: str,
                   kl: Tensor | None = None) -> Path:
    """Draw :func:`latent_traversal` output: one row per dimension (labelled with its KL when
    given), one column per sweep value ``t`` (see :func:`traversal_values`)."""
    labels = [f"$z_{{{j}}}$  KL {kl[j]:.2f}" if kl is not None else f"$z_{{{j}}}$" for j in dims]
    cols = [f"{v:+.1f}" if v else "0" for v in t.tolist()]
    return plot_image_rows(images, path, title=title, row_labels=labels, col_labels=cols,
                           xlabel="$t$: $z_j$ set to the prior's quantile at $\\Phi(t)$  (= $t$ for N(0, 1)); "
                                  "other dimensions at the example's posterior mean")


def plot_latent_scatter(codes: Tensor, labels: Tensor | None, path: str | Path, title: str,
                        class_names: Sequence[str] | None = None, max_points: int = 5000, seed: int = 0) -> Path:
    """Scatter 2-D codes coloured by class, with a legend of class names.

    Args:
        codes: ``(N, 2)`` posterior means.
        labels: ``(N,)`` integer classes (``-1`` or ``None``: unlabelled, one colour).
        path: the PNG to write (900 x 700 pixels).
        title: the figure title.
        class_names: legend entries by class index (default ``class k``).
        max_points: draw a seeded random subset of at most this many points.
        seed: seeds that subset.
    """
    if codes.dim() != 2 or codes.shape[1] != 2:
        raise ValueError(f"a scatter needs 2-D codes (N, 2), got {tuple(codes.shape)}")
    codes = codes.detach().cpu()
    if codes.shape[0] > max_points:
        keep = torch.randperm(codes.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        codes = codes[keep]
        labels = labels[keep] if labels is not None else None
    fig = _figure(900, 700)
    ax = fig.add_subplot()
    pts = codes.numpy()
    labelled = labels is not None and labels.dim() == 1 and bool((labels >= 0).any())
    if labelled:
        colormaps = _matplotlib().colormaps
        y = labels.cpu().numpy()
        classes = np.unique(y[y >= 0])
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, cls in enumerate(classes):
            sel = y == cls
            name = class_names[cls] if class_names is not None and cls < len(class_names) else f"class {cls}"
            ax.scatter(pts[sel, 0], pts[sel, 1], s=4, alpha=0.6, color=cmap(i % cmap.N), label=name,
                       edgecolors="none", rasterized=True)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=4, frameon=False, fontsize=10)
    else:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5, color="tab:blue", edgecolors="none")
    ax.set_xlabel("$z_0$ (posterior mean)")
    ax.set_ylabel("$z_1$ (posterior mean)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=12)
    return _save(fig, path)


def plot_kl_per_dimension(kl: Sequence[float] | Tensor, path: str | Path, title: str = "KL per latent dimension",
                          active: Sequence[bool] | Tensor | None = None) -> Path:
    """Bar chart of the mean KL to the prior of each latent dimension (nats).

    Args:
        kl: ``(D,)`` mean KL per dimension.
        path: the PNG to write (height 450 px; width grows with D, 700 to 1600 px).
        title: the figure title (the total is appended).
        active: ``(D,)`` active-unit flags; active and inactive bars get different colours.
    """
    kl = torch.as_tensor(kl, dtype=torch.float64).cpu()
    d = kl.shape[0]
    fig = _figure(int(min(1600, max(700, 200 + 22 * d))), 450)
    ax = fig.add_subplot()
    xs = np.arange(d)
    if active is not None:
        act = torch.as_tensor(active, dtype=torch.bool).cpu().numpy()
        ax.bar(xs[act], kl.numpy()[act], color="tab:blue", label=f"active units ({int(act.sum())})")
        if (~act).any():
            ax.bar(xs[~act], kl.numpy()[~act], color="tab:gray", label=f"inactive units ({int((~act).sum())})")
        ax.legend(frameon=False, title=r"$\mathrm{Var}_x\,\mathbb{E}_q[z_j] > 0.01$", title_fontsize=9)
    else:
        ax.bar(xs, kl.numpy(), color="tab:blue")
    step = max(1, math.ceil(d / 40))
    ax.set_xticks(xs[::step])
    ax.set_xlim(-0.6, d - 0.4)
    ax.set_xlabel("latent dimension $j$")
    ax.set_ylabel(r"$\mathbb{E}_x\,\mathrm{KL}(q(z_j|x)\,\|\,p(z_j))$  (nats)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}: total {kl.sum().item():.2f} nats", fontsize=12)
    return _save(fig, path)


def _smooth(values: np.ndarray) -> np.ndarray:
    """Centred moving average over about an eighth of the points (no lag, unlike an EMA)."""
    w = max(1, len(values) // 8) | 1  # odd window
    kernel = np.ones(w)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def plot_training_curves(metrics: str | Path, path: str | Path, title: str = "Training curves") -> Path:
    """Train loss and test metrics against the step, from a run's ``metrics.jsonl``.

    Panels (each only where the log has the data): the objective (train loss, raw and smoothed,
    and the train reconstruction term, smoothed; test loss, negative ELBO and NLL: IWAE, or exact
    for a language model; a sequence model's -ELBO per frame), the latent diagnostics (train KL,
    smoothed; test KL, mutual information;
    active units on a second axis), the test perplexity (text runs) and the test reconstruction
    error. 600 px high, 520 px per panel.
    """
    records = read_metrics(Path(metrics))
    train = [r for r in records if r.get("split") == "train"]
    test = [r for r in records if r.get("split") == "test"]

    def series(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)

    iwae = sorted({k for r in test for k in r if k.startswith("nll_iwae_k")})
    panels = ["objective"]
    if any("kl_total" in r for r in test) or any("kl" in r for r in train):
        panels.append("latent")
    if any("ppl" in r for r in test):
        panels.append("ppl")
    if any("mse" in r for r in test):
        panels.append("mse")
    fig = _figure(520 * len(panels), 600)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        handles = []
        if panel == "objective":
            s, v = series(train, "loss")
            if len(s):
                ax.plot(s, v, color="tab:blue", alpha=0.25, lw=1)
                handles += ax.plot(s, _smooth(v), color="tab:blue", lw=1.5, label="train loss (batches, smoothed)")
            s, v = series(train, "recon")
            if len(s):
                handles += ax.plot(s, _smooth(v), "--", color="tab:cyan", lw=1.5,
                                   label="train reconstruction term (smoothed)")
            lines = [("loss", "tab:orange", "test loss"), ("neg_elbo", "tab:green", "test −ELBO (random subset)")]
            lines += [(k, "tab:red", f"test NLL, IWAE k={k.removeprefix('nll_iwae_k')} (same subset)") for k in iwae]
            k_text = next((r["iwae_k"] for r in test if "iwae_k" in r), None)  # text runs: "nll", its k apart
            lines.append(("nll", "tab:red", f"test NLL, IWAE k={k_text:g} (same subset)" if k_text is not None
                          else "test NLL (exact)"))
            for key, color, label in lines:
                s, v = series(test, key)
                if len(s):
                    handles += ax.plot(s, v, "o-", color=color, ms=4, label=label)
            s, v = series(test, "elbo_per_frame")  # sequence models: the bound per frame, as a loss
            if len(s):
                handles += ax.plot(s, -v, "o-", color="tab:green", ms=4, label="test −ELBO per frame (all pairs)")
            ax.set_ylabel("nats per example (sequences: per frame)" if len(s) else "nats per example")
            ax.set_title("objective")
        elif panel == "latent":
            s, v = series(train, "kl")
            if len(s):
                ax.plot(s, v, color="tab:pink", alpha=0.25, lw=1)
                handles += ax.plot(s, _smooth(v), color="tab:pink", lw=1.5, label="train KL (batches, smoothed)")
            for key, color, label in [("kl_total", "tab:purple", "KL(q(z|x) ‖ p(z))"),
                                      ("kl", "tab:purple", "test KL term"),
                                      ("mutual_info", "tab:brown", "mutual information I(x; z)")]:
                s, v = series(test, key)
                if len(s):
                    handles += ax.plot(s, v, "o-", color=color, ms=4, label=label)
            ax.set_ylabel("nats per example (test)")
            ax.set_ylim(bottom=0)
            s, v = series(test, "active_units")
            if len(s):
                twin = ax.twinx()
                handles += twin.plot(s, v, "s--", color="tab:gray", ms=4, label="active units (right axis)")
                twin.set_ylabel("active units")
                twin.set_ylim(0, max(1.0, float(v.max())) * 1.1)
                twin.yaxis.get_major_locator().set_params(integer=True)
            ax.set_title("latent diagnostics")
        elif panel == "ppl":
            for key, color, label in [("ppl", "tab:red", "test perplexity (from the NLL)"),
                                      ("ppl_elbo", "tab:green", "test perplexity from −ELBO")]:
                s, v = series(test, key)
                if len(s):
                    handles += ax.plot(s, v, "o-", color=color, ms=4, label=label)
            ax.set_ylabel("perplexity per token (<eos> counted)")
            ax.set_title("perplexity")
        else:
            s, v = series(test, "mse")
            handles += ax.plot(s, v, "o-", color="tab:olive", ms=4, label="test MSE")
            ax.set_ylabel("mean squared error per pixel")
            ax.set_title("reconstruction")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if handles:  # below the axes: never over the curves
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


# --- everything for one model --------------------------------------------------------------------
def write_run_figures(model: nn.Module, test: ImageDataset, out_dir: str | Path,
                      class_names: Sequence[str] | None = None, metrics: str | Path | None = None,
                      suffix: str = "", caption: str = "", n_dims: int = 8, steps: int = 11,
                      limit: int | None = 5000, samples: bool = True, kl_chart: bool = True,
                      seed: int = 0) -> list[Path]:
    """Write all figures of a model with a prior into ``out_dir``; returns the paths written.

    Always: latent traversals of the ``n_dims`` dimensions with the largest KL (one test example,
    each row one dimension swept over the prior's quantiles at -3..3 standard deviations, the others
    fixed at the example's posterior mean). Optionally prior samples and the KL bar chart. For 2-D
    latent spaces also the decoded manifold and the scatter of test codes coloured by class. With
    ``metrics`` (a ``metrics.jsonl``) also the training curves.

    Args:
        model: an autoencoder with a prior.
        test: the split whose codes are shown (a seeded random subset of ``limit`` examples).
        out_dir: created if missing.
        class_names: legend entries of the scatter.
        metrics: a run's ``metrics.jsonl``, for the training curves.
        suffix: appended to each file stem (e.g. ``_epoch003``).
        caption: appended to each title (e.g. ``epoch 3``).
        n_dims: rows of the traversal.
        steps: columns of the traversal.
        limit: test examples used to rank dimensions and for the scatter.
        samples: also write a grid of 64 decoded prior samples.
        kl_chart: also write the KL-per-dimension bar chart.
        seed: seeds the subset, the example and the samples.
    """
    require(model, "latent_prior", what="traversals and samples")
    out = Path(out_dir)
    written: list[Path] = []
    stats = collect_latent_statistics(model, test, limit=limit, seed=seed)
    d = stats.codes.shape[1]
    dims = top_dimensions(stats, n_dims)
    t, values = traversal_values(model, steps, seed=seed)
    batch = test.get_batch(torch.randint(len(test), (1,), generator=torch.Generator().manual_seed(seed)))
    x0, y0 = batch.x, batch.y
    with evaluation(model, seed) as device:
        images = latent_traversal(model, x0.to(device), dims, values)
    per_dim = stats.kl.mean(0) if stats.kl.dim() == 2 else None
    rank = "largest KL" if per_dim is not None else "most varying posterior mean"
    what = f"the {len(dims)} of {d} dimensions with the {rank}" if len(dims) < d else f"all {d} dimensions"
    example = ""
    if class_names is not None and y0.dim() == 1 and 0 <= int(y0[0]) < len(class_names):
        example = f" of a test '{class_names[int(y0[0])]}'"
    cap = f" ({caption})" if caption else ""
    written.append(plot_traversal(images, dims, t, out / f"traversals{suffix}.png",
                                  title=f"Latent traversals{example}: {what}{cap}", kl=per_dim))
    if samples:
        with evaluation(model, seed):
            written.append(save_image_grid(model.sample(64), out / f"samples{suffix}.png", nrow=8))
    if kl_chart and per_dim is not None:
        active = stats.codes.double().var(0) > 0.01
        written.append(plot_kl_per_dimension(per_dim, out / f"kl_per_dim{suffix}.png",
                                             title=f"KL per latent dimension{cap}, {stats.codes.shape[0]} test images",
                                             active=active))
    if d == 2:
        grid, q = decoded_manifold(model, seed=seed)
        n = grid.shape[0]
        every = max(1, n // 10)
        z0 = [f"{v:.1f}" if i % every == 0 else "" for i, v in enumerate(q[:, 0].tolist())]
        z1 = [f"{v:.1f}" if i % every == 0 else "" for i, v in enumerate(q[:, 1].flip(0).tolist())]
        written.append(plot_image_rows(grid, out / f"manifold{suffix}.png",
                                       title=f"Decoded 2-D latent manifold: prior quantiles 5%–95%{cap}",
                                       row_labels=z1, col_labels=z0, xlabel="$z_0$", ylabel="$z_1$", scale=1))
        written.append(plot_latent_scatter(stats.codes, stats.labels, out / f"latent_scatter{suffix}.png",
                                           title=f"Posterior means of {stats.codes.shape[0]} random test images{cap}",
                                           class_names=class_names, seed=seed))
    if metrics is not None and Path(metrics).is_file():
        written.append(plot_training_curves(metrics, out / f"training_curves{suffix}.png",
                                            title=f"Training curves{cap}"))
    return written


@EPOCH_FIGURES.register("images")
def epoch_images(model: Model, test: ImageDataset, out_dir: str | Path, epoch: int,
                 class_names: Sequence[str] | None = None) -> None:
    """The image families' per-epoch pictures in ``out_dir``: reconstructions of a fixed spread of
    32 test images, for models that can sample 64 samples (the same prior draws every epoch), and
    for models with a continuous prior the traversals (and for 2-D codes the manifold and the code
    scatter) of :func:`write_run_figures`. Files are suffixed ``_epoch{epoch + 1:03d}``.

    The caller keeps the training RNG stream apart (the trainer runs this inside ``fork_rng``).
    """
    out = Path(out_dir)
    caps = model.capabilities
    n = min(32, len(test))
    idx = torch.linspace(0, len(test) - 1, n).long()  # the built-in splits are sorted by label
    x = test.get_batch(idx).x.to(next(model.parameters()).device)
    with eval_mode(model):
        if caps.reconstruct:
            grid = reconstruction_grid(x, model.reconstruct(x))
            save_image_grid(grid, out / f"reconstructions_epoch{epoch + 1:03d}.png", nrow=8)
        if caps.sample:
            torch.manual_seed(0)
            save_image_grid(model.sample(64), out / f"samples_epoch{epoch + 1:03d}.png", nrow=8)
        if caps.latent_prior:  # traversals etc. draw from their own seeded RNG
            write_run_figures(model, test, out, class_names=class_names, suffix=f"_epoch{epoch + 1:03d}",
                              caption=f"epoch {epoch + 1}", samples=False, kl_chart=False)

"""One self-contained HTML report of runs: ``aelab report``.

For each run its config, final and best test metrics, and the pictures ``aelab figures`` draws for
its family (:func:`aelab.report.run.write_figures`: training curves, traversals, samples, KL per
dimension, manifold, rollouts, ...), plus reconstructions of image models and, for text runs,
sampled sentences, greedy reconstructions and a homotopy between two test sentences. Across runs a
comparison table (click a header to sort). A directory holding run directories one level down is a
*group* (a sweep): its runs are summarised by :func:`summarize_group`, one table row and one curve
per setting, replicates over ``trainer.seed`` pooled.

The file needs nothing else to be viewed: pictures are inlined PNGs (``data:`` URIs), the CSS and
the few lines of JavaScript that sort the tables are inline, and a Content-Security-Policy forbids
the browser to fetch anything. Every string taken from a run (config values, paths, sentences) is
escaped.

Two layers, as for figures: :func:`collect_runs`, :func:`run_report` and :func:`summarize_group`
read runs into plain data (:class:`RunReport`, :class:`GroupSummary`); :func:`render_html` turns
them into the page; :func:`write_report` does both and writes the file atomically.

Example:
    >>> page = render_html([], [], title="empty <report>")
    >>> "<title>empty &lt;report&gt;</title>" in page, "://" in page  # escaped; no address to fetch
    (True, False)
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aelab.config import load_json
from aelab.data.base import DataSplits
from aelab.io import atomic_write_text
from aelab.nn.modes import evaluation
from aelab.protocol import CONFIG_NAME, Model
from aelab.report.figures import _figure, _save
from aelab.report.images import reconstruction_grid, save_image_grid
from aelab.report.run import write_figures
from aelab.report.text import decode_sentences, homotopy
from aelab.runs import flatten_config, load_run_with_data, load_vocabulary
from aelab.training.results import METRICS_NAME, NOT_METRICS, final_metrics, is_number, read_run_metrics
from aelab.training.sweep import SEED_FIELD, TRIALS_DIR, is_sweep_dir, mean_interval

__all__ = [
    "GroupSummary",
    "Picture",
    "RunGroup",
    "RunReport",
    "TextBlock",
    "best_metrics",
    "collect_runs",
    "final_metrics",
    "plot_setting_curves",
    "render_html",
    "run_report",
    "summarize_group",
    "write_report",
]

#: the field that tells replicates of one setting apart (pooled in a group's summary)
REPLICATE_FIELD = SEED_FIELD

#: the test metric a group's curves show: the first of these its runs log
CURVE_METRICS = ("neg_elbo", "nll", "loss", "elbo_per_frame", "mse")

#: the most config fields shown as columns of the comparison table (each run's config has all)
MAX_SETTING_COLUMNS = 12

#: pictures in the order a reader wants them, by file stem (prefix), with their captions
CAPTIONS = (
    ("training_curves", "Training curves"),
    ("reconstructions", "Reconstructions of test images (odd rows: inputs, even rows: reconstructions)"),
    ("samples", "Samples from the prior, decoded to mean images"),
    ("traversals", "Latent traversals"),
    ("kl_per_dim", "KL per latent dimension"),
    ("manifold", "Decoded 2-D latent manifold"),
    ("latent_scatter", "Posterior means of test images"),
    ("rollout", "Rollouts after a context"),
    ("rollout_jumps", "Rollouts after a context, jumping several steps at a time"),
)


# --- runs as plain data ---------------------------------------------------------------------------
@dataclass
class Picture:
    """A PNG to inline, with its caption."""

    caption: str
    png: bytes


@dataclass
class TextBlock:
    """A table of sentences (samples, reconstructions, a homotopy) with its title and column names."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass
class RunReport:
    """What the report shows of one run.

    Attributes:
        path: the run directory.
        label: its name in the report (the path as given, or ``GROUP/NAME`` inside a group).
        config: the run's ``config.json``, flattened to dotted keys (:func:`aelab.runs.flatten_config`).
        records: the records of its ``metrics.jsonl`` (empty without one).
        final: the last test evaluation's metrics, and ``train_loss``: the last logged train loss.
        best: metric -> (best value, step) over the test evaluations (:func:`best_metrics`).
        pictures: the figures of its family, in reading order.
        texts: sentences of a text run.
        notes: what was not drawn and why.
    """

    path: Path
    label: str
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, tuple[float, int]] = field(default_factory=dict)
    pictures: list[Picture] = field(default_factory=list)
    texts: list[TextBlock] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int | None:
        """The last step logged (``None`` without a metrics log)."""
        return max((r["step"] for r in self.records), default=None)


@dataclass
class RunGroup:
    """A directory whose subdirectories (one level down) are runs: a sweep, or runs kept together."""

    path: Path
    runs: list[Path]
    skipped: list[Path] = field(default_factory=list)


@dataclass
class GroupSummary:
    """A group's runs pooled by setting.

    Attributes:
        settings: the config fields whose values differ between the group's runs (other than
            :data:`REPLICATE_FIELD`).
        rows: one per setting: its values of ``settings``, the labels of its runs, and metric ->
            (mean, standard deviation, number of runs, 95% t-interval of the mean or ``None`` for
            one run) of their final metrics.
        metric: the test metric of ``curves``.
        curves: that metric against the step, one curve per setting (mean over its runs, the band
            from the lowest to the highest run where there are several).
        notes: what the summary left out and why.
    """

    settings: list[str]
    rows: list[tuple[dict[str, Any], list[str], dict[str, tuple[float, float, int]]]]
    metric: str | None = None
    curves: Picture | None = None
    notes: list[str] = field(default_factory=list)


def metric_direction(name: str) -> int:
    """``-1`` where lower is better (losses, NLL, perplexity, errors), ``+1`` where higher is
    (an ELBO, accuracy, BLEU), ``0`` where neither (KL, mutual information, active units).

    Example:
        >>> [metric_direction(k) for k in ("nll_iwae_k10", "neg_elbo", "elbo_per_frame", "recon_bleu", "kl")]
        [-1, -1, 1, 1, 0]
    """
    if name.startswith(("loss", "neg_elbo", "nll", "ppl", "mse", "recon", "bpd", "bits")) and not name.startswith(
            ("recon_token_accuracy", "recon_bleu")):
        return -1
    if name.startswith("elbo") or "accuracy" in name or "bleu" in name:
        return 1
    return 0


def best_metrics(records: Sequence[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """Over the test evaluations, the best value of each metric with a direction
    (:func:`metric_direction`) and the step it was reached at (the first, on ties).

    Example:
        >>> best_metrics([{"step": 1, "split": "test", "nll": 5.0, "kl": 1.0},
        ...               {"step": 2, "split": "test", "nll": 4.0, "kl": 2.0},
        ...               {"step": 3, "split": "test", "nll": 4.5, "kl": 3.0}])
        {'nll': (4.0, 2)}
    """
    best: dict[str, tuple[float, int]] = {}
    for r in records:
        if r.get("split") != "test":
            continue
        for k, v in r.items():
            sign = metric_direction(k)
            if k in NOT_METRICS or not sign or not is_number(v) or not math.isfinite(v):
                continue
            if k not in best or sign * v > sign * best[k][0]:
                best[k] = (float(v), int(r["step"]))
    return best


def collect_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[RunGroup]]:
    """The runs and groups of runs named by ``paths``.

    A path holding a ``config.json`` is a run; a directory whose subdirectories (one level down)
    hold runs is a group, and so is a sweep directory (``aelab sweep``: its runs are in
    ``trials/``); anything else is an error naming it. A run given twice (or also inside a
    group) is reported once. A group's subdirectories that are not runs are kept in ``skipped``.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a path that is neither a run nor a directory of runs.
    """
    runs: list[Path] = []
    groups: list[RunGroup] = []
    seen: set[Path] = set()

    def new(run: Path) -> bool:
        key = run.resolve()
        if key in seen:
            return False
        seen.add(key)
        return True

    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run directory")
        if (p / CONFIG_NAME).is_file():
            if new(p):
                runs.append(p)
            continue
        members_dir = p / TRIALS_DIR if is_sweep_dir(p) else p
        subdirs = sorted(d for d in members_dir.iterdir() if d.is_dir() and not d.name.startswith(".")) if (
            p.is_dir()) else []
        members = [d for d in subdirs if (d / CONFIG_NAME).is_file()]
        if not members:
            raise ValueError(f"{p}: not a run directory (no {CONFIG_NAME}) and no run directories in it")
        groups.append(RunGroup(p, [d for d in members if new(d)], [d for d in subdirs if d not in members]))
    return runs, groups


# --- pictures and sentences of one run --------------------------------------------------------------
def _caption(stem: str) -> tuple[int, str]:
    """The rank and caption of the :data:`CAPTIONS` entry with the longest prefix of ``stem``."""
    matches = [(len(prefix), rank, caption) for rank, (prefix, caption) in enumerate(CAPTIONS)
               if stem.startswith(prefix)]
    if not matches:
        return len(CAPTIONS), stem.replace("_", " ")
    _, rank, caption = max(matches)
    return rank, caption


def _text_blocks(run_dir: Path, model: Model, data: DataSplits, n: int = 8, seed: int = 0) -> list[TextBlock]:
    """Sentences of a text run: ``n`` prior samples (temperature 1), greedy reconstructions of 5
    test sentences, and the homotopy between two of them (text VAEs)."""
    vocab = load_vocabulary(run_dir)
    caps = model.capabilities
    blocks = []
    if caps.sample:
        with evaluation(model, seed):
            ids = model.sample(n)
        blocks.append(TextBlock(f"{n} samples (temperature 1, seed {seed})", ("sentence",),
                                [(s,) for s in decode_sentences(vocab, ids)]))
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:5]
    x = data.test.get_batch(idx).x
    if caps.reconstruct:
        with evaluation(model, seed):
            rec = model.reconstruct(x, max_len=model.config.max_len)
        blocks.append(TextBlock("Greedy reconstructions of test sentences, from the posterior mean",
                                ("input", "reconstruction"),
                                list(zip(decode_sentences(vocab, x), decode_sentences(vocab, rec)))))
    if caps.latent_prior and len(x) >= 2:
        with evaluation(model, seed):
            t, ids = homotopy(model, x[:2], steps=7)
        blocks.append(TextBlock("Homotopy between two test sentences (greedy decodings along the line between "
                                "their posterior means; Bowman et al. 2016)", ("t", "sentence"),
                                [(f"{ti:.3f}", s) for ti, s in zip(t.tolist(), decode_sentences(vocab, ids))]))
    return blocks


def _draw(run_dir: Path, out: Path, seed: int = 0) -> tuple[list[Picture], list[TextBlock], list[str]]:
    """The pictures (read back as PNG bytes from ``out``), sentences and notes of one run."""
    _, model, data = load_run_with_data(run_dir)
    written, notes = write_figures(run_dir, model, data, out)
    caps = model.capabilities
    if caps.images and caps.reconstruct and not any(p.stem == "reconstructions" for p in written):
        idx = torch.linspace(0, len(data.test) - 1, min(32, len(data.test))).long()  # a spread of test images
        with evaluation(model, seed) as device:
            x = data.test.get_batch(idx).x.to(device)
            grid = reconstruction_grid(x, model.reconstruct(x))
        written.append(save_image_grid(grid, out / "reconstructions.png", nrow=8))
    texts = _text_blocks(run_dir, model, data, seed=seed) if caps.text else []
    ranked = sorted(written, key=lambda p: (_caption(p.stem)[0], p.stem))
    return [Picture(_caption(p.stem)[1], p.read_bytes()) for p in ranked], texts, notes


def run_report(run_dir: str | Path, label: str | None = None, figures: bool = True,
               scratch: str | Path | None = None) -> RunReport:
    """Read one run: config, metrics and (``figures``) its pictures and sentences.

    Args:
        run_dir: a run directory (``config.json``; ``metrics.jsonl`` and weights where it has them).
        label: its name in the report (default: the path).
        figures: load the model and its data and draw; otherwise config and metrics only.
        scratch: a directory for the PNGs while they are drawn (default: a temporary one).

    Raises:
        FileNotFoundError: no ``config.json``, or (``figures``) no weights or data.
        ValueError: a damaged ``config.json`` or ``metrics.jsonl`` (naming the file and line).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG_NAME})")
    config = load_json(run_dir / CONFIG_NAME)
    if not isinstance(config, dict):
        raise ValueError(f"{run_dir / CONFIG_NAME}: expected a JSON object, got {type(config).__name__}")
    records = read_run_metrics(run_dir)
    report = RunReport(run_dir, label or str(run_dir), flatten_config(config), records, final_metrics(records),
                       best_metrics(records))
    if not records:
        report.notes.append(f"no {METRICS_NAME}: no metrics and no training curves")
    if figures:
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            report.pictures, report.texts, notes = _draw(run_dir, Path(tmp))
        report.notes += notes
    return report


# --- groups (sweeps) ------------------------------------------------------------------------------
def differing_fields(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The flattened config keys whose values are not the same in every config (missing counts
    as a value), in the order of first appearance.

    Example:
        >>> differing_fields([{"model": "vae", "model.beta": 1.0}, {"model": "vae", "model.beta": 4.0}])
        ['model.beta']
    """
    keys = list(dict.fromkeys(k for c in configs for k in c))
    missing = object()
    return [k for k in keys if len({json.dumps(c.get(k, missing), sort_keys=True, default=repr)
                                    for c in configs}) > 1]


def _label(setting: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in setting.items()) or "all runs"
    return text.replace("$", r"\$")  # matplotlib reads $...$ as mathematics


def _curve(records: Sequence[dict[str, Any]], metric: str) -> dict[int, float]:
    split = "train" if metric == "train_loss" else "test"
    key = "loss" if metric == "train_loss" else metric
    return {int(r["step"]): float(r[key]) for r in records if r.get("split") == split and is_number(r.get(key))}


def plot_setting_curves(curves: Sequence[tuple[str, Sequence[dict[int, float]]]], metric: str,
                        path: str | Path, title: str) -> Path:
    """One curve per setting: the mean over its runs of ``metric`` at the steps all of them logged,
    with the band from the lowest to the highest run where there are several.

    Args:
        curves: (label, one ``{step: value}`` per run) per setting.
        metric: the metric's name (the y label).
        path: the PNG to write (900 px wide; taller with more settings, for the legend below).
        title: the figure title.
    """
    fig = _figure(900, 520 + 22 * len(curves))
    ax = fig.add_subplot()
    for i, (label, runs) in enumerate(curves):
        steps = sorted(set.intersection(*(set(c) for c in runs))) if runs else []
        if not steps:
            continue
        values = np.array([[c[s] for s in steps] for c in runs])  # (runs, steps)
        color = f"C{i % 10}"  # matplotlib's default colour cycle
        n = f" ({len(runs)} runs)" if len(runs) > 1 else ""
        ax.plot(steps, values.mean(0), "o-", ms=3, color=color, label=f"{label}{n}")
        if len(runs) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " ") + (" (train)" if metric == "train_loss" else " (test)"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False, fontsize=9)
    ax.set_title(title, fontsize=12)
    return _save(fig, path)


def summarize_group(group: RunGroup, runs: Sequence[RunReport], scratch: str | Path | None = None) -> GroupSummary:
    """A group's runs pooled by setting: a row (mean, standard deviation, number of runs and 95%
    t-interval of each final metric, :func:`aelab.training.sweep.mean_interval`) and a curve per
    setting.

    A setting is the runs' values of the config fields that differ within the group, other than
    :data:`REPLICATE_FIELD`: runs that differ only in their seed are replicates of one setting.

    A sweep directory (``aelab sweep``, :mod:`aelab.training.sweep`) is a group like any other: its
    trials are its runs; ``aelab sweep SPEC --summary`` gives the same pooling with 95% intervals
    as CSV and JSON.
    """
    configs = [r.config for r in runs]
    settings = [k for k in differing_fields(configs) if k != REPLICATE_FIELD]
    pooled: dict[str, tuple[dict[str, Any], list[RunReport]]] = {}
    for r in runs:
        setting = {k: r.config.get(k) for k in settings}
        pooled.setdefault(json.dumps(setting, sort_keys=True, default=repr), (setting, []))[1].append(r)
    rows = []
    for setting, members in pooled.values():
        keys = list(dict.fromkeys(k for m in members for k in m.final))
        stats = {}
        for k in keys:
            st = mean_interval([m.final[k] for m in members if k in m.final])
            stats[k] = (st["mean"], st["sd"] or 0.0, st["n"], st["ci95"])
        rows.append((setting, [m.label for m in members], stats))
    summary = GroupSummary(settings, rows)
    logged = {k for r in runs for rec in r.records if rec.get("split") == "test" for k in rec}
    metric = next((k for k in CURVE_METRICS if k in logged), None)
    if metric is None and any(r.final.get("train_loss") is not None for r in runs):
        metric = "train_loss"
    if metric is None:
        summary.notes.append("no curves: the runs have no metrics logged")
        return summary
    summary.metric = metric
    curves = [(_label(s), [_curve(m.records, metric) for m in members]) for s, members in pooled.values()]
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = plot_setting_curves(curves, metric, Path(tmp) / "curves.png",
                                   title=f"{group.path}: {metric} per setting".replace("$", r"\$"))
        summary.curves = Picture(f"{metric} against the step, one curve per setting", path.read_bytes())
    return summary


# --- the page ---------------------------------------------------------------------------------------
CSS = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#fff;
  margin:0 auto;max-width:1180px;padding:12px 16px 48px;overflow-wrap:anywhere}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin:1.2em 0 .3em}
.meta{color:#555;font-size:.9em}
.scroll{overflow-x:auto;max-width:100%;margin:.4em 0}
table{border-collapse:collapse;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.text td{white-space:normal;min-width:8em}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";color:#aaa}
table.sortable th[aria-sort=ascending]::after{content:" \\2191";color:#333}
table.sortable th[aria-sort=descending]::after{content:" \\2193";color:#333}
thead th{background:#f4f4f6;position:sticky;top:0}
figure{margin:.8em 0}
figure img{display:block;max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-bottom:.2em}
details{margin:.4em 0}summary{cursor:pointer}
.note{color:#8a5a00;font-size:.9em}
section.run{border-top:3px solid #dde;margin-top:2em}
"""

SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute("data-sort");
        return v === null ? cell.textContent : (v === "" ? null : parseFloat(v));
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }  /* blanks last */
        var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

#: nothing may be fetched: pictures are data: URIs, style and script inline
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if is_number(value):
        return f"{value:.5g}" if isinstance(value, float) else str(value)
    return value if isinstance(value, str) else json.dumps(value)


def _cell(value: Any) -> str:
    """A table cell; numbers right-aligned and sorted by value, blanks sorted last."""
    if value is None:
        return '<td data-sort=""></td>'
    if is_number(value):
        sort = repr(float(value)) if math.isfinite(value) else ""
        return f'<td class="num" data-sort="{_e(sort)}">{_e(_fmt(value))}</td>'
    return f"<td>{_e(_fmt(value))}</td>"


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], sortable: bool = False,
           cls: str = "") -> str:
    classes = " ".join(c for c in (cls, "sortable" if sortable else "") if c)
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(c if isinstance(c, _Raw) else _cell(c) for c in row) + "</tr>" for row in rows)
    attr = f' class="{classes}"' if classes else ""
    return f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


class _Raw(str):
    """Markup built here (a cell with a link), not to be escaped again."""


def _stat_cell(stat: tuple[float, float, int, list[float] | None] | None) -> _Raw:
    """``mean ± sd`` over a setting's runs and below it the 95% interval of the mean (the mean
    alone for one run), sorted by the mean."""
    if stat is None:
        return _Raw(_cell(None))
    mean, sd, n, ci = stat
    if n < 2 or not math.isfinite(mean) or ci is None:
        return _Raw(_cell(mean))
    interval = f'<br><small title="95% t-interval of the mean">[{_e(_fmt(ci[0]))}, {_e(_fmt(ci[1]))}]</small>'
    return _Raw(f'<td class="num" data-sort="{mean!r}" title="{n} runs">{_e(_fmt(mean))} ± {_e(_fmt(sd))}'
                f"{interval}</td>")


def _link(anchor: str, text: str) -> _Raw:
    return _Raw(f'<td><a href="#{_e(anchor)}">{_e(text)}</a></td>')


def _picture(p: Picture) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    return (f'<figure><figcaption>{_e(p.caption)}</figcaption>'
            f'<img src="data:image/png;base64,{data}" alt="{_e(p.caption)}"></figure>')


def _notes(notes: Iterable[str]) -> str:
    return "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _comparison(runs: Sequence[RunReport], anchors: dict[int, str]) -> str:
    # fields most runs have first: across model families the shared ones (trainer, latent size)
    settings = [k for k in differing_fields([r.config for r in runs]) if k not in ("model", "data.name")]
    settings.sort(key=lambda k: -sum(k in r.config for r in runs))
    more = len(settings) - MAX_SETTING_COLUMNS
    settings = settings[:MAX_SETTING_COLUMNS]
    metrics = list(dict.fromkeys(k for r in runs for k in r.final))
    columns = ["run", "model", "data", "steps", *settings, *metrics]
    rows = [[_link(anchors[id(r)], r.label), r.config.get("model"), r.config.get("data.name"), r.steps,
             *(r.config.get(k) for k in settings), *(r.final.get(k) for k in metrics)] for r in runs]
    note = _notes([f"{more} more settings differ between the runs; each run's config lists them all"]
                  if more > 0 else [])
    return _table(columns, rows, sortable=True) + note


def _group_section(group: RunGroup, summary: GroupSummary, runs: Sequence[RunReport],
                   anchors: dict[int, str]) -> str:
    parts = [f'<h2 id="{_e(anchors[id(group)])}">Group {_e(group.path)}</h2>',
             f'<p class="meta">{len(runs)} runs; settings: {_e(", ".join(summary.settings) or "none differ")}'
             f"; runs differing only in {REPLICATE_FIELD} are pooled (mean ± standard deviation, below it the "
             "95% t-interval of the mean)</p>"]
    metrics = list(dict.fromkeys(k for _, _, stats in summary.rows for k in stats))
    columns = [*summary.settings, "runs", *metrics]
    rows = [[*(setting.get(k) for k in summary.settings), len(labels), *(_stat_cell(stats.get(k)) for k in metrics)]
            for setting, labels, stats in summary.rows]
    parts.append(_table(columns, rows, sortable=True))
    if summary.curves is not None:
        parts.append(_picture(summary.curves))
    notes = list(summary.notes)
    if group.skipped:
        notes.append("not runs (no config.json), left out: " + ", ".join(d.name for d in group.skipped))
    parts.append(_notes(notes))
    return "\n".join(parts)


def _run_section(r: RunReport, anchor: str) -> str:
    parts = [f'<section class="run" id="{_e(anchor)}"><h2>{_e(r.label)}</h2>',
             f'<p class="meta">{_e(r.config.get("model", "?"))} on {_e(r.config.get("data.name", "?"))}'
             f"{f', {r.steps} steps' if r.steps is not None else ''} &middot; {_e(r.path)}</p>"]
    metrics = list(dict.fromkeys([*r.final, *r.best]))
    if metrics:
        parts.append("<h3>Metrics</h3>")
        rows = [[k, r.final.get(k), *r.best.get(k, (None, None))] for k in metrics]
        parts.append(_table(["metric", "final", "best", "best at step"], rows))
    parts.append(_notes(r.notes))
    for block in r.texts:
        parts.append(f"<h3>{_e(block.title)}</h3>")
        parts.append(_table(block.columns, block.rows, cls="text"))
    for p in r.pictures:
        parts.append(_picture(p))
    config = _table(["field", "value"], [[k, v] for k, v in r.config.items()])
    parts.append(f"<details><summary>Config ({len(r.config)} fields)</summary>{config}</details></section>")
    return "\n".join(parts)


def render_html(runs: Sequence[RunReport], groups: Sequence[tuple[RunGroup, GroupSummary, Sequence[RunReport]]],
                title: str = "aelab report") -> str:
    """The page: a comparison table of every run, a section per group, a section per run.

    Args:
        runs: runs given on their own.
        groups: each group with its summary and its runs' reports.
        title: the page title.
    """
    everything = [*runs, *(r for _, _, members in groups for r in members)]
    anchors: dict[int, str] = {id(r): f"run-{i + 1}" for i, r in enumerate(everything)}
    anchors |= {id(g): f"group-{i + 1}" for i, (g, _, _) in enumerate(groups)}
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">{len(everything)} run{"s" * (len(everything) != 1)}'
            f'{f", {len(groups)} group" + "s" * (len(groups) != 1) if groups else ""}. '
            "Final metrics are those of the last test evaluation; click a column header to sort.</p>"]
    if everything:
        body += ["<h2>All runs</h2>", _comparison(everything, anchors)]
    for group, summary, members in groups:
        body.append(_group_section(group, summary, members, anchors))
    body += [_run_section(r, anchors[id(r)]) for r in everything]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{SORT_JS}</script>\n</body></html>\n")


def write_report(paths: Iterable[str | Path], out: str | Path, figures: bool = True, title: str = "aelab report",
                 summarize: Callable[..., GroupSummary] = summarize_group,
                 progress: Callable[[Path], None] | None = None) -> tuple[Path, int]:
    """Write the report of the runs and groups of runs in ``paths`` to ``out``, atomically.

    Args:
        paths: run directories and directories of runs (:func:`collect_runs`).
        out: the HTML file; nothing is written unless every run was read.
        figures: draw each run's pictures (loads its model and data); otherwise config and metrics.
        title: the page title.
        summarize: ``summarize(group, run_reports, scratch=...)`` of each group (the sweep hook).
        progress: called with each run directory before it is read.

    Returns:
        ``out`` and the number of runs in the report.
    """
    runs, groups = collect_runs(paths)
    with tempfile.TemporaryDirectory() as scratch:
        def read(run_dir: Path, label: str) -> RunReport:
            if progress is not None:
                progress(run_dir)
            return run_report(run_dir, label, figures=figures, scratch=scratch)

        alone = [read(p, str(p)) for p in runs]
        grouped = []
        for g in groups:
            members = [read(p, f"{g.path.name}/{p.name}") for p in g.runs]
            grouped.append((g, summarize(g, members, scratch=scratch), members))
    page = render_html(alone, grouped, title=title)
    atomic_write_text(out, page)
    return Path(out), len(alone) + sum(len(m) for _, _, m in grouped)

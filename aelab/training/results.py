"""A run's results as its metrics log holds them: what the report and the sweeps read.

``RUN_DIR/metrics.jsonl`` has one JSON record a line: ``split`` ``train`` (training losses every
``trainer.log_every`` steps) or ``test`` (the per-epoch evaluation). The final metrics of a run
are its last test record's (:func:`final_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aelab.training.trainer import read_metrics

__all__ = ["METRICS_NAME", "NOT_METRICS", "final_metrics", "is_number", "read_run_metrics"]

METRICS_NAME = "metrics.jsonl"

#: record keys that are bookkeeping, not results: left out of the metric tables
NOT_METRICS = frozenset({"step", "epoch", "split", "time", "seconds", "samples_per_second", "mutual_info_max",
                         "iwae_k", "tokens", "lr"})


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float (not a bool): a metric value."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def final_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The last test evaluation's metrics (per-dimension KLs and bookkeeping left out) and
    ``train_loss``, the last logged training loss.

    Example:
        >>> final_metrics([{"step": 5, "split": "train", "loss": 3.0},
        ...                {"step": 5, "split": "test", "loss": 2.5, "kl_dim_0": 0.1, "seconds": 1.0}])
        {'loss': 2.5, 'train_loss': 3.0}
    """
    out: dict[str, float] = {}
    test = [r for r in records if r.get("split") == "test"]
    if test:
        out = {k: float(v) for k, v in test[-1].items()
               if k not in NOT_METRICS and not k.startswith("kl_dim_") and is_number(v)}
    train = [r for r in records if r.get("split") == "train" and is_number(r.get("loss"))]
    if train:
        out["train_loss"] = float(train[-1]["loss"])
    return out


def read_run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (none without one). Unlike resuming, which drops a
    last line cut short by a kill, the report refuses it: its curves would be drawn from it."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return []
    records = read_metrics(path)  # ValueError naming the file and line for any other bad line
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(records) != len(lines):
        raise ValueError(f"{path}, line {len(path.read_text().splitlines())}: not a JSON record (cut short: a run "
                         "killed while writing, or still writing it); resume the run or delete that line")
    return records

"""One-call training from Python, mirroring ``aelab train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aelab.config import to_dict
from aelab.data.base import DataConfig, DataSplits, load_data
from aelab.protocol import model_spec
from aelab.training.trainer import Trainer, TrainerConfig


def fit(model: Any, data: str | DataConfig | DataSplits, trainer: TrainerConfig | None = None,
        run_dir: str | Path | None = None, **trainer_settings: Any) -> dict[str, float]:
    """Train ``model`` on a data set and return the last test metrics.

    Args:
        model: an aelab model (e.g. from :func:`aelab.build_model`).
        data: a registered data-set name, a :class:`DataConfig`, or already loaded splits.
        trainer: trainer settings; or give them as keywords (``epochs=5, lr=3e-4``).
        run_dir: where to write the run (config, weights, checkpoints, metrics, pictures);
            ``aelab eval RUN_DIR`` works on it when ``data`` was a name or a config.

    Example:
        >>> import aelab
        >>> model = aelab.build_model("ae", image_shape=(1, 64, 64), latent_dim=4,
        ...                           backbone={"hidden": (32,)})
        >>> data = aelab.DataConfig(name="dsprites", train_subset=64, test_subset=32)
        >>> metrics = aelab.fit(model, data, epochs=1, batch_size=32, images=False, progress=False)
        >>> sorted(k for k in metrics if k in ("loss", "mse"))
        ['loss', 'mse']
    """
    if trainer is not None and trainer_settings:
        raise ValueError("give trainer settings either as a TrainerConfig or as keywords, not both")
    cfg = trainer or TrainerConfig(**trainer_settings)
    data_cfg = DataConfig(name=data) if isinstance(data, str) else data if isinstance(data, DataConfig) else None
    splits = load_data(data_cfg) if data_cfg is not None else data
    fit_to_data = model_spec(model).fit_to_data
    if fit_to_data is not None and fit_to_data(model.config, splits.info) != model.config:
        raise ValueError(f"model {model.name!r} was built for other data than {splits.info.name}: its config "
                         f"differs from the one fitted to the data ({fit_to_data(model.config, splits.info)})")
    run_config = {"model": model.name, "model_config": to_dict(model.config), "trainer": to_dict(cfg)}
    if data_cfg is not None:
        run_config["data"] = to_dict(data_cfg)
    return Trainer(model, splits.train, splits.test, cfg, run_dir=run_dir, run_config=run_config).fit()

"""One rank of a small data-parallel training, for tests/test_distributed.py.

Run as ``torchrun --nproc_per_node 2 tests/ddp_worker.py MODEL OUT STEPS`` (or with plain
``python`` for the single-process reference): trains MODEL on the first 640 MNIST digits of
``AELAB_DATA_DIR`` with aelab's Trainer (global batch 64) and writes this rank's whole state
(parameters and buffers) to ``OUT/rank{R}.safetensors`` and its logged losses to
``OUT/rank{R}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from aelab import distributed
from aelab.data.base import DataConfig, load_data
from aelab.protocol import build_model
from aelab.training.trainer import Trainer, TrainerConfig

CONFIGS = {
    # EMA codebook from k-means on the first batch, dead codes restarted after 3 unused steps
    "vqvae": {"image_shape": (1, 28, 28), "embedding_dim": 4, "num_codes": 32, "channels": (8, 16),
              "res_blocks": 1, "res_channels": 8, "quantizer": {"dead_after": 3, "kmeans_iters": 3}},
    # two optimizers and a train_step of its own
    "factor_vae": {"image_shape": (1, 28, 28), "latent_dim": 6, "backbone": {"kind": "mlp", "hidden": (64,)},
                   "discriminator_hidden": (16, 16)},
}


def main(name: str, out: str, steps: int) -> None:
    torch.set_num_threads(1)
    setup = distributed.init_from_environment(torch.device("cpu"))
    data = load_data(DataConfig(name="mnist-10k"))
    train = data.train.subset(torch.arange(640))
    torch.manual_seed(0)
    model = build_model(name, **CONFIGS[name])
    logs: list[dict[str, float]] = []
    trainer = Trainer(model, train, None, TrainerConfig(epochs=100, max_steps=steps, batch_size=64, images=False,
                                                        progress=False, iwae_k=0))
    step = trainer._train_step

    def logged(batch):  # the losses each step logs (the global batch's)
        logs.append(step(batch))
        return logs[-1]

    trainer._train_step = logged
    trainer.fit()
    r = distributed.rank()
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{r}.safetensors")
    Path(f"{out}/rank{r}.json").write_text(json.dumps(logs))
    if setup is not None:
        setup.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

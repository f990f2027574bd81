"""The model protocol as a new model family would use it, with no library file knowing about it.

Three families are defined here, at test time:

* ``masked_tokens``: an autoencoder of variable-length token sequences whose batches carry
  ``lengths`` and a ``mask``; registered with its own per-epoch evaluation, trained, evaluated,
  saved, loaded, sampled and resumed exactly through the library functions ``aelab train`` /
  ``aelab eval`` call (``aelab.runs.train_run``, the CLI's ``main``);
* ``frames``: a frame autoencoder on ``[T, C, H, W]`` sequences (the same split interface);
* ``toy_gan``: a two-player model with two optimizers and a training step of its own, killed
  with SIGKILL mid-run and resumed bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from aelab.batch import Batch
from aelab.cli import main
from aelab.data.base import DataConfig, DatasetInfo, DataSplits, Split
from aelab.outputs import LossOutput
from aelab.protocol import Capabilities, Model, StepContext, from_pretrained, register_model
from aelab.registry import DATASETS, METRICS, MODELS
from aelab.runs import RunConfig, load_run, train_run
from aelab.training.trainer import Trainer, TrainerConfig

HERE = Path(__file__).resolve().parent
VOCAB, MAX_LEN = 11, 9


# --- test-only splits: padded token sequences and frame sequences -------------------------------
class TokenSequences(Split):
    """Variable-length token sequences, padded with 0 to ``MAX_LEN``; batches carry lengths and a mask."""

    def __init__(self, tokens: Tensor, lengths: Tensor) -> None:
        self.tokens, self.lengths = tokens, lengths

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        return Batch(self.tokens.index_select(0, idx), lengths=self.lengths.index_select(0, idx)).with_mask()

    def subset(self, idx: Tensor) -> TokenSequences:
        return TokenSequences(self.tokens[idx], self.lengths[idx])


def token_sequences(n: int, seed: int) -> TokenSequences:
    """Sequences that repeat one token (1..VOCAB-1) with occasional noise, lengths 2..MAX_LEN."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, MAX_LEN + 1, (n,), generator=g)
    base = torch.randint(1, VOCAB, (n, 1), generator=g).expand(n, MAX_LEN)
    noise = torch.randint(1, VOCAB, (n, MAX_LEN), generator=g)
    tokens = torch.where(torch.rand(n, MAX_LEN, generator=g) < 0.8, base, noise)
    tokens = tokens.masked_fill(torch.arange(MAX_LEN) >= lengths.unsqueeze(1), 0)
    return TokenSequences(tokens, lengths)


class FrameSequences(Split):
    """``[T, C, H, W]`` sequences of a square moving across a small frame."""

    def __init__(self, frames: Tensor) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        return Batch(self.frames.index_select(0, idx))

    def subset(self, idx: Tensor) -> FrameSequences:
        return FrameSequences(self.frames[idx])


def moving_squares(n: int, t: int = 4, size: int = 6, seed: int = 0) -> FrameSequences:
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, size - 2, (n,), generator=g)
    frames = torch.zeros(n, t, 1, size, size)
    for i in range(n):
        for s in range(t):
            c = (int(start[i]) + s) % (size - 1)
            frames[i, s, 0, 1:3, c : c + 2] = 1.0
    return FrameSequences(frames)


# --- a masked-sequence family, registered here -----------------------------------------------------
@dataclass
class MaskedTokensConfig:
    vocab: int = VOCAB
    dim: int = 8
    latent_dim: int = 3


def masked_nll(model: MaskedTokens, batch: Batch) -> Tensor:
    """Per-sequence mean negative log-likelihood of the real (unmasked) tokens, ``(B,)``."""
    logits = model(batch)  # (B, T, V)
    nll = F.cross_entropy(logits.transpose(1, 2), batch.x, reduction="none")  # (B, T)
    return (nll * batch.mask).sum(1) / batch.mask.sum(1)


def masked_tokens_evaluation(model: MaskedTokens, split: Split, cfg: TrainerConfig) -> dict[str, float]:
    idx = torch.arange(len(split))
    with torch.no_grad():
        return {"token_nll": masked_nll(model.eval(), split.get_batch(idx)).mean().item()}


class MaskedTokens(Model):
    """A bag-of-tokens sequence autoencoder: masked mean of embeddings -> code -> per-position logits."""

    capabilities = Capabilities(latent=True, sample=True)

    def __init__(self, cfg: MaskedTokensConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.encode_layer = nn.Linear(cfg.dim, cfg.latent_dim)
        self.decode_layer = nn.Linear(cfg.latent_dim, cfg.vocab)
        self.position = nn.Parameter(torch.zeros(MAX_LEN, cfg.vocab))

    def code(self, batch: Batch) -> Tensor:
        e = self.embed(batch.x) * batch.mask.unsqueeze(-1)  # padding contributes nothing
        return self.encode_layer(e.sum(1) / batch.mask.sum(1, keepdim=True))

    def forward(self, batch: Batch) -> Tensor:
        z = self.code(batch)
        if self.training:
            z = z + 0.1 * torch.randn_like(z)  # draws from torch's RNG: exact resume must restore it
        return self.decode_layer(z).unsqueeze(1) + self.position[: batch.x.shape[1]]

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        nll = masked_nll(self, batch)
        return LossOutput(nll.mean(), {"token_nll": nll.detach().mean()}, nll.detach())

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        z = torch.randn(n, self.config.latent_dim)
        logits = self.decode_layer(z).unsqueeze(1) + self.position
        return torch.distributions.Categorical(logits=logits).sample()


def build_test_tokens(cfg: DataConfig) -> DataSplits:
    """Test-only token sequences (variable length, padded, with masks)."""
    return DataSplits(token_sequences(96, cfg.seed), token_sequences(32, cfg.seed + 1),
                      DatasetInfo("test_tokens", (MAX_LEN,), num_classes=VOCAB))


def token_nll_metric(model: MaskedTokens, splits: DataSplits, **options) -> dict[str, float]:
    """Mean per-token NLL of the test split (a metric registered by the test)."""
    return masked_tokens_evaluation(model, splits.test, TrainerConfig())


def _weights(run: Path) -> dict[str, Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_a_new_family_trains_evaluates_saves_loads_samples_and_resumes(tmp_path, capsys):
    cfg = RunConfig(model="masked_tokens", data=DataConfig(name="test_tokens"),
                    trainer=TrainerConfig(epochs=3, batch_size=16, lr=3e-2, checkpoint_every=4, progress=False))
    # train: the CLI's own code path, with the family's per-epoch evaluation in the log
    trainer, metrics = train_run(cfg, tmp_path / "a")
    assert trainer.model.config.vocab == VOCAB  # filled from the data set by the family's fit_to_data
    records = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    test_nll = [r["token_nll"] for r in records if r["split"] == "test"]
    assert len(test_nll) == 3 and test_nll[-1] < test_nll[0] < 2.5  # learns; uniform is log 11 = 2.4
    # evaluate through `aelab eval` with a metric registered by the test
    assert main(["eval", str(tmp_path / "a"), "--metrics", "test_token_nll", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["token_nll"] == pytest.approx(metrics["token_nll"], rel=1e-6)
    # load and sample
    cfg_loaded, model = load_run(tmp_path / "a")
    assert cfg_loaded.model == "masked_tokens" and isinstance(model, MaskedTokens)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    drawn = model.sample(5)
    assert drawn.shape == (5, MAX_LEN) and drawn.dtype == torch.long and drawn.max() < VOCAB
    # resume exactly: killed before step 6 (last checkpoint at step 4), continued with the CLI's path
    def dying(trainer: Trainer) -> None:
        step = trainer._train_step

        def step_or_die(batch: Batch) -> dict[str, float]:
            if trainer.step == 6:
                raise KeyboardInterrupt
            return step(batch)

        trainer._train_step = step_or_die

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "b", on_start=dying)
    train_run(cfg, tmp_path / "b", resume=True)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_with_masks_move_as_a_whole():
    batch = token_sequences(4, 0).get_batch(torch.arange(4))
    moved = batch.to("cpu")
    assert torch.equal(moved.mask, batch.mask) and moved.mask.dtype == torch.bool
    assert batch.mask.sum(1).tolist() == batch.lengths.tolist()
    assert (batch.x[~batch.mask] == 0).all()


# --- [T, C, H, W] sequences fit the same interface ---------------------------------------------------
@dataclass
class FramesConfig:
    size: int = 6
    latent_dim: int = 4


class Frames(Model):
    """A per-frame linear autoencoder of ``[B, T, C, H, W]`` batches."""

    capabilities = Capabilities(reconstruct=True)

    def __init__(self, cfg: FramesConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.size * cfg.size
        self.enc, self.dec = nn.Linear(d, cfg.latent_dim), nn.Linear(cfg.latent_dim, d)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.dec(self.enc(x.flatten(2))).view_as(x)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        err = (self.reconstruct(batch.x) - batch.x).pow(2).flatten(1).sum(1)
        return LossOutput(err.mean(), {"sse": err.detach().mean()}, err.detach())


def test_frame_sequences_train_with_the_same_trainer(tmp_path):
    torch.manual_seed(0)
    model = Frames(FramesConfig())
    data = moving_squares(64)
    before = model.loss(data.get_batch(torch.arange(64))).loss.item()
    Trainer(model, data, data, TrainerConfig(epochs=20, batch_size=16, lr=1e-2, progress=False), tmp_path).fit()
    assert model.loss(data.get_batch(torch.arange(64))).loss.item() < 0.5 * before
    assert from_pretrained(tmp_path).name == "test_frames"


# --- two optimizers and a step of its own ---------------------------------------------------------
@dataclass
class ToyGANConfig:
    noise_dim: int = 2
    hidden: int = 16


class ToyGAN(Model):
    """A 2-D GAN: generator and discriminator updated in turn, each by its own Adam."""

    capabilities = Capabilities(sample=True, own_step=True)

    def __init__(self, cfg: ToyGANConfig) -> None:
        super().__init__()
        self.config = cfg
        self.generator = nn.Sequential(nn.Linear(cfg.noise_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.generator.parameters()), "discriminator": list(self.discriminator.parameters())}

    def sample(self, n: int) -> Tensor:
        return self.generator(torch.randn(n, self.config.noise_dim))

    def _d_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(fake), 1)
        return (F.binary_cross_entropy_with_logits(self.discriminator(real), ones, reduction="none")
                + F.binary_cross_entropy_with_logits(self.discriminator(fake), zeros, reduction="none")).squeeze(1)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        d = self._d_loss(batch.x.flatten(1), self.sample(len(batch)))
        return LossOutput(d.mean(), {"d_loss": d.detach().mean()}, d.detach())

    def train_step(self, batch: Batch, step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                   ctx: StepContext) -> dict[str, float]:
        real = batch.x.flatten(1)
        d_opt, g_opt = optimizers["discriminator"], optimizers["generator"]
        d_opt.zero_grad(set_to_none=True)
        d_loss = self._d_loss(real, self.sample(len(real)).detach()).mean()
        d_loss.backward()
        ctx.finish_gradients(self.discriminator.parameters())
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        logits = self.discriminator(self.sample(len(real)))
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        g_loss.backward()
        g_opt.step()
        return {"loss": d_loss.item() + g_loss.item(), "d_loss": d_loss.item(), "g_loss": g_loss.item()}


def register_families() -> None:
    """Register this file's families, data set and metric (a fixture does it for the tests here and
    takes them away after, so no other test file sees them; the SIGKILL subprocess calls it)."""
    register_model("masked_tokens", MaskedTokensConfig, family="test sequences", evaluation=masked_tokens_evaluation,
                   figures=None, fit_to_data=lambda cfg, info: dataclasses.replace(cfg, vocab=info.num_classes)
                   )(MaskedTokens)
    register_model("test_frames", FramesConfig, family="test sequences", evaluation=None, figures=None,
                   fit_to_data=None)(Frames)
    register_model("toy_gan", ToyGANConfig, family="test adversarial", evaluation=None, figures=None,
                   fit_to_data=None)(ToyGAN)
    DATASETS.register("test_tokens")(build_test_tokens)
    METRICS.register("test_token_nll")(token_nll_metric)


@pytest.fixture(scope="module", autouse=True)
def families():
    register_families()
    yield
    for name in ("masked_tokens", "test_frames", "toy_gan"):
        MODELS.unregister(name)
    DATASETS.unregister("test_tokens")
    METRICS.unregister("test_token_nll")


def gan_run() -> RunConfig:
    return RunConfig(model="toy_gan", data=DataConfig(name="pinwheel", train_subset=400, test_subset=100),
                     trainer=TrainerConfig(epochs=2, batch_size=50, lr=2e-3, checkpoint_every=5, progress=False,
                                           images=False))

KILLED_RUN = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import test_protocol as t
    from conftest import sigkill_at
    from aelab.runs import train_run
    t.register_families()
    train_run(t.gan_run(), {run!r}, on_start=lambda trainer: sigkill_at(trainer, 12))
""")


def test_two_optimizers_and_an_own_step_resume_bit_identically_after_sigkill(tmp_path):
    straight, _ = train_run(gan_run(), tmp_path / "straight")
    assert set(straight.optimizers) == {"generator", "discriminator"}
    assert straight.step == 16
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN.format(tests=str(HERE), run=str(tmp_path / "killed"))],
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    records = [json.loads(ln) for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) < 16  # it really died mid-run
    resumed, _ = train_run(gan_run(), tmp_path / "killed", resume=True)
    assert resumed.step == 16
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for group in ("generator", "discriminator"):  # every optimizer's moments too
        sa, sb = straight.optimizers[group].state_dict(), resumed.optimizers[group].state_dict()
        for pid, state in sa["state"].items():
            for k, v in state.items():
                assert torch.equal(v, sb["state"][pid][k]), (group, pid, k)


def test_a_model_with_several_groups_must_own_its_step():
    @dataclass
    class C:
        pass

    class TwoGroups(Model):
        name = "two_groups_without_step"

        def __init__(self) -> None:
            super().__init__()
            self.config, self.a, self.b = C(), nn.Linear(1, 1), nn.Linear(1, 1)

        def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
            return {"a": list(self.a.parameters()), "b": list(self.b.parameters())}

    data = moving_squares(4)
    with pytest.raises(ValueError, match="no train_step of its own"):
        Trainer(TwoGroups(), data, None, TrainerConfig(progress=False), evaluate=lambda m, s: {}, figures=None)


def test_registry_lists_the_test_families():
    assert {MODELS.get(n).family for n in ("masked_tokens", "test_frames", "toy_gan")} == {
        "test sequences", "test adversarial"}

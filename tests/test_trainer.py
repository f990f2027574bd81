"""Trainer: exact resume, non-finite losses, checkpoints, schedules."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fit_until_interrupted, tiny_overrides
from safetensors.torch import load_file

from aelab.batch import Batch
from aelab.data.base import DataConfig, TensorImageDataset, load_data
from aelab.models import Autoencoder, build_model
from aelab.schedules import lr_multiplier, parse_schedule
from aelab.training.checkpoint import STATE_NAME
from aelab.training.trainer import NonFiniteLossError, Trainer, TrainerConfig


def _data(n: int = 90, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.randint(0, 256, (n, 1, 12, 10), generator=g, dtype=torch.uint8),
                              torch.randint(0, 3, (n,), generator=g))


def _cfg(**kw) -> TrainerConfig:
    base = dict(epochs=3, batch_size=16, checkpoint_every=4, log_every=1, images=False, progress=False,
                lr_schedule="cosine", warmup_steps=3, grad_clip=5.0, seed=7)
    return TrainerConfig(**(base | kw))


def _model(name: str, seed: int) -> Autoencoder:
    torch.manual_seed(seed)
    return build_model(name, **tiny_overrides(name))


@pytest.mark.parametrize("name", ["ae", "dae", "ksparse_ae", "sparse_ae", "cae"])
@pytest.mark.parametrize("stop_at", [2, 5, 6, 13])  # before the first periodic checkpoint, mid-epoch, epoch end
def test_resume_is_bit_identical(name, stop_at, tmp_path):
    data, test = _data(), _data(30, seed=1)
    full = Trainer(_model(name, 0), data, test, _cfg(), run_dir=tmp_path / "a")
    full.fit()

    first = Trainer(_model(name, 0), data, test, _cfg(), run_dir=tmp_path / "b")
    fit_until_interrupted(first, stop_at)
    # a fresh process would rebuild the model with any initialisation: resume must overwrite it
    resumed = Trainer(_model(name, 99), data, test, _cfg(), run_dir=tmp_path / "b")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 18
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log is the same as the uninterrupted run's (records after the checkpoint redone)
    strip = lambda p: [{k: v for k, v in json.loads(ln).items() if k not in ("seconds", "samples_per_second")}  # noqa: E731
                       for ln in p.read_text().splitlines()]
    assert strip(tmp_path / "a" / "metrics.jsonl") == strip(tmp_path / "b" / "metrics.jsonl")


class _PoisonAt(TensorImageDataset):
    """Returns a NaN batch from the ``n``-th call on."""

    def __init__(self, base: TensorImageDataset, n: int) -> None:
        super().__init__(base.x, base.y)
        self.calls, self.n = 0, n

    def get_batch(self, idx):
        batch = super().get_batch(idx)
        self.calls += 1
        return Batch(batch.x * float("nan"), batch.y) if self.calls >= self.n else batch


def test_non_finite_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path):
    data = _PoisonAt(_data(), n=11)
    t = Trainer(_model("ae", 0), data, None, _cfg(checkpoint_every=4), run_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 10 .*step 8"):
        t.fit()
    state = load_file(str(tmp_path / STATE_NAME))
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())
    model = Autoencoder.from_pretrained(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the good checkpoint resumes (to the same NaN, since the data is poisoned deterministically)
    t2 = Trainer(_model("ae", 1), _PoisonAt(_data(), n=3), None, _cfg(), run_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="at step 10"):
        t2.fit(resume=True)


def test_checkpoint_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    t = Trainer(_model("ae", 0), _data(), None, _cfg(epochs=1), run_dir=tmp_path)
    t.fit()
    before = (tmp_path / STATE_NAME).read_bytes()
    import aelab.training.checkpoint as ck

    def broken_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        t.save()
    assert (tmp_path / STATE_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp files left


def test_run_directory_contents(tmp_path):
    cfg = _cfg(epochs=2, images=True)
    Trainer(_model("ae", 0), _data(), _data(30, 1), cfg, run_dir=tmp_path).fit()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", STATE_NAME, "metrics.jsonl", "tensorboard", "images"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    pngs = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert pngs == ["reconstructions_epoch001.png", "reconstructions_epoch002.png"]
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in records if r["split"] == "test"]
    assert [r["epoch"] for r in tests] == [0, 1] and all("mse" in r and "recon" in r for r in tests)


def test_max_steps_and_lr_schedule():
    t = Trainer(_model("ae", 0), _data(), None, _cfg(epochs=5, max_steps=7, lr_schedule="linear",
                                                       warmup_steps=0))
    t.fit()
    assert t.step == 7
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 6 / 7))


def test_schedules():
    assert [lr_multiplier("cosine", s, 10, 2) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1, 1, 0.5, 0])
    s = parse_schedule("cyclical(0, 1, 10, 0.5)")
    assert [s(i) for i in (0, 2, 5, 9, 10, 12)] == pytest.approx([0, 0.4, 1, 1, 0, 0.4])
    assert parse_schedule("cosine(1, 0, 4)")(2) == pytest.approx(0.5)
    assert parse_schedule(3)(None) == 3.0
    with pytest.raises(ValueError, match="cannot parse schedule"):
        parse_schedule("sometimes(1)")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainerConfig(lr_schedule="warp")


def test_precision_and_device_are_validated():
    with pytest.raises(ValueError, match="trainer.precision must be one of .*got 'fp16'"):
        TrainerConfig(precision="fp16")
    with pytest.raises(ValueError, match="trainer.device: expected .* got 'gpu0'"):
        TrainerConfig(device="gpu0")


@pytest.mark.parametrize("name", ["vae", "iaf_vae", "vqvae"])
def test_bf16_runs_backbones_in_bfloat16_and_everything_probabilistic_in_float32(name, shared_data):
    """Under autocast the encoder/decoder matmuls are bf16, but the head, likelihood, objective
    (and the quantizer) see float32, so the loss is close to fp32's and gradients are float32."""
    x = load_data(DataConfig(name="fashion-mnist", test_subset=64)).test.get_batch(torch.arange(64)).x
    model = build_model(name, **(tiny_overrides(name, "conv") | {"image_shape": (1, 28, 28)}))
    model.eval()
    seen: dict[str, torch.dtype] = {}
    for part in ("encoder", "decoder"):  # (a hook returning a value would replace the output)
        getattr(model, part).register_forward_hook(lambda m, i, o, part=part: seen.update({part: o.dtype}) and None)
    torch.manual_seed(0)
    ref = model.loss(Batch(x), step=0)
    seen.clear()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.loss(Batch(x), step=0)
    assert seen == {"encoder": torch.bfloat16, "decoder": torch.bfloat16}
    assert low.loss.dtype == low.per_example.dtype == torch.float32
    for k, v in low.terms.items():
        assert v.dtype == torch.float32, k
    # bf16 keeps ~3 significant digits in the backbone; the summed log-likelihood must not lose more
    torch.testing.assert_close(low.per_example, ref.per_example, rtol=2e-2, atol=0.0)
    low.loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_training_learns_and_resumes_bit_identically(tmp_path):
    data, test = _data(), _data(30, seed=1)
    cfg = _cfg(precision="bf16")
    full = Trainer(_model("vae", 0), data, test, cfg, run_dir=tmp_path / "a")
    full.fit()
    fp32 = Trainer(_model("vae", 0), data, test, _cfg(), run_dir=tmp_path / "c")
    fp32.fit()
    first = Trainer(_model("vae", 0), data, test, cfg, run_dir=tmp_path / "b")
    fit_until_interrupted(first, 7)
    resumed = Trainer(_model("vae", 99), data, test, cfg, run_dir=tmp_path / "b")
    resumed.fit(resume=True)
    a, b, c = full.model.state_dict(), resumed.model.state_dict(), fp32.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # autocast really was on
    assert abs(full.last_metrics["loss"] - fp32.last_metrics["loss"]) < 0.02 * abs(fp32.last_metrics["loss"])


def test_channels_last_puts_weights_batches_and_adam_moments_in_nhwc():
    torch.manual_seed(0)
    model = build_model("vae", image_shape=(3, 28, 28), latent_dim=4, backbone={"kind": "conv", "channels": [4, 8]})
    reference = build_model("vae", image_shape=(3, 28, 28), latent_dim=4, backbone={"kind": "conv", "channels": [4, 8]})
    reference.load_state_dict(model.state_dict())
    pixels = (torch.rand(16, 3, 28, 28) > 0.5).to(torch.uint8) * 255
    data = TensorImageDataset(pixels, torch.zeros(16, dtype=torch.long))
    seen, loss = [], model.loss
    model.loss = lambda b, step=None: seen.append(b.x) or loss(b, step)
    nhwc = Trainer(model, data, None, TrainerConfig(batch_size=8, channels_last=True, images=False, progress=False,
                                                    iwae_k=0, fused=False))
    plain = Trainer(reference, data, None, TrainerConfig(batch_size=8, images=False, progress=False, iwae_k=0,
                                                         fused=False))
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not any(p.is_contiguous() for p in convs)
    batch = data.get_batch(torch.arange(8))
    torch.manual_seed(1)
    logs = nhwc._train_step(batch)
    torch.manual_seed(1)  # the same reparameterisation noise
    plain_logs = plain._train_step(batch)
    assert logs["loss"] == pytest.approx(plain_logs["loss"], rel=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    for p in convs:  # Adam's moments follow the weights' layout
        assert nhwc.optimizer.state[p]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    for (k, a), b in zip(model.named_parameters(), reference.parameters()):  # the same gradients, up to rounding
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=k)

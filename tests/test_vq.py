"""Vector quantization and the VQ-VAE models, checked against independent computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_SHAPE, fit_until_interrupted, tiny_overrides
from torch import nn

from aelab.batch import Batch
from aelab.data.base import DataConfig, TensorImageDataset, load_data
from aelab.latents.vq import (
    QuantizerConfig,
    VectorQuantizer,
    codebook_kmeans,
    codebook_usage,
    nearest_code,
    perplexity,
    squared_distances,
)
from aelab.models import Autoencoder, build_model
from aelab.training.trainer import Trainer, TrainerConfig


def _vq(k: int = 6, d: int = 3, **cfg) -> VectorQuantizer:
    base = {"kmeans_init": False, "dead_after": 0}
    return VectorQuantizer(k, d, QuantizerConfig(**(base | cfg)))


def _brute_force_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return (z[:, None, :] - codebook[None]).pow(2).sum(-1).argmin(1)  # the (N, K, D) broadcast


# --- nearest code, distances, perplexity ------------------------------------------------------------
def test_nearest_code_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(500, 7, generator=g, dtype=torch.float64), torch.randn(33, 7, generator=g,
                                                                                     dtype=torch.float64)
    assert torch.equal(nearest_code(z, codebook), _brute_force_codes(z, codebook))
    torch.testing.assert_close(squared_distances(z, codebook), torch.cdist(z, codebook).pow(2))


def test_perplexity_is_k_for_uniform_use_and_1_for_one_code():
    assert perplexity(torch.full((9,), 4)).item() == pytest.approx(9.0)
    assert perplexity(torch.tensor([0, 0, 12, 0])).item() == pytest.approx(1.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert perplexity(p * 8).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert codebook_usage(torch.tensor([2, 0, 2, 2, 0]))["codes_used"] == 3.0
    # the layer reports the batch's usage
    vq = _vq(4, 2).eval()
    vq.codebook.data = torch.eye(4, 2) * 10  # codes 0 and 1 far apart; 2, 3 at the origin (never nearer)
    z = torch.tensor([[10.0, 0.0], [0.0, 10.0]]).repeat(3, 1)  # (6, 2): codes 0 and 1, three times each
    stats = vq(z.T.reshape(1, 2, 6)).stats
    assert stats["perplexity"].item() == pytest.approx(2.0) and stats["codes_used"].item() == 2


# --- straight-through gradients and the two losses ------------------------------------------------
def test_straight_through_gradient_is_the_decoder_gradient_at_the_quantised_point():
    torch.manual_seed(0)
    vq = _vq(5, 3).eval()
    decoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 1))
    z_e = torch.randn(2, 3, 4, 5, requires_grad=True)
    q = vq(z_e)
    decoder(q.z_q).pow(2).sum().backward()
    # independent: the gradient of the same decoder loss evaluated at e = codebook[codes]
    e = vq.codebook.detach()[q.codes].movedim(-1, 1).requires_grad_(True)
    torch.testing.assert_close(q.z_q.detach(), e.detach())
    (grad_at_e,) = torch.autograd.grad(decoder(e).pow(2).sum(), e)
    torch.testing.assert_close(z_e.grad, grad_at_e)


def test_codebook_and_commitment_losses_match_hand_formulas_and_move_only_their_side():
    torch.manual_seed(0)
    vq = _vq(5, 3, ema=False).eval()
    z_e = torch.randn(4, 3, 2, 3, requires_grad=True)
    q = vq(z_e)
    flat = z_e.detach().movedim(1, -1).reshape(-1, 3)
    codes = _brute_force_codes(flat, vq.codebook.detach())
    assert torch.equal(q.codes.flatten(), codes)
    sq = (flat - vq.codebook.detach()[codes]).pow(2).sum(1).reshape(4, 6).sum(1)  # per example
    torch.testing.assert_close(q.codebook_loss, sq)
    torch.testing.assert_close(q.commitment_loss, sq)

    q.commitment_loss.sum().backward(retain_graph=True)  # moves the encoder output only
    assert vq.codebook.grad is None
    e = vq.codebook.detach()[q.codes].movedim(-1, 1)
    torch.testing.assert_close(z_e.grad, 2 * (z_e.detach() - e))

    z_e.grad = None
    q.codebook_loss.sum().backward()  # moves the codebook only
    assert z_e.grad is None
    expected = torch.zeros(5, 3).index_add_(0, codes, -2 * (flat - vq.codebook.detach()[codes]))
    torch.testing.assert_close(vq.codebook.grad, expected)


def test_ema_update_matches_the_hand_computation_with_laplace_smoothing():
    torch.manual_seed(0)
    k, d, gamma, eps = 6, 3, 0.9, 1e-3
    vq = _vq(k, d, ema=True, decay=gamma, eps=eps).train()
    vq.codebook.copy_(torch.randn(k, d))
    vq.embed_sum.copy_(torch.randn(k, d))
    vq.cluster_size.copy_(torch.rand(k) * 3)
    vq.initialised.fill_(True)
    before = {n: b.clone() for n, b in vq.named_buffers()}
    z_e = torch.randn(5, d, 4)
    q = vq(z_e)

    z = z_e.movedim(1, -1).reshape(-1, d)
    codes = _brute_force_codes(z, before["codebook"])
    torch.testing.assert_close(q.z_q, before["codebook"][codes].reshape(5, 4, d).movedim(-1, 1))  # old codebook
    n = torch.tensor([(codes == j).sum().item() for j in range(k)], dtype=torch.float32)
    s = torch.stack([z[codes == j].sum(0) for j in range(k)])
    cluster = gamma * before["cluster_size"] + (1 - gamma) * n
    embed = gamma * before["embed_sum"] + (1 - gamma) * s
    total = cluster.sum()
    smoothed = (cluster + eps) / (total + k * eps) * total
    torch.testing.assert_close(vq.cluster_size, cluster)
    torch.testing.assert_close(vq.embed_sum, embed)
    torch.testing.assert_close(vq.codebook, embed / smoothed[:, None])
    assert not any(p.requires_grad for p in vq.buffers()) and not list(vq.parameters())


def test_ema_keeps_unused_codes_in_place():
    """One pseudo-count per code at start: an unused code is not divided by eps and flung away."""
    vq = _vq(4, 2, ema=True).train()
    start = vq.codebook.clone()
    vq.codebook[0] = torch.tensor([5.0, 5.0])
    vq.embed_sum[0] = torch.tensor([5.0, 5.0])
    start[0] = 5.0
    for _ in range(3):
        vq(torch.tensor([[[5.1], [4.9]]]))  # only code 0 is ever used
    torch.testing.assert_close(vq.codebook[1:], start[1:], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_are_restarted_from_encoder_outputs(ema):
    torch.manual_seed(0)
    vq = _vq(4, 2, ema=ema, dead_after=2).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 50.0]]))
        if ema:
            vq.embed_sum.copy_(vq.codebook)
    vq.initialised.fill_(True)
    z_e = torch.rand(3, 2, 5)  # near codes 0 and 1, far from 2 and 3
    z = set(map(tuple, z_e.movedim(1, -1).reshape(-1, 2).tolist()))
    first = vq(z_e)
    assert first.stats["dead_codes"].item() == 0 and vq.restarts.item() == 0
    assert vq.codebook[2:].abs().min().item() > 49.9  # unused for one step only: still in place
    second = vq(z_e)
    assert second.stats["dead_codes"].item() == 2 and vq.restarts.item() == 2
    for j in (2, 3):  # now copies of encoder outputs of the batch
        assert tuple(vq.codebook[j].tolist()) in z
    assert vq.steps_unused[2:].tolist() == [0, 0]


def test_kmeans_initialisation_lowers_quantisation_error():
    torch.manual_seed(0)
    centres = torch.randn(8, 4) * 5
    z = (centres[torch.randint(8, (400,))] + 0.3 * torch.randn(400, 4))

    def error(codebook):
        return squared_distances(z, codebook).min(1).values.mean().item()

    torch.manual_seed(1)
    random_rows = codebook_kmeans(z, 8, iters=0)  # the k-means start: 8 random data points
    torch.manual_seed(1)
    assert error(codebook_kmeans(z, 8, iters=10)) < 0.5 * error(random_rows)
    # through the layer: k-means on the first training batch beats the uniform initialisation
    errors = {}
    for init in (True, False):
        torch.manual_seed(2)
        vq = VectorQuantizer(8, 4, QuantizerConfig(kmeans_init=init, ema=False, dead_after=0)).train()
        errors[init] = vq(z.T[None]).commitment_loss.item()
        assert bool(vq.initialised)
    assert errors[True] < 0.1 * errors[False]


# --- the models --------------------------------------------------------------------------------------
VQ_MODELS = ["vqvae", "vqvae2"]


def _tiny(name: str):
    return build_model(name, **tiny_overrides(name))


def test_code_grids_on_fashion_mnist_sizes():
    m = build_model("vqvae", channels=(8, 8), embedding_dim=4, num_codes=16, res_channels=4)
    m2 = build_model("vqvae2", channels=(8, 8), embedding_dim=4, num_codes=16, res_channels=4, top_channels=8)
    assert m.code_shapes == [(7, 7)] and m.num_codes == [16]
    assert m2.code_shapes == [(3, 3), (7, 7)] and m2.num_codes == [16, 16]
    x = torch.rand(2, 1, 28, 28)
    top, bottom = m2.encode_codes(x)
    assert m.encode_codes(x).shape == (2, 7, 7) and top.shape == (2, 3, 3) and bottom.shape == (2, 7, 7)
    assert m.reconstruct(x).shape == m2.reconstruct(x).shape == x.shape
    assert m.latent_dim == 4 * 49 and m2.latent_dim == 4 * (9 + 49)


@pytest.mark.parametrize("name", VQ_MODELS)
def test_code_api_round_trips(name):
    m = _tiny(name)
    m(torch.rand(8, *TINY_SHAPE))  # one training pass: initialises and updates the codebooks
    m.eval()
    x = torch.rand(5, *TINY_SHAPE)
    codes = m.encode_codes(x)
    levels = [codes] if isinstance(codes, torch.Tensor) else list(codes)
    assert [tuple(c.shape[1:]) for c in levels] == m.code_shapes
    assert all(c.dtype == torch.long and c.min() >= 0 and c.max() < k for c, k in zip(levels, m.num_codes))
    torch.testing.assert_close(m.codes_to_latent(codes), m.encode(x).mean, rtol=0, atol=0)
    torch.testing.assert_close(m.decode_codes(codes), m.reconstruct(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="level"):
        m.codes_to_latent([levels[0]] * (len(levels) + 1))


@pytest.mark.parametrize("name", VQ_MODELS)
def test_encoding_never_changes_state(name):
    m = _tiny(name).train()
    m(torch.rand(8, *TINY_SHAPE))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(5, *TINY_SHAPE)
    m.encode(x), m.encode_codes(x), m.reconstruct(x)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class _UniformCodes:
    """A stand-in code prior: uniform codes; records what it was conditioned on."""

    def __init__(self, k: int, shape: tuple[int, int]) -> None:
        self.k, self.shape, self.cond = k, shape, "unset"

    def sample(self, n: int, temperature: float = 1.0, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.cond = cond
        return torch.randint(self.k, (n, *self.shape))


@pytest.mark.parametrize("name", VQ_MODELS)
def test_sampling_needs_an_attached_code_prior(name, tmp_path):
    m = _tiny(name).eval()
    with pytest.raises(ValueError, match="no prior"):
        m.sample(3)
    priors = [_UniformCodes(k, s) for k, s in zip(m.num_codes, m.code_shapes)]
    with pytest.raises(ValueError, match="code priors"):
        m.attach_prior(*priors, priors[0])
    assert m.attach_prior(*priors) is m and m.prior == tuple(priors)
    assert m.sample(3, temperature=0.5).shape == (3, *TINY_SHAPE)
    assert priors[0].cond is None
    if len(priors) == 2:  # the bottom prior sees the top codes
        assert priors[1].cond.shape == (3, *m.code_shapes[0])
    m.save_pretrained(tmp_path)  # the priors are not part of the autoencoder's weights
    assert Autoencoder.from_pretrained(tmp_path).prior is None
    assert m.attach_prior().prior is None


def test_vqvae2_bottom_codes_depend_on_the_top():
    torch.manual_seed(0)
    m = build_model("vqvae2", channels=(8, 8), embedding_dim=4, num_codes=16, res_channels=4, top_channels=8)
    m(torch.rand(16, 1, 28, 28))  # k-means initialisation of both codebooks
    m.eval()
    x = torch.rand(4, 1, 28, 28)
    top, bottom = m.encode_codes(x)
    with torch.no_grad():  # other top latents, same bottom encoder: other bottom codes
        m.quantizers[0].codebook.copy_(torch.randn_like(m.quantizers[0].codebook))
    top2, bottom2 = m.encode_codes(x)
    assert not torch.equal(bottom, bottom2)
    # and the decoder reads both levels: changing only the top codes changes the image
    assert not torch.equal(m.decode_codes((top, bottom)), m.decode_codes(((top + 1) % 16, bottom)))


def test_vq_terms_and_weights():
    m = build_model("vqvae", **tiny_overrides("vqvae"))
    assert m.objective.weights(None) == {"recon": 1.0, "vq_codebook": 0.0, "vq_commitment": 0.25}
    m2 = build_model("vqvae2", **tiny_overrides("vqvae2"))
    assert m2.objective.weights(None) == {"recon": 1.0, "vq_codebook": 1.0, "vq_commitment": 0.25}
    out = m2(torch.rand(5, *TINY_SHAPE))
    levels = m2._quantize(out.x, update=False)  # the summed per-example losses of both levels
    torch.testing.assert_close(out.aux["vq_commitment"], levels[0].commitment_loss + levels[1].commitment_loss)
    assert set(out.aux["vq_stats"]) >= {"perplexity_top", "codes_used_bottom", "dead_codes_top"}


# --- training: exact resume, per-epoch codebook health, real data ---------------------------------------
def _data(n: int, seed: int) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.randint(0, 256, (n, *TINY_SHAPE), generator=g, dtype=torch.uint8),
                              torch.randint(0, 3, (n,), generator=g))


def _trainer_cfg() -> TrainerConfig:
    return TrainerConfig(epochs=3, batch_size=16, checkpoint_every=4, log_every=1, images=False, progress=False,
                         lr_schedule="cosine", warmup_steps=3, grad_clip=5.0, seed=7)


@pytest.mark.parametrize("name", VQ_MODELS)
def test_resume_is_bit_identical_with_codebook_state(name, tmp_path):
    data, test = _data(90, 0), _data(30, 1)

    def model(seed):
        torch.manual_seed(seed)
        return _tiny(name)

    full = Trainer(model(0), data, test, _trainer_cfg(), run_dir=tmp_path / "a")
    metrics = full.fit()
    suffixes = [""] if name == "vqvae" else ["_top", "_bottom"]
    for s in suffixes:  # the per-epoch evaluation reports codebook health, and no IWAE / KL
        assert {f"perplexity{s}", f"codes_used{s}", f"dead_codes{s}", f"restarted_codes{s}"} <= set(metrics)
    assert not any(k.startswith(("nll_iwae", "kl")) for k in metrics)
    assert sum(q.restarts.item() for q in full.model.quantizers) > 0  # restarts (RNG draws) did happen

    first = Trainer(model(0), data, test, _trainer_cfg(), run_dir=tmp_path / "b")
    fit_until_interrupted(first, 7)
    resumed = Trainer(model(99), data, test, _trainer_cfg(), run_dir=tmp_path / "b")
    resumed.fit(resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert any("cluster_size" in k for k in a) == (name == "vqvae")  # EMA statistics are in the state
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda p: [{k: v for k, v in json.loads(ln).items() if k not in ("seconds", "samples_per_second")}  # noqa: E731
                       for ln in p.read_text().splitlines()]
    assert strip(tmp_path / "a" / "metrics.jsonl") == strip(tmp_path / "b" / "metrics.jsonl")


def test_trainer_pictures_with_an_attached_code_prior(tmp_path):
    """Per-epoch samples come from the code prior; no continuous-latent traversals are attempted."""
    m = _tiny("vqvae2")
    m.attach_prior(*[_UniformCodes(k, s) for k, s in zip(m.num_codes, m.code_shapes)])
    cfg = TrainerConfig(epochs=1, batch_size=16, images=True, progress=False)
    Trainer(m, _data(32, 0), _data(16, 1), cfg, run_dir=tmp_path).fit()
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["reconstructions_epoch001.png",
                                                                        "samples_epoch001.png"]


def test_training_on_fashion_mnist_lowers_the_loss(shared_data):
    splits = load_data(DataConfig(name="fashion-mnist", train_subset=512, test_subset=128))
    torch.manual_seed(0)
    m = build_model("vqvae", image_shape=(1, 28, 28), channels=(16, 32), embedding_dim=16, num_codes=64,
                    res_blocks=1, res_channels=16)
    x_test = splits.test.get_batch(torch.arange(128)).x

    def test_loss() -> tuple[float, float]:
        m.eval()
        with torch.no_grad():
            out = m(x_test)
            return m.objective(out, m).loss.item(), (out.px_z.mean - x_test).pow(2).mean().item()

    before, mse_before = test_loss()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for i in range(40):
        x = splits.train.get_batch(torch.arange(64 * (i % 8), 64 * (i % 8 + 1))).x
        m.train()
        opt.zero_grad()
        m.loss(Batch(x), step=i).loss.backward()
        opt.step()
    after, mse_after = test_loss()
    assert after < before and mse_after < 0.5 * mse_before
    assert codebook_usage(torch.bincount(m.encode_codes(x_test).flatten(), minlength=64))["codes_used"] > 8

"""TD-VAE: causality of the belief, the paper's loss by hand, one transition code for every jump,
exact resume, and the rollout metrics on cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fit_until_interrupted
from torch.nn import functional as F

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.data.base import DatasetInfo
from aelab.data.sequences import SequenceSplit, roll_frames
from aelab.metrics.sequence import (
    circular_centre,
    circular_distance,
    moving_mnist_rollout,
    recentre,
    sequence_bound,
    signed_displacement,
)
from aelab.models.tdvae import TDVAEConfig, sequence_from_data
from aelab.protocol import Capabilities, Model, build_model
from aelab.report.sequence import write_rollout
from aelab.training.trainer import Trainer, TrainerConfig

SHAPE = (1, 5, 4)


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = {"image_shape": SHAPE, "backbone": {"hidden": (12,)}, "belief_dim": 6, "latent_dim": 2, "hidden": 7,
           "max_jump": 3, "pairs": 2} | kw
    return build_model("tdvae", **cfg)


def test_the_belief_at_t_depends_only_on_frames_up_to_t():
    model = _tiny()
    x = torch.rand(2, 6, *SHAPE, requires_grad=True)
    b = model.beliefs(x)
    for t in range(6):
        (grad,) = torch.autograd.grad(b[:, t].sum(), x, retain_graph=True)
        per_frame = grad.abs().flatten(2).sum(-1)  # (B, T)
        assert (per_frame[:, t + 1:] == 0).all(), t
        assert (per_frame[:, : t + 1] > 0).all(), t


def _gaussian(net, inputs):
    """(mu, log sigma) of one _GaussianMLP, read off its layers."""
    h = net.net(inputs)
    mu, raw = net.head.linear(h).chunk(2, -1)
    return mu, raw.clamp(-10, 10)


def _log_normal(z, mu, log_sigma):
    return (-0.5 * ((z - mu) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)


def _kl_normal(mq, lq, mp, lp):
    return (lp - lq + (torch.exp(2 * lq) + (mq - mp) ** 2) / (2 * torch.exp(2 * lp)) - 0.5).sum(-1)


def test_the_loss_is_the_papers_objective_by_hand():
    """Eq. 6 of Gregor et al. for fixed pairs, computed layer by layer with hand-written densities,
    drawing the same noise in the same order as the model."""
    model = _tiny()
    x = (torch.rand(3, 7, *SHAPE) > 0.5).float()
    t1, t2 = torch.tensor([[0, 2], [1, 3], [4, 5]]), torch.tensor([[3, 3], [2, 6], [6, 6]])
    torch.manual_seed(1)
    lo = model._pairs_loss(x, t1, t2, step=None)

    torch.manual_seed(1)
    d = model.config.latent_dim
    rows = torch.arange(3).unsqueeze(1).expand_as(t1)
    h = model.encoder(x.flatten(0, 1)).view(3, 7, -1)
    b = model.belief(h)[0]
    b1, b2 = b[rows, t1].flatten(0, 1), b[rows, t2].flatten(0, 1)
    dt = F.one_hot((t2 - t1).flatten() - 1, 3).float()
    # z_t2 ~ p_B(. | b_t2), top layer first
    m, s = _gaussian(model.posterior.nets[0], b2)
    z2_top = m + torch.randn_like(m) * s.exp()
    log_pb2 = _log_normal(z2_top, m, s)
    m, s = _gaussian(model.posterior.nets[1], torch.cat([b2, z2_top], -1))
    z2_bot = m + torch.randn_like(m) * s.exp()
    log_pb2 = log_pb2 + _log_normal(z2_bot, m, s)
    z2 = torch.cat([z2_top, z2_bot], -1)
    # z_t1 ~ q(. | z_t2, b_t1, b_t2, dt), KL to p_B(. | b_t1) layer by layer along the sample
    ctx = torch.cat([z2, b1, b2, dt], -1)
    mq, sq = _gaussian(model.smoothing.nets[0], ctx)
    z1_top = mq + torch.randn_like(mq) * sq.exp()
    mp, sp = _gaussian(model.posterior.nets[0], b1)
    kl = _kl_normal(mq, sq, mp, sp)
    mq, sq = _gaussian(model.smoothing.nets[1], torch.cat([ctx, z1_top], -1))
    z1_bot = mq + torch.randn_like(mq) * sq.exp()
    mp, sp = _gaussian(model.posterior.nets[1], torch.cat([b1, z1_top], -1))
    kl = kl + _kl_normal(mq, sq, mp, sp)
    z1 = torch.cat([z1_top, z1_bot], -1)
    # p_T(z_t2 | z_t1, dt): the mean moves z_t1 (residual)
    m, s = _gaussian(model.transition.nets[0], torch.cat([z1, dt], -1))
    log_pt = _log_normal(z2_top, m + z1[:, :d], s)
    m, s = _gaussian(model.transition.nets[1], torch.cat([z1, dt, z2_top], -1))
    log_pt = log_pt + _log_normal(z2_bot, m + z1[:, d:], s)
    # -log p(x_t2 | z_t2), Bernoulli
    logits = model.decoder(z2)
    target = x[rows, t2].flatten(0, 1)
    recon = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(-1)
    per_pair = recon + kl + (log_pb2 - log_pt)

    torch.testing.assert_close(lo.per_example, per_pair.view(3, 2).mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lo.loss, per_pair.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lo.terms["kl"], kl.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lo.terms["transition"], (log_pb2 - log_pt).mean(), rtol=1e-5, atol=1e-5)


def test_pairs_are_drawn_inside_the_sequence_with_every_jump_length():
    model = _tiny(max_jump=3, pairs=50)
    torch.manual_seed(0)
    t1, t2 = model.draw_pairs(40, 5, torch.device("cpu"))
    dt = t2 - t1
    assert t1.min() >= 0 and t2.max() <= 4 and set(dt.unique().tolist()) == {1, 2, 3}
    assert set(t1[dt == 3].unique().tolist()) == {0, 1}  # t1 + 3 <= 4
    t1, t2 = model.draw_pairs(10, 2, torch.device("cpu"))  # 2 frames: only dt = 1 fits
    assert (t2 - t1 == 1).all()


def test_a_long_prediction_is_made_of_jumps_through_the_one_transition():
    """dt = 1 stepped k times and dt = k run the same code (``jump``); a one-step model chains k
    one-step jumps, a model with max_jump >= k makes one."""
    calls = []
    for max_jump, expected in [(1, [1, 1, 1]), (3, [3]), (2, [2, 1])]:
        model = _tiny(max_jump=max_jump)
        jump = model.jump
        calls.clear()
        model.jump = lambda z, dt, jump=jump: calls.append(dt) or jump(z, dt)
        z = torch.randn(4, model.state_dim)
        torch.manual_seed(3)
        a = model.predict(z, 3)
        assert calls == expected
        torch.manual_seed(3)
        b = z
        for dt in expected:
            b = jump(b, dt)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model = _tiny(max_jump=3)
    with pytest.raises(ValueError, match=r"1\.\.3 steps"):
        model.jump(torch.zeros(1, model.state_dim), 4)


def test_rollouts_start_from_the_belief_after_the_context():
    model = _tiny()
    x = torch.rand(2, 6, *SHAPE)
    torch.manual_seed(0)
    a = model.rollout(x[:, :4], [1, 2], samples=3)
    x2 = x.clone()
    x2[:, 4:] = 0  # frames after the context do not matter
    torch.manual_seed(0)
    b = model.rollout(x2[:, :4], [1, 2], samples=3)
    assert a.shape == (3, 2, 2, *SHAPE) and torch.equal(a, b)
    assert ((a >= 0) & (a <= 1)).all()


def test_the_sequence_bound_covers_every_consecutive_pair():
    model = _tiny()
    x = torch.rand(3, 5, *SHAPE)
    torch.manual_seed(0)
    bound = model.sequence_bound(x)
    torch.manual_seed(0)
    t1 = torch.arange(4).expand(3, 4)
    by_hand = model._pairs_loss(x, t1, t1 + 1, None)
    torch.testing.assert_close(bound.per_example, by_hand.per_example)
    out = sequence_bound(model, SequenceSplit(x), batch_size=3)  # the same noise as above
    assert out["elbo_per_frame"] == pytest.approx(-bound.per_example.mean().item(), rel=1e-4)
    assert out["recon"] + out["kl"] + out["transition"] == pytest.approx(-out["elbo_per_frame"], rel=1e-4)


def test_tdvae_resumes_bit_identically(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = SequenceSplit((torch.rand(40, 6, *SHAPE, generator=g) > 0.5).float())

    def trainer(run_dir):
        model = _tiny()
        cfg = TrainerConfig(epochs=2, batch_size=8, lr=3e-3, seed=4, progress=False, eval_limit=8, checkpoint_every=3)
        return Trainer(model, data, data, cfg, run_dir=run_dir)

    straight = trainer(tmp_path / "a")
    straight.fit()
    first = trainer(tmp_path / "b")
    fit_until_interrupted(first, 8)  # 5 steps an epoch: the last checkpoint is the end of epoch 1 (step 5)
    resumed = trainer(tmp_path / "b")
    resumed.fit(resume=True)
    assert resumed.resumed_from == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert (tmp_path / "b" / "images" / "rollout_epoch002.png").is_file()


def test_tdvae_refuses_data_that_are_not_sequences_and_bad_settings():
    with pytest.raises(ConfigError, match=r"sequences of frames \(T, C, H, W\)"):
        sequence_from_data(TDVAEConfig(), DatasetInfo(name="mnist", shape=(1, 28, 28)))
    assert sequence_from_data(TDVAEConfig(), DatasetInfo(name="s", shape=(20, 1, 1, 3))).image_shape == (1, 1, 3)
    with pytest.raises(ConfigError, match="model.max_jump must be >= 1"):
        build_model("tdvae", max_jump=0)


# --- the rollout metrics on known answers -------------------------------------------------------------
def test_circular_centre_and_distance():
    img = torch.zeros(3, 1, 4, 10)
    img[0, ..., 3] = 1  # a column at 3
    img[1, ..., [9, 0, 1]] = 1  # wrapped around: centre 0
    assert circular_centre(img[:2]).tolist() == pytest.approx([3.0, 0.0], abs=1e-5)
    assert math.isnan(circular_centre(img[2:]).item())
    assert circular_distance(torch.tensor([9.0, 2.0]), torch.tensor([1.0, 7.0]), 10).tolist() == [2.0, 5.0]
    assert signed_displacement(torch.tensor([9.0, 1.0]), torch.tensor([1.0, 9.0]), 10).tolist() == [2.0, -2.0]


def test_recentre_puts_the_centre_of_mass_in_the_middle():
    img = torch.zeros(2, 1, 6, 28)
    img[0, ..., 25:28] = 1
    img[0, ..., 0:2] = 1  # a wrapped bar around column 27
    img[1, ..., 3:6] = 1
    centred = recentre(img)
    assert circular_centre(centred).tolist() == pytest.approx([14.0, 14.0], abs=0.51)
    assert centred.sum().item() == img.sum().item()


class _Oracle(Model):
    """Knows the true future: a rolled digit moves exactly as the data set moves it."""

    capabilities = Capabilities(sequence=True)

    def __init__(self, data):
        super().__init__()
        self.data, self.w = data, torch.nn.Parameter(torch.zeros(1))

    def rollout(self, context, steps, samples=1):
        # the truth of the sequence these context frames start (they are looked up by their first frame)
        t0 = context.shape[1]
        idx = [next(i for i in range(len(self.data)) if torch.equal(self.data.get_batch(torch.tensor([i])).x[0, 0],
                                                                     c[0])) for c in context]
        x = self.data.get_batch(torch.tensor(idx)).x
        return torch.stack([x[:, t0 - 1 + sum(steps[: j + 1])] for j in range(len(steps))], 1).unsqueeze(0)


class _Classifier(torch.nn.Module):
    """Reads the digit off the number of lit pixels (the test's digits are bars of k + 1 columns);
    the feature classifier's interface: ``features`` then ``head``."""

    def __init__(self):
        super().__init__()
        self.head, self.unused = torch.nn.Identity(), torch.nn.Parameter(torch.zeros(1))

    def features(self, x):
        k = x.flatten(1).sum(1).div(x.shape[-2]).round().long() - 1
        return F.one_hot(k.clamp(0, 9), 10).float() * 10


def test_the_moving_mnist_scores_of_an_oracle_and_of_copying():
    n, t, w = 12, 8, 28
    digits = torch.arange(n) % 10
    base = torch.zeros(n, w, w)
    for i, k in enumerate(digits.tolist()):
        base[i, :, 10 : 11 + k] = 1  # a bar k + 1 columns wide
    direction = torch.arange(n) % 2
    shifts = (2 * direction - 1).unsqueeze(1) * torch.arange(t)
    x = roll_frames(base, shifts).unsqueeze(2)
    data = SequenceSplit(x, y=torch.stack([digits, direction, torch.ones(n, dtype=torch.long)], 1))
    oracle = moving_mnist_rollout(_Oracle(data), data, _Classifier(), context=3, dts=(1, 4), limit=None)
    assert oracle["digit_acc_truth"] == 1.0 and oracle["digit_acc_dt4"] == 1.0
    assert oracle["position_err_dt1"] == pytest.approx(0, abs=1e-4) and oracle["direction_acc_dt4"] == 1.0
    copy = moving_mnist_rollout(None, data, _Classifier(), context=3, dts=(1, 4), limit=None)
    assert copy["digit_acc_dt4"] == 1.0 and copy["direction_acc_dt1"] == 0.5
    assert copy["position_err_dt4"] == pytest.approx(4.0, abs=1e-4)
    with pytest.raises(ValueError, match="context - 1 \\+ dt < 8"):
        moving_mnist_rollout(None, data, _Classifier(), context=3, dts=(6,))


def test_batch_of_sequences_drives_the_model_through_the_trainer_loss():
    model = _tiny()
    lo = model.loss(Batch(torch.rand(4, 5, *SHAPE)), step=0)
    assert lo.per_example.shape == (4,) and torch.isfinite(lo.loss)


def test_rollout_pictures_of_frames_and_of_signals(tmp_path):
    """Frames get a strip; signals of any width D get trajectory panels (a panel per dimension)."""
    frames = write_rollout(_tiny(), SequenceSplit(torch.rand(3, 6, *SHAPE)), tmp_path / "f.png", 3, [1, 2], 2, n=2)
    signals = build_model("tdvae", image_shape=(1, 1, 2), backbone={"hidden": (8,)}, belief_dim=6, latent_dim=2,
                          hidden=7, max_jump=2, likelihood={"name": "gaussian"})
    traj = write_rollout(signals, SequenceSplit(torch.randn(4, 8, 1, 1, 2)), tmp_path / "s.png", 4, [1, 1, 2], 20, n=2)
    assert frames.is_file() and traj.is_file()
    with pytest.raises(ValueError, match="--context must be 1..7"):
        write_rollout(signals, SequenceSplit(torch.randn(4, 8, 1, 1, 2)), tmp_path / "x.png", 8, [1], 2)

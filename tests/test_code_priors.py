"""Autoregressive priors over code grids against independent computations.

Causality from autograd (exact receptive fields, no blind spot), log-probabilities against a
position-by-position loop, the sampler's distribution against the enumerated joint, greedy decoding
against teacher forcing, training towards a Markov chain's known entropy through the shared trainer
(with exact resume), conditioning, and save/load round trips.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch.nn import functional as F

from aelab.batch import Batch
from aelab.config import ConfigError, apply_overrides
from aelab.data.codes import CodeDataset
from aelab.metrics.evaluation import evaluate_loss_terms
from aelab.nn.attention import CausalSelfAttention, sinusoidal_encoding_2d
from aelab.nn.pixelcnn import GatedPixelCNN
from aelab.priors.pixelcnn import CodePrior, code_prior_config
from aelab.priors.vqvae2 import VQVAE2Prior
from aelab.protocol import build_model, from_pretrained
from aelab.registry import MODELS
from aelab.training.trainer import Trainer, TrainerConfig

K = 5
GRID = (4, 5)


def tiny(name: str, **kw) -> CodePrior:
    base = {"num_codes": K, "grid_shape": GRID, "channels": 8, "kernel_size": 3}
    if name == "pixelcnn":
        base |= {"layers": 3}
    else:
        base |= {"layers": 1, "blocks": 2, "heads": 2}
    return build_model(name, **(base | kw))


def tiny_vqvae2(num_classes: int = 0, top=(3, 3), bottom=(4, 5)) -> VQVAE2Prior:
    return build_model("vqvae2_prior", top={"num_codes": 3, "grid_shape": top, "channels": 8, "heads": 2, "blocks": 1,
                                           "layers": 1, "num_classes": num_classes},
                            bottom={"num_codes": K, "grid_shape": bottom, "channels": 8, "layers": 2,
                                    "kernel_size": 3, "cond_channels": 6, "num_classes": num_classes})


def conditioning(prior: CodePrior, n: int, seed: int = 0) -> dict:
    """Random conditioning inputs matching ``prior``'s config."""
    g = torch.Generator().manual_seed(seed)
    kw = {}
    if prior.config.cond_codes:
        kw["cond"] = torch.randint(0, prior.config.cond_codes, (n, *prior.config.cond_shape), generator=g)
    if prior.config.num_classes:
        kw["y"] = torch.randint(0, prior.config.num_classes, (n,), generator=g)
    return kw


VARIANTS = [
    ("pixelcnn", {}),
    ("pixelcnn", {"num_classes": 3}),
    ("pixelcnn", {"cond_codes": 4, "cond_shape": (2, 3), "cond_channels": 6}),
    ("pixelcnn", {"kernel_size": 5, "layers": 2, "num_classes": 2, "cond_codes": 3, "cond_shape": (5, 5)}),
    ("pixelsnail", {}),
    ("pixelsnail", {"positional": "fixed", "num_classes": 3}),
    ("pixelsnail", {"cond_codes": 4, "cond_shape": (7, 7), "cond_channels": 6}),
]
IDS = ["pixelcnn", "pixelcnn-class", "pixelcnn-cond", "pixelcnn-k5-class-cond",
       "pixelsnail", "pixelsnail-fixed-class", "pixelsnail-cond"]


def input_dependence(prior: CodePrior, r: int, c: int, **cond) -> torch.Tensor:
    """Boolean (H, W): where the logits at (r, c) have a non-zero gradient w.r.t. the embedded codes."""
    codes = torch.randint(0, K, (1, *prior.config.grid_shape))
    net = prior.net
    e = net.embed_codes(codes).detach().double().requires_grad_(True)
    net.double()
    cond_map = prior.conditioner.double()(cond["cond"]) if "cond" in cond else None
    logits = net.from_embedding(e, cond_map, cond.get("y"))
    (logits[0, :, r, c] * torch.randn(logits.shape[1], dtype=torch.double)).sum().backward()
    net.float()
    if prior.conditioner is not None:
        prior.conditioner.float()
    return e.grad[0].abs().sum(0) != 0


def raster_before(grid: tuple[int, int], r: int, c: int) -> torch.Tensor:
    return (torch.arange(grid[0] * grid[1]) < r * grid[1] + c).view(grid)


# --- causality ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_size,layers", [(3, 3), (5, 2)])
def test_pixelcnn_receptive_field_is_exactly_the_causal_cone(kernel_size, layers):
    """Gradients are zero at every position >= i and non-zero on the whole cone of earlier positions
    that L layers of kernel k reach: rows r - L p .. r - 1 at columns c +- L p (upper right included:
    no blind spot), and row r at columns c - L p .. c - 1."""
    grid = (6, 8)
    prior = build_model("pixelcnn", num_codes=K, grid_shape=grid, channels=6, layers=layers,
                             kernel_size=kernel_size, num_classes=2)
    reach = layers * (kernel_size // 2)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    for r, c in itertools.product(range(grid[0]), range(grid[1])):
        expected = (((rows < r) & (rows >= r - reach) & ((cols - c).abs() <= reach))
                    | ((rows == r) & (cols < c) & (cols >= c - reach)))
        got = input_dependence(prior, r, c, y=torch.tensor([1]))
        assert torch.equal(got, expected), (r, c)
        assert not (got & ~raster_before(grid, r, c)).any()
    # the upper-right neighbour, the blind spot of a plain masked PixelCNN, is seen
    assert input_dependence(prior, 3, 4, y=torch.tensor([0]))[2, 5]


@pytest.mark.parametrize("positional", ["learned", "fixed"])
def test_pixelsnail_logits_depend_on_every_earlier_code_and_nothing_else(positional):
    grid = (4, 6)
    prior = build_model("pixelsnail", num_codes=K, grid_shape=grid, channels=8, blocks=1, layers=1, heads=2,
                             kernel_size=3, positional=positional, cond_codes=3, cond_shape=(2, 2), cond_channels=4)
    cond = torch.randint(0, 3, (1, 2, 2))
    for r, c in itertools.product(range(grid[0]), range(grid[1])):
        # attention reaches every earlier position, however far (a conv stack of this depth would not)
        assert torch.equal(input_dependence(prior, r, c, cond=cond), raster_before(grid, r, c)), (r, c)


def test_attention_reads_strictly_earlier_memory_and_its_own_query_only():
    torch.manual_seed(0)
    attn = CausalSelfAttention(query_dim=6, memory_dim=10, heads=2).double()
    n = 7
    q = torch.randn(1, n, 6, dtype=torch.double, requires_grad=True)
    m = torch.randn(1, n, 10, dtype=torch.double, requires_grad=True)
    out = attn(q, m)
    assert torch.isfinite(out).all()
    for i in range(n):
        gq, gm = torch.autograd.grad(out[0, i].sum(), (q, m), retain_graph=True)
        dep_m = gm[0].abs().sum(1) != 0
        assert torch.equal(dep_m, torch.arange(n) < i), i
        dep_q = gq[0].abs().sum(1) != 0
        # query 0 reads only the null slot: a single softmax weight of 1, so its query does not matter
        assert torch.equal(dep_q, (torch.arange(n) == i) & (i > 0)), i
    # the first output is the (learned) null value, whatever the inputs
    other = attn(torch.randn(1, n, 6, dtype=torch.double), torch.randn(1, n, 10, dtype=torch.double))
    torch.testing.assert_close(other[0, 0], out[0, 0])


def test_sinusoidal_encoding_separates_positions():
    pe = sinusoidal_encoding_2d(12, 5, 7).flatten(1).T  # (HW, C)
    assert torch.cdist(pe, pe).add(torch.eye(35)).min() > 1e-3


def test_the_sampling_protocol_gives_the_teacher_forced_logits():
    """What sampling relies on: ``start_row`` + ``logits_at`` (the PixelCNN computes one vertical row
    per row from cached rows above and runs the horizontal stack on the row's first columns) equal
    the full network's logits, and read no code at or after the position (those are scrambled here)."""
    for name, kw in VARIANTS:
        prior = tiny(name, **kw).eval()
        codes = torch.randint(0, K, (3, *GRID))
        cond = conditioning(prior, 3)
        cond_map = prior.conditioner(cond["cond"]) if "cond" in cond else None
        full = prior.net(codes, cond_map, cond.get("y"))
        state = None
        for r in range(GRID[0]):
            state = prior.net.start_row(scrambled_from(codes, r, 0), r, cond_map, cond.get("y"), state)
            for c in range(GRID[1]):
                logits = prior.net.logits_at(scrambled_from(codes, r, c), r, c, state)
                torch.testing.assert_close(logits, full[:, :, r, c], atol=1e-5, rtol=1e-5,
                                           msg=f"{name} {kw} {(r, c)}")
    with pytest.raises(ValueError, match="in order"):
        tiny("pixelcnn").net.start_row(codes, 2)


def scrambled_from(codes: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """``codes`` with every position from (r, c) on in raster order replaced by random codes."""
    flat = codes.clone().flatten(1)
    i = r * codes.shape[2] + c
    flat[:, i:] = torch.randint(0, K, (codes.shape[0], flat.shape[1] - i))
    return flat.view_as(codes)


# --- log_prob ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_log_prob_is_the_sum_of_per_position_log_probs_given_only_earlier_codes(name, kw):
    """The loop scores position i on a grid whose codes at positions >= i are replaced by noise."""
    prior = tiny(name, **kw).eval()
    codes = torch.randint(0, K, (4, *GRID))
    cond = conditioning(prior, 4)
    height, width = GRID
    expected = torch.zeros(4)
    for i in range(height * width):
        r, c = divmod(i, width)
        scrambled = codes.clone().view(4, -1)
        scrambled[:, i:] = torch.randint(0, K, (4, height * width - i))
        logits = prior.logits(scrambled.view(4, *GRID), **cond)[:, :, r, c]
        expected += F.log_softmax(logits, dim=1).gather(1, codes[:, r, c, None]).squeeze(1)
    torch.testing.assert_close(prior.log_prob(codes, **cond), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(prior(codes, **cond).log_prob(codes), expected, atol=1e-4, rtol=1e-5)
    out = prior.loss(Batch(codes, cond.get("y"), cond=cond.get("cond")))
    torch.testing.assert_close(out.per_example, -expected, atol=1e-4, rtol=1e-5)
    assert out.per_example.shape == (4,)
    torch.testing.assert_close(out.terms["bits_per_code"], -expected.mean() / (height * width * math.log(2)))


def test_conditioning_changes_the_output():
    codes = torch.randint(0, K, (2, *GRID))
    for name in ("pixelcnn", "pixelsnail"):
        prior = tiny(name, num_classes=3).eval()
        a, b = prior.log_prob(codes, y=0), prior.log_prob(codes, y=2)
        assert (a - b).abs().min() > 1e-6
        # the bottom prior sees the whole top grid: its bottom-right cell moves the first position's logits
        prior = tiny(name, cond_codes=4, cond_shape=(3, 3), cond_channels=6).eval()
        top = torch.randint(0, 4, (2, 3, 3))
        other = top.clone()
        other[:, 2, 2] = (other[:, 2, 2] + 1) % 4
        la, lb = prior.logits(codes, cond=top), prior.logits(codes, cond=other)
        assert (la[:, :, 0, 0] - lb[:, :, 0, 0]).abs().max() > 1e-6


def test_conditioning_is_required_and_checked():
    prior = tiny("pixelcnn", num_classes=3, cond_codes=4, cond_shape=(2, 2))
    codes = torch.randint(0, K, (2, *GRID))
    with pytest.raises(ValueError, match="pass labels"):
        prior.log_prob(codes, cond=torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pass cond"):
        prior.log_prob(codes, y=1)
    with pytest.raises(ValueError, match="cond must have shape"):
        prior.log_prob(codes, cond=torch.zeros(2, 3, 3, dtype=torch.long), y=1)
    with pytest.raises(ValueError, match="pass cond"):
        prior.loss(Batch(codes, torch.ones(2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 5\)"):
        tiny("pixelcnn").log_prob(torch.full((1, *GRID), K))
    with pytest.raises(ValueError, match="shape"):
        tiny("pixelcnn").log_prob(torch.zeros(1, 3, 3, dtype=torch.long))


# --- sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_greedy_samples_are_the_teacher_forced_argmax(name, kw):
    prior = tiny(name, **kw).eval()
    cond = conditioning(prior, 6)
    greedy = prior.sample(6, temperature=0.0, **cond)
    assert greedy.shape == (6, *GRID) and greedy.dtype == torch.long
    torch.testing.assert_close(prior.logits(greedy, **cond).argmax(1), greedy)
    # a tiny temperature is the mode too (the random draws cannot move it)
    cold = prior.sample(6, temperature=1e-6, generator=torch.Generator().manual_seed(3), **cond)
    torch.testing.assert_close(cold, greedy)
    # a fixed generator gives the same grids
    a = prior.sample(6, generator=torch.Generator().manual_seed(5), **cond)
    b = prior.sample(6, generator=torch.Generator().manual_seed(5), **cond)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["pixelcnn", "pixelsnail"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sample_frequencies_match_the_enumerated_joint(name, temperature):
    """Over all 3^4 grids of a 2x2 prior: the tempered teacher-forced joint sums to one and the
    sampler's frequencies match it: their total variation is within 1.5x its expected sampling noise
    ``sum_i sqrt(2 p_i / (pi n)) / 2``, while the product of the joint's marginals (what a sampler that
    ignored earlier codes would draw) lies several noise levels away."""
    k, grid = 3, (2, 2)
    kw = {"layers": 2} if name == "pixelcnn" else {"layers": 1, "blocks": 1, "heads": 2}
    prior = build_model(name, num_codes=k, grid_shape=grid, channels=8, kernel_size=3, **kw).eval()
    with torch.no_grad():
        for p in prior.net.parameters():  # larger weights: a peaked, strongly dependent distribution
            p.mul_(3.0)
        prior.net.head[-1].weight.mul_(3.0)
        grids = torch.tensor(list(itertools.product(range(k), repeat=4))).view(-1, *grid)
        logp = -F.cross_entropy(prior.logits(grids) / temperature, grids, reduction="none").flatten(1).sum(1)
    joint = logp.exp()
    torch.testing.assert_close(joint.sum(), torch.tensor(1.0))
    n = 20000
    samples = prior.sample(n, temperature=temperature, generator=torch.Generator().manual_seed(0))
    index = (samples.view(n, 4) * torch.tensor([27, 9, 3, 1])).sum(1)
    freq = torch.bincount(index, minlength=k**4).float() / n
    noise = 0.5 * (2 * joint / (math.pi * n)).sqrt().sum()
    assert 0.5 * (freq - joint).abs().sum() < 1.5 * noise
    marg = [torch.stack([joint[grids.view(-1, 4)[:, j] == v].sum() for v in range(k)]) for j in range(4)]
    product = marg[0][grids.view(-1, 4)[:, 0]] * marg[1][grids.view(-1, 4)[:, 1]] \
        * marg[2][grids.view(-1, 4)[:, 2]] * marg[3][grids.view(-1, 4)[:, 3]]
    assert 0.5 * (product - joint).abs().sum() > 10 * noise


def test_invalid_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        tiny("pixelcnn").sample(2, temperature=-1.0)


# --- VQ-VAE-2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("top", [(3, 3), (2, 4), (5, 6)])
def test_vqvae2_prior_is_top_times_bottom_given_top(top):
    prior = tiny_vqvae2(num_classes=2, top=top).eval()
    assert prior.bottom.config.cond_codes == 3 and prior.bottom.config.cond_shape == top
    t, b = prior.sample(5, temperature=0.8, y=torch.tensor([0, 1, 1, 0, 1]),
                        generator=torch.Generator().manual_seed(0))
    assert t.shape == (5, *top) and b.shape == (5, *GRID)
    y = torch.tensor([0, 1, 1, 0, 1])
    expected = prior.top.log_prob(t, y=y) + prior.bottom.log_prob(b, cond=t, y=y)
    torch.testing.assert_close(prior.log_prob(t, b, y), expected)
    out = prior.loss(Batch(b, y, cond=t))
    torch.testing.assert_close(out.per_example, -expected)
    assert set(out.terms) == {"nll_top", "nll_bottom", "bits_per_code"}
    # greedy: the top is the top prior's mode, the bottom the bottom prior's mode given that top
    gt, gb = prior.sample(3, temperature=0.0, y=1)
    torch.testing.assert_close(prior.top.logits(gt, y=1).argmax(1), gt)
    torch.testing.assert_close(prior.bottom.logits(gb, cond=gt, y=1).argmax(1), gb)


def test_vqvae2_config_derives_the_bottom_conditioning_from_the_top():
    cfg = code_prior_config("vqvae2_prior")
    cfg = apply_overrides(cfg, ["top.num_codes=64", "top.grid_shape=3,5"])
    assert cfg.bottom.cond_codes == 64 and cfg.bottom.cond_shape == (3, 5)
    with pytest.raises(ConfigError, match="heads"):
        apply_overrides(cfg, ["top.heads=3"])  # 128 channels are not a multiple of 3 heads
    assert {"pixelcnn", "pixelsnail", "vqvae2_prior"} <= set(MODELS.names())
    assert all(MODELS.get(n).family == "code prior" for n in ("pixelcnn", "pixelsnail", "vqvae2_prior"))


# --- training through the shared trainer -------------------------------------------------------
def markov_grids(n: int, k: int, grid: tuple[int, int], stay: float, seed: int) -> tuple[torch.Tensor, float]:
    """Grids where each code is (parent + 1) mod k with probability ``stay`` + (1 - stay) / k, else
    another code uniformly; the parent of (r, c) is (r, c - 1), of (r, 0) it is (r - 1, 0). The first
    code is uniform. Returns the grids and their exact entropy in nats per grid."""
    g = torch.Generator().manual_seed(seed)
    height, width = grid
    x = torch.zeros(n, height, width, dtype=torch.long)

    def step(parent: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(n, generator=g) < stay
        return torch.where(keep, (parent + 1) % k, torch.randint(0, k, (n,), generator=g))

    x[:, 0, 0] = torch.randint(0, k, (n,), generator=g)
    for r in range(height):
        for c in range(width):
            if (r, c) != (0, 0):
                x[:, r, c] = step(x[:, r, c - 1] if c else x[:, r - 1, 0])
    a = stay + (1 - stay) / k
    b = (1 - stay) / k
    h = -(a * math.log(a) + (k - 1) * b * math.log(b))
    return x, math.log(k) + (height * width - 1) * h


def markov_log_prob(x: torch.Tensor, k: int, stay: float) -> torch.Tensor:
    """The exact log-probability ``(N,)`` of :func:`markov_grids` grids under their chain."""
    parents = torch.cat([x[:, :, :-1].flatten(1), x[:, :-1, 0]], 1)
    children = torch.cat([x[:, :, 1:].flatten(1), x[:, 1:, 0]], 1)
    hit = (children - parents) % k == 1
    a, b = stay + (1 - stay) / k, (1 - stay) / k
    return -math.log(k) + torch.where(hit, math.log(a), math.log(b)).sum(1)


def test_training_approaches_the_true_entropy_and_greedy_samples_follow_the_chain(tmp_path):
    k, grid = 4, (3, 4)
    codes, entropy = markov_grids(1536, k, grid, stay=0.85, seed=0)
    train, test = CodeDataset(codes[:1024]), CodeDataset(codes[1024:])
    torch.manual_seed(0)
    prior = build_model("pixelcnn", num_codes=k, grid_shape=grid, channels=16, layers=3, kernel_size=3)
    before = evaluate_loss_terms(prior, test)
    cfg = TrainerConfig(epochs=12, batch_size=64, lr=1e-2, progress=False, checkpoint_every=10_000)
    metrics = Trainer(prior, train, test, cfg, tmp_path / "prior").fit()
    uniform = grid[0] * grid[1] * math.log(k)
    truth = -markov_log_prob(codes[1024:], k, stay=0.85).mean().item()  # the true chain's NLL on this split
    assert truth == pytest.approx(entropy, rel=0.03)
    assert before["nll"] > 0.95 * uniform
    # within 2% of the way from the uniform prior to the true model, and not (much) better than the truth
    assert truth - 0.1 < metrics["nll"] < truth + 0.02 * (uniform - truth), (metrics, truth)
    assert metrics["bits_per_code"] == pytest.approx(metrics["nll"] / (12 * math.log(2)))
    greedy = prior.eval().sample(16, temperature=0.0)
    steps = torch.cat([(greedy[:, :, 1:] - greedy[:, :, :-1]).flatten(1), greedy[:, 1:, 0] - greedy[:, :-1, 0]], 1)
    assert ((steps % k) == 1).all()  # every code is its parent's most likely successor
    # the run directory holds a loadable prior and the evaluation records
    loaded = from_pretrained(tmp_path / "prior")
    torch.testing.assert_close(loaded.log_prob(codes[:8]), prior.log_prob(codes[:8]))
    records = [json.loads(line) for line in (tmp_path / "prior" / "metrics.jsonl").read_text().splitlines()]
    assert {"nll", "bits_per_code"} <= set(records[-1])


def test_resumed_training_of_a_vqvae2_prior_is_exact(tmp_path):
    top = torch.randint(0, 3, (40, 3, 3))
    bottom = torch.randint(0, K, (40, *GRID))
    y = torch.arange(40) % 2
    data = CodeDataset(bottom, cond=top, labels=y)
    cfg = TrainerConfig(epochs=2, batch_size=16, progress=False, checkpoint_every=10_000)

    def fresh() -> VQVAE2Prior:
        torch.manual_seed(0)
        return tiny_vqvae2(num_classes=2)

    straight = fresh()
    Trainer(straight, data, data, cfg, tmp_path / "a").fit()
    Trainer(fresh(), data, data, TrainerConfig(epochs=1, batch_size=16, progress=False), tmp_path / "b").fit()
    resumed = fresh()  # a different process would start from a fresh init too: the checkpoint overwrites it
    metrics = Trainer(resumed, data, data, cfg, tmp_path / "b").fit(resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert set(metrics) >= {"nll", "nll_top", "nll_bottom", "bits_per_code"}
    loaded = from_pretrained(tmp_path / "b")
    assert isinstance(loaded, VQVAE2Prior)
    batch = (top[:4], bottom[:4], y[:4])
    torch.testing.assert_close(loaded.log_prob(*batch), resumed.eval().log_prob(*batch))
    with pytest.raises(ValueError, match="labels must be in"):  # a class-conditional prior needs the labels
        fresh().loss(CodeDataset(bottom, cond=top).get_batch(torch.arange(4)))


# --- persistence -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_save_load_round_trip(name, kw, tmp_path):
    prior = tiny(name, **kw)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights that differ from a fresh init
    prior.save_pretrained(tmp_path, extra_config={"source_run": "runs/vq"})
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model"] == name and meta["source_run"] == "runs/vq"
    loaded = from_pretrained(tmp_path)
    assert not loaded.training and loaded.config == prior.config
    codes = torch.randint(0, K, (3, *GRID))
    cond = conditioning(prior, 3)
    assert torch.equal(loaded.log_prob(codes, **cond), prior.eval().log_prob(codes, **cond))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_loading_a_directory_without_a_model_says_what_it_is(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"prior": "pixelcnn"}))
    with pytest.raises(ConfigError, match="'model' and 'model_config'"):
        from_pretrained(tmp_path)


def test_pixelcnn_accepts_any_grid_size():
    net = GatedPixelCNN(num_codes=K, channels=4, layers=2, kernel_size=3)
    for shape in [(1, 1), (1, 9), (9, 1), (5, 3)]:
        assert net(torch.randint(0, K, (2, *shape))).shape == (2, K, *shape)


def test_code_dataset_serves_codes_conditioning_and_labels():
    codes, top, y = torch.randint(0, K, (6, *GRID)), torch.randint(0, 3, (6, 2, 2)), torch.arange(6) % 3
    ds = CodeDataset(codes, cond=top, labels=y)
    batch = ds.get_batch(torch.tensor([5, 0]))
    assert torch.equal(batch.x, codes[[5, 0]]) and torch.equal(batch.cond, top[[5, 0]])
    assert torch.equal(batch.y, y[[5, 0]])
    sub = ds.subset(torch.tensor([2, 3]))
    assert len(sub) == 2 and torch.equal(sub.get_batch(torch.tensor([1])).x, ds.get_batch(torch.tensor([3])).x)
    plain = CodeDataset(codes, labels=y)
    assert torch.equal(plain.get_batch(torch.tensor([1])).x, codes[[1]])


def test_priors_fit_the_vqvae2_model_code_api():
    """Codes from the VQ-VAE-2 model feed the prior's data set, and the prior's levels attach to it."""
    from conftest import TINY_SHAPE, tiny_overrides

    from aelab.models import build_model

    model = build_model("vqvae2", **tiny_overrides("vqvae2")).eval()
    (top_shape, bottom_shape), (k_top, k_bottom) = model.code_shapes, model.num_codes
    prior = build_model("vqvae2_prior", top={"num_codes": k_top, "grid_shape": top_shape, "channels": 8, "heads": 2,
                                            "blocks": 1},
                             bottom={"num_codes": k_bottom, "grid_shape": bottom_shape, "channels": 8, "layers": 2,
                                     "kernel_size": 3, "cond_channels": 4})
    with torch.no_grad():
        top, bottom = model.encode_codes(torch.rand(6, *TINY_SHAPE))
    batch = CodeDataset(bottom, cond=top).get_batch(torch.arange(6))
    assert torch.isfinite(prior.loss(batch).loss)
    model.attach_prior(*prior.levels)
    assert model.sample(3).shape == (3, *TINY_SHAPE)

"""Hoyer sparsity, ARI/NMI and cluster assignment: exact values on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import aelab
from aelab.data.base import DatasetInfo, DataSplits, TensorImageDataset
from aelab.data.dsprites import NUM_IMAGES, DSprites
from aelab.data.splits import split_indices
from aelab.metrics.clustering import (
    adjusted_rand_index,
    clustering_scores,
    contingency_matrix,
    kmeans,
    mixture_assignments,
    normalized_mutual_info,
)
from aelab.metrics.sparsity import hoyer, hoyer_sparsity
from aelab.protocol import Capabilities, Model
from aelab.registry import METRICS


def _splits(test) -> DataSplits:
    """Registered metrics take ``(model, splits)``; these tests score the test split only."""
    return DataSplits(train=test, test=test, info=DatasetInfo("test", (1, 1, 1)))


# --- Hoyer sparsity -----------------------------------------------------------------------------
def test_hoyer_exact_values():
    z = torch.tensor([[0.0, -2.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [3.0, 3.0, -3.0, 3.0]], dtype=torch.float64)
    # (sqrt 4 - l1/l2) / (sqrt 4 - 1): 1 for one-hot; (2 - sqrt 2) for two equal entries; 0 for dense equal
    assert hoyer(z).tolist() == pytest.approx([1.0, 2 - math.sqrt(2), 0.0], abs=1e-12)


def test_one_hot_codes_are_fully_sparse_and_dense_equal_codes_not_at_all():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 6, (500,), generator=g)
    scale = torch.rand(500, 1, generator=g, dtype=torch.float64) + 0.1
    one_hot = torch.nn.functional.one_hot(idx, 6).double() * scale
    assert hoyer_sparsity(one_hot)["hoyer"] == pytest.approx(1.0, abs=1e-12)
    dense = scale * torch.ones(500, 6, dtype=torch.float64)
    assert hoyer_sparsity(dense)["hoyer"] == pytest.approx(0.0, abs=1e-12)
    constant = torch.ones(50, 6)  # zero std: left as is, still equal magnitudes
    assert hoyer_sparsity(constant)["hoyer"] == pytest.approx(0.0, abs=1e-12)


def test_normalising_by_the_data_std_removes_sparsity_from_small_scale_dimensions():
    # a second dimension 100x smaller looks nearly absent raw, but carries the same signal
    z = np.array([[1.0, 0.01], [-1.0, -0.01]])
    raw = (math.sqrt(2) - 1.01 / math.hypot(1.0, 0.01)) / (math.sqrt(2) - 1)
    assert hoyer_sparsity(z, normalize=False)["hoyer"] == pytest.approx(raw, abs=1e-12)
    assert hoyer_sparsity(z)["hoyer"] == pytest.approx(0.0, abs=1e-12)


def test_hoyer_rejects_single_dimension():
    with pytest.raises(ValueError, match="at least 2"):
        hoyer_sparsity(torch.ones(5, 1))


# --- ARI and NMI --------------------------------------------------------------------------------
def test_contingency_matrix_with_arbitrary_labels():
    table = contingency_matrix(torch.tensor([-1, 5, 5, 9]), torch.tensor([3, 3, 0, 0]))
    assert table.tolist() == [[0, 1], [1, 1], [1, 0]]


def test_ari_hand_computed():
    # sum C(n_ij, 2) = 1; rows (2, 2) -> 2 pairs; columns (2, 1, 1) -> 1; C(4, 2) = 6
    # expected = 2 * 1 / 6, max = 1.5: ARI = (1 - 1/3) / (1.5 - 1/3) = 4/7
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2])["ari"] == pytest.approx(4 / 7, abs=1e-12)
    # sum C(n_ij, 2) = 2; rows (3, 3) -> 6; columns (2, 2, 2) -> 3; C(6, 2) = 15: (2 - 1.2) / (4.5 - 1.2)
    a, b = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, b)["ari"] == pytest.approx(8 / 33, abs=1e-12)
    assert adjusted_rand_index(b, a)["ari"] == pytest.approx(8 / 33, abs=1e-12)


def test_nmi_hand_computed():
    # H(U) = ln 2, H(V) = ln 3, I = (2/3) ln 2: NMI = (2/3) ln 2 / ((ln 2 + ln 3) / 2)
    a, b = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_info(a, b)["nmi"] == pytest.approx(4 * math.log(2) / (3 * math.log(6)), abs=1e-12)


def test_ari_nmi_edge_cases():
    same = torch.tensor([3, 3, 1, 1, 2])
    assert clustering_scores(same, same + 10) == {"cluster_ari": 1.0, "cluster_nmi": 1.0}
    ones = torch.zeros(6, dtype=torch.long)
    assert clustering_scores(ones, ones) == {"cluster_ari": 1.0, "cluster_nmi": 1.0}
    # independent labelings: every cell of the table equal
    a, b = torch.arange(40) % 2, torch.arange(40) // 2 % 2
    assert adjusted_rand_index(a, b)["ari"] < 0.0
    assert normalized_mutual_info(a, b)["nmi"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="integer"):
        adjusted_rand_index(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))


# --- assignments --------------------------------------------------------------------------------
def _blobs(n: int = 300, k: int = 3, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 10
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5, y, centres


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    z, y, _ = _blobs()
    labels, centres, inertia = kmeans(z, 3, torch.Generator().manual_seed(0))
    assert adjusted_rand_index(y, labels)["ari"] == 1.0
    assert centres.shape == (3, 2) and inertia == pytest.approx(float(((z - centres[labels]) ** 2).sum()))
    again, _, _ = kmeans(z, 3, torch.Generator().manual_seed(0))
    assert torch.equal(labels, again)
    # fewer distinct points than clusters: still runs
    dup, _, _ = kmeans(torch.zeros(5, 2), 3, torch.Generator().manual_seed(0))
    assert dup.shape == (5,)


def test_mixture_assignment_uses_the_weights_not_only_the_distance():
    comps = Normal(torch.tensor([-1.0, 1.0]), torch.ones(2))
    prior = MixtureSameFamily(Categorical(logits=torch.tensor([0.9, 0.1]).log()), comps)
    # at z = 0.5, log 0.9 - 1.5^2 / 2 = -1.23 beats log 0.1 - 0.5^2 / 2 = -2.43
    assert mixture_assignments(torch.tensor([0.5, 2.0, -3.0]), prior).tolist() == [0, 1, 0]


def test_mixture_assignment_recovers_components():
    z, y, centres = _blobs(seed=1)
    comps = Independent(Normal(centres, torch.ones_like(centres)), 1)
    prior = MixtureSameFamily(Categorical(logits=torch.zeros(3, dtype=torch.float64)), comps)
    assert clustering_scores(y, mixture_assignments(z, prior)) == {"cluster_ari": 1.0, "cluster_nmi": 1.0}


# --- wrappers on models -------------------------------------------------------------------------
class _MixtureModel(Model):
    """A stand-in with ``encode`` and a mixture ``prior``: codes are the first two pixels."""

    name = "mixture_stand_in"
    capabilities = Capabilities(latent=True, latent_prior=True)

    def __init__(self, centres: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        comps = Independent(Normal(centres, torch.ones_like(centres)), 1)
        self.prior = lambda: MixtureSameFamily(Categorical(logits=torch.zeros(centres.shape[0])), comps)

    def encode(self, x: torch.Tensor) -> Independent:
        z = x.flatten(1)[:, :2] * 255 * self.scale
        return Independent(Normal(z, torch.ones_like(z)), 1)


def test_clustering_wrapper_with_a_mixture_prior():
    centres = torch.tensor([[20.0, 20.0], [200.0, 20.0], [20.0, 200.0]])
    y = torch.arange(60) % 3
    x = torch.zeros(60, 1, 2, 3, dtype=torch.uint8)
    x[:, 0, 0, :2] = centres[y].to(torch.uint8)
    x[:, 0, 0, :2] += (torch.arange(60) % 5)[:, None].to(torch.uint8)  # jitter inside each cluster
    data = TensorImageDataset(x, y)
    out = METRICS.get("clustering")(_MixtureModel(centres), _splits(data), limit=None)
    assert out == {"cluster_ari": 1.0, "cluster_nmi": 1.0, "cluster_count": 3.0}


@pytest.fixture(scope="module")
def tiny_model_and_dsprites():
    torch.manual_seed(0)
    model = aelab.build_model("vae", image_shape=(1, 64, 64), latent_dim=4,
                              backbone={"kind": "conv", "channels": (4, 8), "fc": 16})
    return model, DSprites(split_indices(NUM_IMAGES, 0, test_size=200)[1])


def test_sparsity_and_clustering_wrappers_run_on_dsprites(tiny_model_and_dsprites):
    model, data = tiny_model_and_dsprites
    sparsity = METRICS.get("sparsity")(model, _splits(data), limit=150)
    assert set(sparsity) == {"hoyer"} and 0.0 <= sparsity["hoyer"] <= 1.0
    clustering = METRICS.get("clustering")
    out = clustering(model, _splits(data), limit=150, factor=0)  # shape: 3 clusters by k-means
    assert set(out) == {"cluster_ari", "cluster_nmi", "cluster_count"}
    assert out["cluster_count"] == 3.0 and all(math.isfinite(v) for v in out.values())
    assert clustering(model, _splits(data), limit=150, factor=0) == out  # seeded
    with pytest.raises(ValueError, match="factor="):
        clustering(model, _splits(data), limit=20)


def test_clustering_assign_modes_on_a_mixture_prior_model():
    from aelab.data import DataConfig, load_data
    from aelab.metrics.clustering import clustering_metric
    from aelab.models import build_model

    data = load_data(DataConfig(name="pinwheel", test_subset=300))
    model = build_model("decomposition_vae", image_shape=(1, 1, 2), latent_dim=2, backbone={"hidden": (8,)},
                        likelihood={"name": "gaussian"}, prior={"name": "mixture", "components": 5})
    auto = clustering_metric(model, data.test)
    assert auto == clustering_metric(model, data.test, assign="prior")
    km = clustering_metric(model, data.test, assign="kmeans")
    assert km["cluster_count"] == 5 and set(km) == set(auto)
    with pytest.raises(ValueError, match="assign must be"):
        clustering_metric(model, data.test, assign="spectral")
    with pytest.raises(ValueError, match="needs a model with a mixture prior"):
        clustering_metric(build_model("vae", image_shape=(1, 1, 2), latent_dim=2), data.test, assign="prior")

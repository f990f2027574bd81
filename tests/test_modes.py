"""eval_mode and evaluation: the previous mode and the caller's RNG come back, also on an exception."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aelab.nn.modes import eval_mode, evaluation


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_even_on_error(training):
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train(training)
    with eval_mode(net):
        assert not net.training and not net[1].training
    assert net.training is training and net[1].training is training
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError
    assert net.training is training


def test_evaluation_seeds_a_private_stream_and_restores_the_callers():
    net = nn.Linear(2, 2).train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with evaluation(net, seed=1):
        inside = torch.rand(3)
        assert not net.training and not torch.is_grad_enabled()
    assert net.training and torch.equal(torch.rand(3), expected)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(1)))

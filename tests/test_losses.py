"""Each distillation loss against values worked out by hand."""
import math

import pytest
import torch

from pipeline.distill import losses
from pipeline.errors import UserError


def test_ce_matches_hand_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = (1/4, 3/4)
    assert losses.ce_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    assert losses.ce_loss(logits, torch.tensor([0])).item() == pytest.approx(-math.log(0.25))


def test_kd_hand_value_with_temperature():
    # T = 2: student logits / 2 = (0, 0) -> (1/2, 1/2); teacher logits / 2 = (0, ln 3) -> (1/4, 3/4)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, 2 * math.log(3.0)]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert losses.kd_loss(s, t, 2.0).item() == pytest.approx(kl * 4, rel=1e-5)


def test_kd_is_zero_for_equal_logits_and_averages_over_batch():
    s = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    assert losses.kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    both = losses.kd_loss(torch.zeros(2, 2), t, 1.0).item()
    one = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert both == pytest.approx(one / 2, rel=1e-5)  # second row contributes 0, batchmean halves


def test_hint_losses_hand_values():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [3.0, 4.5]]]])  # differences 0, 2, 0, -0.5
    assert losses.hint_loss(s, t, "mse").item() == pytest.approx((4 + 0.25) / 4)
    assert losses.hint_loss(s, t, "l1").item() == pytest.approx((2 + 0.5) / 4)
    assert losses.hint_loss(s, t, "smooth_l1").item() == pytest.approx((1.5 + 0.125) / 4)


def test_hint_rejects_bad_input():
    with pytest.raises(ValueError):
        losses.hint_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(UserError, match="hint_loss"):
        losses.hint_loss(torch.zeros(1), torch.zeros(1), "cosine2")


def test_attention_map_hand_value():
    # two channels over two positions: |a|^2 means = ((1+9)/2, (4+0)/2) = (5, 2); normalised by sqrt(29)
    f = torch.tensor([[[[1.0, 2.0]], [[-3.0, 0.0]]]])
    att = losses.attention_map(f)
    assert att.shape == (1, 2)
    assert att[0].tolist() == pytest.approx([5 / math.sqrt(29), 2 / math.sqrt(29)], rel=1e-6)


def test_at_loss_hand_value():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.6, 0.8]])
    assert losses.at_loss(a, b).item() == pytest.approx((0.16 + 0.64) / 2)
    assert losses.at_loss(a, a).item() == 0.0

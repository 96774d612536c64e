"""The look-ahead label scores (``seqcomm.dfl.label_lookahead``) on exact matrix values."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from seqcomm.dfl.label_lookahead import group_ids, lookahead_label_scores
from seqcomm.envs.matrix import best_message_value, random_table

O1, O2 = (g.flatten() for g in torch.meshgrid(torch.arange(2), torch.arange(4), indexing="ij"))


def scores(table: torch.Tensor, labelling: tuple[int, ...]) -> torch.Tensor:
    """``[8, 2]`` scores of every (o1, o2) sample for a hard labelling of o2."""
    probs = F.one_hot(torch.tensor(labelling)[O2], 2).float()
    return lookahead_label_scores(probs[None], table[O1, :, O2][None], O2[None], O1[None]).scores[0]


def value(table: torch.Tensor, labelling: tuple[int, ...]) -> float:
    """The team value when agent 1 best-responds to each (o1, label) pool (by hand)."""
    lab = torch.tensor(labelling)
    return sum(float(table[o1][:, lab == m].sum(1).max()) for o1 in range(2) for m in range(2)
               if (lab == m).any()) / 8


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_scores_are_the_value_change_of_moving_one_observation(seed):
    """Each score equals the hand-computed value after moving that o2 to that label, minus
    the current value: the look-ahead, not the receiver's current decision."""
    table = random_table(2, 2, 4, seed)
    for labelling in itertools.product(range(2), repeat=4):
        got = scores(table, labelling)
        for sample, k in itertools.product(range(8), range(2)):
            moved = list(labelling)
            moved[int(O2[sample])] = k
            expected = value(table, tuple(moved)) - value(table, labelling)
            assert float(got[sample, k]) == pytest.approx(expected, abs=1e-4)


def test_lookahead_leaves_the_best_response_fixed_point_of_table_1():
    """From 0101 (61.1, where no observation gains against the current receiver) the
    look-ahead finds the move to the best labelling (62.44); at the best nothing scores > 0."""
    table = random_table(2, 2, 4, 1)
    best, best_labels = best_message_value(table, 2)
    s = scores(table, (0, 1, 0, 1))
    assert s.max() > 1.0 and int(O2[s.max(-1).values.argmax()]) == 2
    assert value(table, (0, 1, 1, 1)) == pytest.approx(best, abs=1e-4)
    assert scores(table, best_labels).max() <= 1e-4


def test_group_ids_and_unavailable_actions():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    ids = group_ids(rows)
    assert ids[0] == ids[2] != ids[1]
    # with action 1 unavailable the pools can only pick action 0: no label is worth moving to
    table = random_table(2, 2, 4, 1)
    probs = torch.full((1, 8, 2), 0.5)
    mask = torch.tensor([True, False]).expand(1, 8, 2)
    out = lookahead_label_scores(probs, table[O1, :, O2][None], O2[None], O1[None], mask)
    assert out.scores.abs().max() < 1e-4 and torch.isinf(out.pooled[..., 1]).all()


def test_pooled_values_are_the_means_over_each_receiver_pool():
    """Labelling 0111 of table 1: o1 = 1 with label 0 pools o2 = 0 alone, so its pooled values
    are that column; with label 1 the mean of columns 1-3."""
    table = random_table(2, 2, 4, 1)
    probs = F.one_hot(torch.tensor([0, 1, 1, 1])[O2], 2).float()[None]
    pooled = lookahead_label_scores(probs, table[O1, :, O2][None], O2[None], O1[None]).pooled[0]
    sample = 4  # (o1, o2) = (1, 0)
    assert torch.allclose(pooled[sample, 0], table[1, :, 0])
    assert torch.allclose(pooled[sample, 1], table[1, :, 1:].mean(-1))

"""The return gap of a labelling as RGMComm's clustering objective (seqcomm.comm.return_gap)."""

import itertools

import pytest
import torch
from test_rgmcomm import all_pairs, lookup_critic
from torch.nn import functional as F

from seqcomm.comm.q_vectors import eq5_vectors, group_representatives
from seqcomm.comm.return_gap import ReturnGapObjective, group_max_sum
from seqcomm.comm.rgmcomm import LabelHeads
from seqcomm.envs.matrix import (
    RGMCOMM_TABLE,
    best_message_value,
    full_obs_value,
    message_value,
    random_table,
)
from seqcomm.rgmcomm_learner import cluster_labels


def matrix_objective(table: torch.Tensor) -> ReturnGapObjective:
    """Sender 2's objective over its distinct observations from exact Eq. 5 vectors."""
    obs, action, mask = all_pairs(table)
    qv = eq5_vectors(lookup_critic(table), obs, action, mask, top_k=16, prior=0.0)
    values, pair_group = qv.pair_values()
    reps = group_representatives(qv.sender_group)  # [n, G]: one sample per observation
    counts = torch.zeros_like(reps, dtype=torch.float).scatter_add_(
        1, qv.sender_group, torch.ones(qv.sender_group.shape))
    values = values.gather(1, reps.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    objective = ReturnGapObjective(values[1:], counts[1:] / obs.shape[0], pair_group[1:])
    o2 = obs[reps[1], 1, 2:].argmax(-1)  # the o2 of each group
    return objective, o2


def test_group_max_sum_takes_each_groups_maximum_and_drops_missing_pairs():
    s = torch.tensor([[1.0, 5.0, -2.0, 7.0, 9.0]])
    ids = torch.tensor([[0, 0, 1, 1, 4]])  # pair 4 does not exist (id = size)
    assert group_max_sum(s, ids, 4).item() == pytest.approx(5.0 + 7.0)


@pytest.mark.parametrize("table", ["paper", 1, 5, 7])
def test_the_gap_of_every_labelling_is_full_information_minus_its_message_value(table):
    """On the matrix game with exact values the objective is the value a labelling loses,
    including on the tables where Eq. 13's minimiser is not the best message (1, 5, 7)."""
    values = RGMCOMM_TABLE if table == "paper" else random_table(2, 2, 4, table)
    objective, o2 = matrix_objective(values)
    full = full_obs_value(values)
    for labelling in itertools.product(range(2), repeat=4):
        lab = torch.tensor(labelling)[o2]  # the labels of the groups
        gap = objective.loss(F.one_hot(lab, 2).float().unsqueeze(0)).item()
        assert gap == pytest.approx(full - message_value(values, labelling), abs=1e-3)
    assert objective.loss(torch.full((1, 4, 2), 0.5)).item() == pytest.approx(
        full - message_value(values, (0, 0, 0, 0)), abs=1e-3)  # uniform labels say nothing


@pytest.mark.parametrize("table", [1, 5, 6, 7, 11])
def test_label_functions_reach_the_best_message_where_eq13_misses(table):
    values = random_table(2, 2, 4, table)
    objective, o2 = matrix_objective(values)
    best, _ = best_message_value(values, 2)
    torch.manual_seed(0)
    heads = LabelHeads(1, 4, 64, 2)
    h = F.one_hot(o2, 4).float().unsqueeze(1)  # [G, 1, 4]: the label function reads o2
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    gap = cluster_labels(heads, opt, h, objective, steps=50, lr=1e-2, restarts=4, refine=True)
    lab = heads(h)[:, 0].argmax(-1)
    labelling = tuple(lab[o2.argsort()].tolist())
    assert message_value(values, labelling) == pytest.approx(best, abs=1e-3)
    assert gap.item() == pytest.approx(full_obs_value(values) - best, abs=1e-3)


def test_refine_moves_to_a_labelling_no_single_move_improves():
    torch.manual_seed(0)
    n, G, K, M = 3, 12, 10, 3
    values = torch.randn(n, G, K)
    objective = ReturnGapObjective(values, torch.full((n, G), 1 / G),
                                   torch.randint(0, 4, (n, K)))
    start = torch.zeros(n, G, dtype=torch.long)
    found = objective.refine(start, M)

    def gap(lab):
        return objective.loss(F.one_hot(lab, M).float())

    assert torch.all(gap(found) < gap(start))
    for g, k in itertools.product(range(G), range(M)):
        moved = found.clone()
        moved[:, g] = k
        assert torch.all(gap(moved) >= gap(found) - 1e-5)

"""CommNet, TarMAC and RGMComm baselines (DESIGN.md section 4)."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from seqcomm.comm import CommNet, RGMComm, TarMAC, average_cosine_distance, clustering_loss
from seqcomm.comm.rgmcomm import return_gap_bound
from seqcomm.envs.matrix import RGMCOMM_TABLE

H, N = 8, 3


def _grad(output, h, agent):
    (g,) = torch.autograd.grad(output.sum(), h, retain_graph=True)
    return g[..., agent, :]


@pytest.mark.parametrize("cls", [CommNet, TarMAC, RGMComm])
def test_shapes_and_leading_mask_dimension(cls):
    torch.manual_seed(0)
    comm = cls(H, N).eval()
    h = torch.randn(2, 5, N, H)
    ctx, _ = comm(h)
    assert ctx.shape == (2, 5, N, comm.ctx_dim)
    masks = torch.cat([torch.ones(1, N), 1 - torch.eye(N)]).reshape(N + 1, 1, 1, N)
    ctx_k, _ = comm(h, masks)
    assert ctx_k.shape == (N + 1, 2, 5, N, comm.ctx_dim)
    for k in range(N + 1):
        assert torch.allclose(ctx_k[k], comm(h, masks[k, 0, 0])[0], atol=1e-6)


@pytest.mark.parametrize("cls", [CommNet, TarMAC, RGMComm])
def test_deliver_mask_removes_a_sender_exactly(cls):
    torch.manual_seed(0)
    comm = cls(H, N)
    h = torch.randn(4, N, H, requires_grad=True)
    ctx, _ = comm(h, torch.tensor([1.0, 1.0, 0.0]))
    assert torch.equal(_grad(ctx[:, :2], h, 2), torch.zeros(4, H))  # 2 is not heard
    assert _grad(ctx[:, 1], h, 0).abs().sum() > 0  # 0 is
    assert torch.equal(_grad(ctx[:, 0], h, 0), torch.zeros(4, H))  # nobody hears itself
    ctx0, _ = comm(h, torch.zeros(N))
    assert torch.equal(ctx0, torch.zeros_like(ctx0))


def test_commnet_is_linear_map_of_mean_of_other_hidden_states():
    comm = CommNet(H, N, ctx_dim=4)
    h = torch.randn(6, N, H)
    ctx, _ = comm(h)
    mean_others = (h.sum(-2, keepdim=True) - h) / (N - 1)
    assert torch.allclose(ctx, mean_others @ comm.comm.weight.T, atol=1e-6)
    assert comm.bits_per_step() == 32 * H


def test_tarmac_attention_weights_over_others():
    comm = TarMAC(H, 2, key_dim=4, value_dim=3)
    h = torch.randn(5, 2, H)
    ctx, aux = comm(h)
    # with two agents each receiver attends only to the other: weight 1 on its value
    assert torch.allclose(ctx, aux["messages"].flip(-2), atol=1e-6)
    assert comm.bits_per_step() == 32 * 7


def test_rgmcomm_labels_one_hot_and_context_is_sender_embedding():
    torch.manual_seed(0)
    comm = RGMComm(H, 2, n_labels=4, embed_dim=5)
    h = torch.randn(7, 2, H, requires_grad=True)
    ctx, aux = comm(h)
    labels = aux["labels"]
    assert torch.equal(labels.sum(-1), torch.ones(7, 2)) and comm.discrete
    assert torch.equal((labels == 0) | (labels == 1), torch.ones_like(labels).bool())
    idx = labels.argmax(-1)
    assert torch.allclose(ctx[:, 0], comm.embedding[1][idx[:, 1]])
    assert torch.allclose(ctx[:, 1], comm.embedding[0][idx[:, 0]])
    assert _grad(ctx[:, 0], h, 1).abs().sum() > 0  # straight-through gradient
    assert comm.bits_per_step() == 2.0
    with pytest.raises(ValueError, match="n_agents"):
        comm(torch.randn(7, 3, H))


def _grouped_q(seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.tensor([5.0, 1.0, 0.0, 2.0])
    b = torch.tensor([0.0, 2.0, 6.0, 1.0])
    q = torch.cat(
        [a + 0.3 * torch.randn(4, 4, generator=gen), b + 0.3 * torch.randn(4, 4, generator=gen)]
    )
    return q  # samples 0-3 near a, 4-7 near b


def test_clustering_loss_prefers_grouping_similar_q_vectors():
    q = _grouped_q()
    grouped = F.one_hot(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 2).float()
    mixed = F.one_hot(torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]), 2).float()
    collapsed = F.one_hot(torch.zeros(8, dtype=torch.long), 2).float()
    loss_grouped = clustering_loss(grouped, q, n_neighbors=3)
    assert loss_grouped < clustering_loss(mixed, q, n_neighbors=3)
    assert loss_grouped < clustering_loss(collapsed, q, n_neighbors=3)  # the MI term
    assert math.isclose(loss_grouped.item(), -math.log(2), rel_tol=1e-5)
    eps_grouped = average_cosine_distance(q, grouped.argmax(-1))
    assert eps_grouped < average_cosine_distance(q, mixed)


def test_clustering_loss_finds_the_papers_matrix_game_labelling():
    q = RGMCOMM_TABLE.reshape(4, 4).T  # row o2: Q over (o1, a1)
    losses = {}
    for lab in itertools.product(range(2), repeat=4):
        labels = F.one_hot(torch.tensor(lab), 2).float()
        losses[lab] = clustering_loss(labels, q, n_neighbors=1).item()
    best = min(losses.values())
    assert {lab for lab, v in losses.items() if v == best} == {(0, 1, 0, 1), (1, 0, 1, 0)}
    # epsilon of Eq. 6 is also lowest there, and 0 when each o2 has its own label
    eps = average_cosine_distance(q, torch.tensor([0, 1, 0, 1]))
    assert eps < average_cosine_distance(q, torch.tensor([0, 0, 1, 1]))
    assert average_cosine_distance(q, torch.arange(4)).abs() < 1e-6
    assert return_gap_bound(eps.item(), 2, 81.5) == pytest.approx(math.sqrt(eps.item()) * 163)


def test_rgmcomm_label_head_learns_grouping_by_clustering_loss():
    torch.manual_seed(0)
    comm = RGMComm(16, 2, n_labels=2, n_neighbors=1, mi_weight=1.0)
    obs = torch.eye(16)[:4]  # agent 2's four observations o21..o24 as features
    q = RGMCOMM_TABLE.reshape(4, 4).T
    opt = torch.optim.Adam(comm.label_head.parameters(), lr=0.05)
    for _ in range(100):
        loss = comm.clustering_loss(torch.softmax(comm.label_head(obs), -1), q)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = comm.label_head(obs).argmax(-1).tolist()
    assert labels[0] == labels[2] and labels[1] == labels[3] and labels[0] != labels[1]

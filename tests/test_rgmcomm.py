"""RGMComm as its paper defines it (seqcomm.comm.rgmcomm, q_vectors, rgmcomm_learner)."""

import dataclasses
import functools
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import matrix_frames, read_metrics
from tensordict import TensorDict
from torch.nn import functional as F

from seqcomm.comm.q_vectors import (
    QVectors,
    eq5_vectors,
    group_counts,
    group_representatives,
    local_group_ids,
    receiver_conditional,
)
from seqcomm.comm.rgmcomm import (
    Eq13Objective,
    LabelHeads,
    RGMComm,
    activate_q,
    average_cosine_distance,
    clustering_loss,
    conditional_information_change,
    cosine_distance_matrix,
    label_information,
    refine_labelling,
    return_gap_bound,
)
from seqcomm.dfl.critic import TeamCritic
from seqcomm.dfl.factored_critic import FactoredCritic
from seqcomm.dfl.label_lookahead import pool_best_actions, sender_group_ids
from seqcomm.envs.base import ACTION, MASK, OBS, STATE, env_info
from seqcomm.envs.matrix import RGMCOMM_TABLE, MatrixGame, best_message_value, random_table
from seqcomm.rgmcomm_learner import (
    RGMCommLearner,
    cluster_labels,
    label_renaming,
    refine_head,
)

METHOD = "conf/methods/rgmcomm.yaml"


def lookup_critic(table: torch.Tensor) -> TeamCritic:
    """A critic that returns ``table[o1, a1, o2]`` exactly on the matrix game's inputs: one
    hidden unit per (o1, a1, o2), on only when all three one-hots match."""
    n1, A, n2 = table.shape
    D = n1 + n2  # per-agent observation size; state = both observations flattened
    critic = TeamCritic(2 * D, 2, A, hidden_dim=n1 * A * n2, normalize=False)
    first, mid, last = critic.net[0], critic.net[2], critic.net[4]
    with torch.no_grad():
        for layer in (first, mid, last):
            layer.weight.zero_()
            layer.bias.zero_()
        for u, (o1, a1, o2) in enumerate(itertools.product(range(n1), range(A), range(n2))):
            first.weight[u, o1] = 1  # agent 1 sees o1
            first.weight[u, D + n1 + o2] = 1  # agent 2 sees o2
            first.weight[u, 2 * D + a1] = 1  # agent 1 plays a1
            first.bias[u] = -2
            last.weight[0, u] = table[o1, a1, o2]
        mid.weight.copy_(torch.eye(n1 * A * n2))
    return critic


def all_pairs(table: torch.Tensor, repeat: int = 2):
    """Every (o1, a1, o2) ``repeat`` times as matrix-game samples: obs, action, mask."""
    n1, A, n2 = table.shape
    env = MatrixGame(n1 * n2, exhaustive=True)
    td = env.reset()
    obs, mask = td[OBS].repeat(A * repeat, 1, 1), td[MASK].repeat(A * repeat, 1, 1)
    a1 = torch.arange(A).repeat_interleave(n1 * n2).repeat(repeat)
    return obs, torch.stack([a1, torch.zeros_like(a1)], -1), mask


def test_eq5_vectors_on_the_matrix_game_are_the_papers_columns():
    critic = lookup_critic(RGMCOMM_TABLE)
    obs, action, mask = all_pairs(RGMCOMM_TABLE)
    qv = eq5_vectors(critic, obs, action, mask, top_k=16, prior=1.0)
    N = obs.shape[0]
    assert qv.values.shape == (2, N, 16 * 2)
    # sender 2 (index 1): its four receivers' pairs (o1, a1), its single action
    pairs = qv.pairs[1, :4]
    order = (obs[pairs, 0, :2].argmax(-1) * 2 + action[pairs, 0]).argsort()  # (o1, a1) order
    vec = qv.values[1].view(N, 16, 2)
    valid = qv.valid[1].view(N, 16, 2)
    assert not valid[:, 4:].any() and not valid[:, :, 1].any()  # no 5th pair; a2 = 1 masked
    assert (vec[~valid] == 0).all()
    columns = {  # hand-computed: 1/2 (= d(o1 | o2)) times the paper's columns
        0: [53.2, 42.9, 31.8, 22.9], 1: [4.5, 1.2, 12.6, 28.0],
        2: [58.5, 64.0, 34.1, 10.0], 3: [0.3, 16.1, 34.9, 81.5],
    }
    o2 = obs[:, 1, 2:].argmax(-1)
    for p in range(N):
        got = vec[p, :4, 0][order]
        assert torch.allclose(got, 0.5 * torch.tensor(columns[o2[p].item()]), atol=1e-4)
    # sender 1 (index 0): pairs (o2, a2 = 0), both of its actions, weight d(o2 | o1) = 1/4
    vec0 = qv.values[0].view(N, 16, 2)[:, :4]
    o2_of_pair = obs[qv.pairs[0, :4], 1, 2:].argmax(-1)
    o1 = obs[:, 0, :2].argmax(-1)
    expected = RGMCOMM_TABLE[o1][:, :, o2_of_pair].transpose(1, 2) / 4  # [N, pair, a1]
    assert torch.allclose(vec0, expected, atol=1e-4)


def test_pair_weights_follow_the_conditional_frequency():
    """d(o_-i | o_i) is estimated from the sample: skewed o1 given o2 shows in the vector."""
    critic = lookup_critic(torch.ones(2, 2, 4))  # every value 1: the vector is the weight
    obs, action, mask = all_pairs(torch.ones(2, 2, 4), repeat=1)
    keep = ~((obs[:, 1, 2] == 1) & (obs[:, 0, 1] == 1))  # o21 is never seen with o12
    obs, action, mask = obs[keep], action[keep], mask[keep]
    qv = eq5_vectors(critic, obs, action, mask, top_k=4, prior=0.0)
    o1_of_pair = obs[qv.pairs[1], 0, :2].argmax(-1)
    first = (obs[:, 1, 2] == 1).nonzero()[0, 0]  # a sample with o21
    w = qv.values[1, first].view(4, 2)[:, 0]
    assert torch.allclose(w, (o1_of_pair == 0).float())  # all its mass on o11


def test_activation_is_the_papers_f():
    q = torch.tensor([53.2, 42.9, 31.8, 22.9])
    expected = torch.tanh((q - (53.2 + 22.9) / 2) / 53.2)
    assert torch.allclose(activate_q(q), expected)
    # an invalid entry neither moves max / min nor survives
    q5 = torch.cat([q, torch.tensor([500.0])])
    out = activate_q(q5, torch.tensor([True] * 4 + [False]))
    assert torch.allclose(out[:4], expected) and out[4] == 0


def _activated_columns(table: torch.Tensor) -> torch.Tensor:
    """Exact Eq. 5 vectors of agent 2 (one per o2, uniform o1), activated."""
    return activate_q(table.permute(2, 0, 1).reshape(table.shape[2], -1) / table.shape[0])


def _labelling_losses(table: torch.Tensor, n_labels: int) -> dict[tuple, float]:
    x = _activated_columns(table)
    out = {}
    for lab in itertools.product(range(n_labels), repeat=table.shape[2]):
        onehot = F.one_hot(torch.tensor(lab), n_labels).float()
        out[lab] = clustering_loss(onehot, x, mi_weight=1.0).item()
    return out


def _value(table: torch.Tensor, lab: tuple) -> float:
    lab = torch.tensor(lab)
    total = sum(table[:, :, lab == m].sum(2).max(1).values.sum().item() for m in lab.unique())
    return total / (table.shape[0] * table.shape[2])


@pytest.mark.parametrize("table", ["paper", 2, 3])
def test_clustering_loss_ranks_the_best_one_bit_split_first(table):
    values = RGMCOMM_TABLE if table == "paper" else random_table(2, 2, 4, table)
    losses = _labelling_losses(values, 2)
    best_lab = min(losses, key=losses.get)
    best, _ = best_message_value(values, 2)
    assert _value(values, best_lab) == pytest.approx(best, abs=1e-4)
    assert losses[(0, 0, 0, 0)] > losses[best_lab] + 0.1  # one label is not the minimum
    if table == "paper":
        assert {lab for lab, v in losses.items() if v == losses[best_lab]} == {
            (0, 1, 0, 1), (1, 0, 1, 0)}
        assert _value(values, best_lab) == pytest.approx(38.05, abs=1e-4)


def test_random_table_1_is_a_counter_example_of_the_bound():
    """The clustering loss minimises a bound: on table 1 its minimum, {o1, o3} / {o2, o4}
    (61.1), is not the best 1-bit message, {o1} / {o2, o3, o4} (62.4375)."""
    values = random_table(2, 2, 4, 1)
    losses = _labelling_losses(values, 2)
    chosen = min(losses, key=losses.get)
    assert chosen in {(0, 1, 0, 1), (1, 0, 1, 0)}
    assert _value(values, chosen) == pytest.approx(61.1, abs=1e-3)
    assert best_message_value(values, 2)[0] == pytest.approx(62.4375, abs=1e-3)


def test_four_labels_give_each_observation_its_own_label():
    losses = _labelling_losses(RGMCOMM_TABLE, 4)
    best = min(losses, key=losses.get)
    assert sorted(best) == [0, 1, 2, 3] and _value(RGMCOMM_TABLE, best) == pytest.approx(39.15)


def test_label_functions_learn_the_split_with_restarts():
    """Soft labels can stall in a 3-1 split (a local minimum of Eq. 13); the learner's
    warm start + fresh restarts, best hard loss per sender, find the paper's split."""
    x = _activated_columns(RGMCOMM_TABLE).expand(2, 4, 4)  # both senders see agent 2's
    for seed in range(3):
        torch.manual_seed(seed)
        heads = LabelHeads(2, 8, 64, 2)
        h = torch.randn(4, 2, 8)
        opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
        objective = Eq13Objective(x, torch.full((2, 4), 0.25), sender_group_ids(h))
        best = cluster_labels(heads, opt, h, objective, steps=150, lr=1e-2, restarts=8)
        for i in range(2):
            lab = heads(h)[:, i].argmax(-1).tolist()
            assert lab[0] == lab[2] != lab[1] == lab[3], (seed, i, lab)
        assert torch.allclose(best, torch.full((2,), best[0].item()))


def test_epsilon_and_bound():
    q = RGMCOMM_TABLE.permute(2, 0, 1).reshape(4, 4)
    eps = average_cosine_distance(q, torch.tensor([0, 1, 0, 1]))
    assert eps < average_cosine_distance(q, torch.tensor([0, 0, 1, 1]))
    assert average_cosine_distance(q, torch.arange(4)).abs() < 1e-6
    assert return_gap_bound(eps.item(), 2, 81.5) == pytest.approx(math.sqrt(eps.item()) * 163)


def test_label_renaming_keeps_label_identity_per_sender():
    torch.manual_seed(0)
    heads = LabelHeads(2, 4, 8, 3)
    h = torch.randn(30, 2, 4)
    new = heads(h).argmax(-1)
    old = torch.stack([(new[:, 0] + 1) % 3, (new[:, 1] + 2) % 3], -1)  # same partitions
    heads.permute_labels(label_renaming(old, new, 3))
    assert torch.equal(heads(h).argmax(-1), old)


# -- the learner -----------------------------------------------------------------------
def _learner(into: str = "head", **kwargs) -> RGMCommLearner:
    info = env_info(MatrixGame(1))
    return RGMCommLearner(env_info=info, hidden_dim=16, **kwargs,
                          comm=lambda H, n: RGMComm(H, n, n_labels=2, into=into))


def _batch(B: int = 8) -> TensorDict:
    env = MatrixGame(B, seed=1)
    td = env.reset()
    action = torch.stack([torch.randint(0, 2, (B,)), torch.zeros(B, dtype=torch.long)], -1)
    td[ACTION] = action
    nxt = env.step(td)["next"]
    td["next"] = nxt
    td["is_init"] = torch.ones(B, 1, dtype=torch.bool)
    return td.unsqueeze(1)  # [B, T = 1]


def test_labels_receive_no_td_gradient():
    torch.manual_seed(0)
    model = _learner()
    loss, cache = model.td_loss(_batch())
    loss.backward()
    comm = model.net.comm
    assert all(p.grad is None for p in comm.label_head.parameters())
    assert comm.embedding.grad is not None and comm.embedding.grad.abs().sum() > 0
    assert model.net.agent.fc.weight.grad.abs().sum() > 0
    # the value optimiser does not hold the label function; the label optimiser does
    label_ids = {id(p) for p in comm.label_head.parameters()}
    assert not label_ids & {id(p) for p in model.value_parameters()}
    # labels are deterministic and carry no gradient back to the sender's state
    h = torch.randn(5, 2, 16, requires_grad=True)
    ctx, aux = comm(h)
    assert not ctx.requires_grad or torch.autograd.grad(
        ctx.sum(), h, allow_unused=True)[0] is None
    assert torch.equal(comm(h)[1].labels, aux.labels)
    # a masked sender is not heard: receiver 1's context is empty without sender 0
    ctx_masked, _ = comm(h, torch.tensor([0.0, 1.0]))
    assert torch.equal(ctx_masked[:, 1], torch.zeros(5, 16))
    assert torch.equal(ctx_masked[:, 0], ctx[:, 0])


def test_labels_into_the_recurrent_input_come_from_observations():
    """``into="input"``: the label function reads the senders' observations, the receivers
    hear them in their recurrent input at the same step (another sender's observation moves
    a receiver's state), the head reads no context, and TD reaches the embeddings only."""
    torch.manual_seed(0)
    info = env_info(MatrixGame(1))
    model = _learner(into="input")
    net, comm = model.net, model.net.comm
    assert comm.ctx_dim == 0 and comm.label_head.w1.shape[1] == info.obs_dim
    assert net.agent.fc.in_features == info.obs_dim + comm.input_dim + info.n_agents
    assert net.agent.head.in_features == 16  # no context at the head
    batch = _batch(16)
    loss, cache = model.td_loss(batch)
    loss.backward()
    assert all(p.grad is None for p in comm.label_head.parameters())
    assert comm.embedding.grad.abs().sum() > 0
    obs = batch[OBS][:, 0]  # [B, n, D]
    heard = comm.input_context(obs)
    labels = comm.label_logits(obs).argmax(-1)
    torch.testing.assert_close(heard[:, 0], comm.embedding[1, labels[:, 1]].detach())
    torch.testing.assert_close(heard[:, 1], comm.embedding[0, labels[:, 0]].detach())
    # what sender 1 says moves receiver 0's state at this step, never its own
    inputs = net.inputs(obs, batch[STATE][:, 0])
    assert inputs.shape[-1] == info.obs_dim + comm.input_dim
    h0 = obs.new_zeros(16, 2, 16)
    with torch.no_grad():
        h = net.agent.encode(inputs, h0)
        comm.embedding[1] += 1.0
        h_moved = net.agent.encode(net.inputs(obs, batch[STATE][:, 0]), h0)
    assert (h_moved[:, 0] - h[:, 0]).abs().amax(-1).min() > 0
    torch.testing.assert_close(h_moved[:, 1], h[:, 1])  # no agent hears itself
    assert comm(torch.randn(3, 2, 16))[0].shape == (3, 2, 0)
    with pytest.raises(ValueError, match="into"):
        RGMComm(16, 2, into="mixer")


def test_staged_schedule_delivers_nothing_before_clustering():
    model = _learner(schedule="staged")
    h = torch.randn(3, 2, 16)
    assert torch.equal(model.net.comm(h)[0], torch.zeros(3, 2, 16))
    assert torch.equal(model.target.comm(h)[0], torch.zeros(3, 2, 16))
    model.set_delivery(True)
    assert model.net.comm(h)[0].abs().sum() > 0


def test_online_clustering_stops_at_cluster_until(monkeypatch):
    data = SimpleNamespace(frames=0, total_frames=1000)
    trainer = SimpleNamespace(datamodule=data)
    model, to_the_end = _learner(cluster_until=0.5), _learner()
    monkeypatch.setattr(type(model), "trainer", property(lambda self: trainer))
    assert model.due() and to_the_end.due()
    data.frames = 499
    assert model.due()
    data.frames = 500
    assert not model.due() and to_the_end.due()
    for bad in ({"cluster_until": 0.0}, {"cluster_until": 0.5, "schedule": "staged"}):
        with pytest.raises(ValueError, match="cluster_until"):
            _learner(**bad)


def test_the_critic_must_be_the_mlp_the_eq5_vectors_read():
    """The factored critic has no first layer on (observations, actions) to score pairs by."""
    with pytest.raises(ValueError, match=r"TeamCritic\), got FactoredCritic"):
        _learner(critic=FactoredCritic)
    many = dataclasses.replace(env_info(MatrixGame(1)), n_agents=5, n_actions=6)  # 7776
    with pytest.raises(ValueError, match="more than 4096"):
        RGMCommLearner(env_info=many, hidden_dim=16, critic_target="optimal",
                       comm=lambda H, n: RGMComm(H, n, n_labels=2))
    assert _learner(critic_target="optimal").target_critic is not None


def test_online_clustering_stops_once_the_labels_settle(monkeypatch):
    """``settle``: re-clustering stops after ``settle_rounds`` clusterings in a row that each
    changed at most ``settle`` of the labels; a busier one in between starts the count again."""
    data = SimpleNamespace(frames=0, total_frames=1000)
    trainer = SimpleNamespace(datamodule=data)
    model = _learner(settle=0.1, settle_rounds=2)
    monkeypatch.setattr(type(model), "trainer", property(lambda self: trainer))
    for changed, due_after in [(0.3, True), (0.05, True), (0.2, True), (0.1, True),
                               (0.0, False)]:
        assert model.due()
        model.cluster_logs = {}
        model.count_calm(changed)
        assert model.due() is due_after
    assert int(model.state_dict()["calm_rounds"]) == 2  # resumes settled
    for bad in ({"settle": 1.0}, {"settle": 0.1, "schedule": "staged"}):
        with pytest.raises(ValueError, match="settle"):
            _learner(**bad)
    with pytest.raises(ValueError, match="settle_rounds"):
        _learner(settle=0.1, settle_rounds=0)


@pytest.mark.parametrize("into", ["head", "input"])
def test_staged_restart_gives_the_frozen_labels_new_receivers(monkeypatch, into):
    """At the stage the utility head, label embeddings and mixer start over (target too),
    the encoder the labels read stays (``head``; with ``input`` it is a receiver and starts
    over too), the value optimiser forgets, epsilon re-anneals."""
    torch.manual_seed(0)
    model = _learner(schedule="staged", eps_anneal_frames=1000, into=into)
    opt = torch.optim.Adam(model.value_parameters())
    model.td_loss(_batch())[0].backward()
    opt.step()
    monkeypatch.setattr(model, "optimizers", lambda: [SimpleNamespace(optimizer=opt)])
    trainer = SimpleNamespace(datamodule=SimpleNamespace(frames=6000))
    monkeypatch.setattr(type(model), "trainer", property(lambda self: trainer))
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.freeze_labels()
    model.restart_receivers()
    after = model.net.state_dict()
    encoder = ("agent.fc.", "agent.rnn.")
    restarted = ("agent.head.", "mixer.", "comm.embedding") + (encoder if into == "input" else ())
    for prefix in restarted:
        keys = [k for k in before if k.startswith(prefix) and ("weight" in k or "embedding" in k)]
        assert keys and all(not torch.equal(before[k], after[k]) for k in keys), prefix
    assert model.net.agent.fc.weight.requires_grad == (into == "input")
    for prefix in (*(encoder if into == "head" else ()), "comm.label_head."):
        keys = [k for k in before if k.startswith(prefix)]
        assert keys and all(torch.equal(before[k], after[k]) for k in keys), prefix
    assert all(torch.equal(v, model.target.state_dict()[k]) for k, v in after.items())
    assert not opt.state
    policy = model.policy
    policy.frames.fill_(6000)
    assert policy.epsilon == pytest.approx(policy.eps_start)
    policy.frames.fill_(6500)
    assert policy.epsilon == pytest.approx((policy.eps_start + policy.eps_end) / 2)
    assert int(model.stage_frames) == 6000


@pytest.mark.parametrize("schedule, options", [
    ("online", []), ("staged", []),
    ("online", ["--model.init_args.mi_given=receivers", "--model.init_args.critic_target=optimal"]),
    ("staged", ["--model.init_args.comm.init_args.into=input",
                "--model.init_args.receiver_weight=1.0"]),
    ("online", ["--model.init_args.objective=return_gap", "--model.init_args.top_pairs=64"]),
])
def test_fit_logs_return_gap_and_writes_label_map(fit_matrix, schedule, options):
    run = fit_matrix("--config", METHOD, f"--data.total_frames={matrix_frames(3)}",
                     f"--model.init_args.schedule={schedule}", *options,
                     "--model.init_args.stage_fraction=0.0", "--model.init_args.cluster_steps=5",
                     "--trainer.log_every_n_steps=1", run_name=f"{schedule}{len(options)}")
    metrics = read_metrics(run)
    for key in ("loss/cluster", "comm/epsilon", "comm/q_max", "comm/return_gap_bound"):
        assert key in metrics and all(math.isfinite(v) for v in metrics[key].values())
    assert all(0.0 <= v <= 1.0 for v in metrics["comm/label_change"].values())
    if "--model.init_args.objective=return_gap" in options:  # a gap: never below full info
        assert all(v >= -1e-4 for v in metrics["loss/cluster"].values())
    png = run / "labels.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert (run / "labels.json").exists()


@pytest.mark.parametrize("n_labels,start", [(4, (0, 1, 0, 1)), (4, (0, 0, 0, 0)),
                                            (2, (0, 0, 0, 0)), (2, (0, 0, 0, 1))])
def test_refinement_reaches_the_eq13_minimum_from_soft_labels_saddles(n_labels, start):
    """Hartigan's moves on Eq. 13 leave the two-cluster split that gradient descent stops at
    with four labels (39.15, full observability) and the one-label / 3-1 starts with two
    (38.05); each observation is one group of 8 duplicate samples."""
    x = _activated_columns(RGMCOMM_TABLE)
    obs = torch.arange(4).repeat(8)
    labels = torch.tensor(start)[obs].unsqueeze(0)
    refined = refine_labelling(labels, x[obs].unsqueeze(0), obs.unsqueeze(0), n_labels)
    lab = tuple(refined[0, :4].tolist())
    assert torch.equal(refined[0], refined[0, :4].repeat(8))  # groups move together
    losses = _labelling_losses(RGMCOMM_TABLE, n_labels)
    assert losses[lab] == pytest.approx(min(losses.values()), abs=1e-4)
    assert _value(RGMCOMM_TABLE, lab) == pytest.approx(39.15 if n_labels == 4 else 38.05)


def test_refine_head_splits_a_two_cluster_head_into_four_labels():
    """A label head stuck at {o1, o3} / {o2, o4} with four labels available (what the learner
    runs showed) is moved to four labels, and the winning loss is the refined one."""
    torch.manual_seed(0)
    x = _activated_columns(RGMCOMM_TABLE).expand(2, 4, 4)
    heads = LabelHeads(2, 8, 64, 4)
    h = torch.randn(4, 2, 8)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    stuck = torch.tensor([0, 1, 0, 1]).unsqueeze(-1).expand(4, 2)
    for _ in range(200):
        loss = F.cross_entropy(heads(h).flatten(0, 1), stuck.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = clustering_loss(F.one_hot(heads(h).argmax(-1), 4).float().transpose(0, 1), x)
    objective = Eq13Objective(x, torch.full((2, 4), 0.25), sender_group_ids(h))
    best = refine_head(heads, opt, h, objective, before.detach(), 200)
    for i in range(2):
        assert sorted(heads(h)[:, i].argmax(-1).tolist()) == [0, 1, 2, 3]
    assert torch.all(best < before - 0.2)


def test_pool_best_action_is_the_argmax_of_the_pool_mean_not_of_each_sample():
    # pool 0: samples 0-2 prefer action 1 by a little twice, action 0 by a lot once
    values = torch.tensor([[0.0, 1.0], [0.0, 1.0], [5.0, 0.0], [1.0, 2.0], [3.0, 3.0]])
    keys = torch.tensor([[0.0], [0.0], [0.0], [1.0], [2.0]])
    best, decided = pool_best_actions(values, keys)
    assert best[:4].tolist() == [0, 0, 0, 1] and decided.tolist() == [True] * 4 + [False]
    # an action one member of the pool lacks is never the pool's best
    mask = torch.tensor([[True, True], [True, True], [False, True], [True, True],
                         [True, True]])
    assert pool_best_actions(values, keys, mask)[0][:3].tolist() == [1, 1, 1]


def test_receiver_loss_teaches_each_pool_its_best_action_and_not_the_labels():
    """With the critic replaced by exact values, the receiver loss alone drives agent 1's
    greedy action in every (o1, heard label) pool to the best action on the pool's mean,
    which is not the action most samples of the pool prefer."""
    torch.manual_seed(0)
    model = _learner(receiver_weight=1.0)
    batch = _batch(64)
    obs = batch[OBS][:, 0]
    o1, o2 = obs[:, 0].argmax(-1), obs[:, 1].argmax(-1) - 2
    # [o1, a1, o2]: action 0 pays 10 on o2 = 0 only, action 1 pays 1 elsewhere
    table = torch.tensor([[10.0, 0, 0, 0], [0, 1, 1, 1]]).expand(2, 2, 4)

    def exact(state, action, agents=None):  # agent 1 switching; agent 2's action is inert
        v = table[o1, :, o2]  # [B, A]
        return torch.stack([v, v], 1)

    model.critic.switch_values = exact
    label_ids = {id(p) for p in model.net.comm.label_head.parameters()}
    opt = torch.optim.Adam(model.value_parameters(), lr=1e-2)
    for _ in range(300):
        _, cache = model.td_loss(batch)
        loss = model.receiver_loss(batch, cache)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.net.comm.label_head.parameters())
    assert label_ids.isdisjoint(id(p) for p in model.value_parameters())
    heard = cache["aux"].labels[:, 0, 1].argmax(-1)  # agent 2's label, heard by agent 1
    greedy = cache["q"][:, 0, 0].argmax(-1)
    mode_differs = False
    for b in range(64):  # the expected pool best, by hand
        pool = (o1 == o1[b]) & (heard == heard[b])
        pooled = table[o1[b]][:, o2[pool]]
        assert greedy[b] == pooled.mean(-1).argmax(), b
        mode_differs |= bool(pooled.argmax(0).float().mean() > 0.5) and greedy[b] == 0
    assert mode_differs  # some pool's majority prefers the other action


def test_the_critic_is_a_component_on_the_joint_observation():
    """``critic`` is a factory (class_path in YAML); by default ``TeamCritic`` as before
    (width 128, normalised targets) on the joint observation."""
    info = env_info(MatrixGame(1))
    model = _learner()
    assert isinstance(model.critic, TeamCritic) and model.critic.normalize
    assert model.critic.net[0].out_features == 128
    assert model.critic.net[0].in_features == (
        TeamCritic(info.n_agents * info.obs_dim, info.n_agents, info.n_actions)
        .net[0].in_features)
    assert "critic" not in model.hparams and "critic_hidden" not in model.hparams
    model = _learner(critic=functools.partial(TeamCritic, hidden_dim=24, normalize=False))
    assert not model.critic.normalize and model.critic.net[0].out_features == 24


def test_optimal_critic_target_bootstraps_from_the_best_joint_action():
    """``critic_target: optimal`` regresses the critic on ``r + gamma max_a' Q_c^-(o', a')``
    (the paper's ``Q*``), not on ``Q_tot``'s TD target; its target critic follows by Polyak
    averaging; bad choices and too many joint actions fail at construction."""
    torch.manual_seed(0)
    model = _learner(critic_target="optimal", target_tau=0.5)
    batch = _batch()
    batch["next", "terminated"] = torch.zeros_like(batch["next", "terminated"])
    _, cache = model.td_loss(batch)
    target = model.critic_regression_target(batch, cache)
    nxt = batch["next", *OBS].flatten(-2)
    mask = batch["next", *MASK]
    values = []
    for joint in torch.cartesian_prod(torch.arange(2), torch.arange(2)):
        value = model.target_critic(nxt, F.one_hot(joint, 2).float().expand(*mask.shape))
        available = mask[..., torch.arange(2), joint].all(-1, keepdim=True)
        values.append(value.masked_fill(~available, float("-inf")))
    best = torch.stack(values).amax(0)
    torch.testing.assert_close(target, batch["next", "reward"] + model.hparams.gamma * best)
    assert not torch.allclose(target, cache["target"])
    assert torch.equal(_learner().critic_regression_target(batch, cache), cache["target"])
    with torch.no_grad():
        for p in model.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_critic.parameters()]
    model.update_targets()
    for p_t, p0, p in zip(model.target_critic.parameters(), before, model.critic.parameters(),
                          strict=True):
        torch.testing.assert_close(p_t, (p0 + p) / 2)
    with pytest.raises(ValueError, match="critic_target"):
        _learner(critic_target="best")
    info = env_info(MatrixGame(1))
    with pytest.raises(ValueError, match="joint actions"):
        RGMCommLearner(env_info=dataclasses.replace(info, n_actions=65),
                       comm=lambda H, n: RGMComm(H, n, n_labels=2), hidden_dim=16,
                       critic_target="optimal")


def test_information_given_the_receivers_credits_only_what_they_do_not_see():
    """Senders see (step, bit), receivers the step: a label that names the step has the
    paper's ``I(o; m) = log 2`` and no information given the receivers; the bit keeps
    ``log 2`` both ways. Hartigan's move deltas under ``given`` are the exact changes."""
    step = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    bit = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    given = receiver_conditional(torch.arange(8).unsqueeze(0), step.unsqueeze(0), prior=0.0)[0]
    for labels, conditional in ((step, 0.0), (bit, math.log(2))):
        probs = F.one_hot(labels, 2).float()
        assert label_information(probs).item() == pytest.approx(math.log(2))
        assert label_information(probs, given=given).item() == pytest.approx(conditional,
                                                                             abs=1e-6)
    # exact move deltas on a random problem
    torch.manual_seed(0)
    n, N, M, G = 2, 12, 3, 6
    groups = torch.randint(0, G, (n, N))
    groups[:, :G] = torch.arange(G)
    recv = torch.randint(0, 3, (n, N))
    given = receiver_conditional(torch.arange(N).expand(n, N), recv, prior=1.0)
    glab = torch.randint(0, M, (n, G))
    delta = conditional_information_change(given, F.one_hot(groups, G).float(),
                                           F.one_hot(glab, M).float(), glab)
    before = label_information(F.one_hot(glab.gather(-1, groups), M).float(), given=given)
    for i, g, b in itertools.product(range(n), range(G), range(M)):
        if b != glab[i, g]:
            moved = glab.clone()
            moved[i, g] = b
            after = label_information(F.one_hot(moved.gather(-1, groups), M).float(),
                                      given=given)
            assert (after - before)[i].item() == pytest.approx(delta[i, g, b].item(), abs=1e-5)
    # the search ends where no single move of a group lowers the conditional loss
    x = torch.randn(n, N, 5)
    found = refine_labelling(glab.gather(-1, groups), x, groups, M, given=given)
    loss = clustering_loss(F.one_hot(found, M).float(), x, given=given)
    for i, g, b in itertools.product(range(n), range(G), range(M)):
        moved = found[i].masked_fill(groups[i] == g, b)
        assert clustering_loss(F.one_hot(moved, M).float(), x[i], given=given[i]) >= loss[i] - 1e-6
    with pytest.raises(ValueError, match="mi_given"):
        _learner(mi_given="sender")


def test_eq13_over_distinct_inputs_weighted_by_counts_equals_eq13_over_samples():
    """Equal sender inputs share labels and Eq. 5 vectors, so the learner scores Eq. 13 (with
    and without the receivers' term) and runs Hartigan's search over distinct inputs weighted
    by their counts: the same losses and labels as over all samples."""
    torch.manual_seed(0)
    n, N, G, M = 2, 40, 6, 3
    index = torch.randint(0, G, (n, N))
    index[:, :G] = torch.arange(G)
    inputs = torch.randn(G, 3)[index]  # [n, N, 3]: G distinct rows per sender
    group = local_group_ids(inputs)
    assert torch.equal(group.unsqueeze(-1) == group.unsqueeze(-2),
                       (inputs.unsqueeze(2) == inputs.unsqueeze(1)).all(-1))
    recv = torch.randint(0, 4, (n, N))
    x_g, probs_g = torch.randn(n, G, 5), torch.softmax(torch.randn(n, G, M), -1)
    x = x_g.gather(1, group.unsqueeze(-1).expand(-1, -1, 5))
    probs = probs_g.gather(1, group.unsqueeze(-1).expand(-1, -1, M))
    reps, weight = group_representatives(group), group_counts(group) / N
    assert torch.equal(group.gather(1, reps), torch.arange(G).expand(n, G))
    per_sample = receiver_conditional(torch.arange(N).expand(n, N), recv, prior=1.0)
    per_group = receiver_conditional(group, recv, prior=1.0)
    assert torch.allclose(per_sample @ F.one_hot(group, G).float(), per_group, atol=1e-6)
    for s, g in ((None, None), (per_sample, per_group)):
        assert torch.allclose(clustering_loss(probs, x, given=s),
                              clustering_loss(probs_g, x_g, weight, given=g), atol=1e-5)
        labels = torch.randint(0, M, (n, G))
        by_sample = refine_labelling(labels.gather(1, group), x, group, M, given=s)
        by_group = refine_labelling(labels, x_g, torch.arange(G).expand(n, G), M, given=g,
                                    weight=weight)
        assert torch.equal(by_sample, by_group.gather(1, group))


def test_weighted_activation_keeps_observations_that_never_occur_together_apart():
    """Three phases (like the maze's steps): each sender observation occurs only with its own
    phase's receivers' pairs; values are non-negative (the maze's rewards). The paper's
    ``f(Q d)`` centres the zero entries to one shared value, so vectors of different phases
    look alike; ``d f(Q)`` keeps them orthogonal and leaves vectors with a constant weight as
    ``f(Q d)`` has them."""
    torch.manual_seed(0)
    N, P = 12, 12  # 12 samples, 4 per phase; 4 pairs per phase
    phase = torch.arange(N) % 3
    q = torch.rand(1, N, P)
    weights = (phase.view(N, 1) == torch.arange(P).view(1, P) // 4).float().unsqueeze(0) / 4
    valid = torch.ones(1, N, P, dtype=torch.bool)
    qv = QVectors(q, weights, valid, torch.zeros(1, 4, dtype=torch.long), phase.unsqueeze(0),
                  phase.unsqueeze(0))
    differ = phase.unsqueeze(-1) != phase.unsqueeze(-2)
    product = 1 - cosine_distance_matrix(qv.activated("product")[0])
    weighted = 1 - cosine_distance_matrix(qv.activated("weighted")[0])
    assert product[differ].mean() > 0.1
    assert weighted[differ].abs().max() < 1e-6
    constant = QVectors(q, torch.full_like(q, 0.25), valid, qv.pairs, qv.sender_group,
                        qv.receiver_group)
    assert torch.allclose(cosine_distance_matrix(constant.activated("weighted")),
                          cosine_distance_matrix(constant.activated("product")), atol=1e-5)
    with pytest.raises(ValueError, match="activation"):
        _learner(activation="tanh")
    with pytest.raises(ValueError, match="objective"):
        _learner(objective="kmeans")


def test_critic_steps_and_critic_tau_train_the_optimal_critic_more_often(fit_matrix):
    """``critic_steps: 3`` takes three critic steps per update (Adam's step count) and
    ``critic_tau`` moves the target critic after each of them, off the team's targets (at
    1.0 it is a copy of the critic); both need ``critic_target: optimal``."""
    updates = 4
    run = fit_matrix("--config", METHOD, f"--data.total_frames={matrix_frames(updates)}",
                     "--model.init_args.critic_target=optimal",
                     "--model.init_args.critic_steps=3", "--model.init_args.critic_tau=1.0",
                     run_name="critic_steps")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == updates
    steps = {float(s["step"]) for s in checkpoint["optimizer_states"][1]["state"].values()}
    assert steps == {3.0 * updates}
    state = checkpoint["state_dict"]
    online = [k for k in state if k.startswith("critic.net.")]
    assert online and all(torch.equal(state[k], state["target_" + k]) for k in online)
    model = _learner(critic_target="optimal", critic_tau=0.5)
    assert all(t is not model.target_critic for t, _ in model.target_pairs())
    other = _learner(critic_target="optimal")
    assert any(t is other.target_critic for t, _ in other.target_pairs())
    for bad in ({"critic_steps": 2}, {"critic_tau": 0.1}, {"critic_target": "optimal",
                                                          "critic_steps": 0}):
        with pytest.raises(ValueError, match="critic_"):
            _learner(**bad)

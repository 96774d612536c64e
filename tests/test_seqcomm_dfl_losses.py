"""SeqComm-DFL's counterfactual message losses (docs/method.md §2): what the learner
computes, on tiny hand-made cases."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, matrix_dfl_step, read_metrics
from tensordict import TensorDict
from torch import nn

from seqcomm.comm.base import MessageOutput
from seqcomm.comm.stackelberg import SeqCommMessenger
from seqcomm.dfl.critic import TeamCritic
from seqcomm.dfl.implicit_gradient import ImplicitSolver
from seqcomm.dfl.value_aware import decision_value, value_aware_loss
from seqcomm.dfl.world_model import WorldModel
from seqcomm.envs.base import ACTION, MASK, OBS, STATE, EnvInfo, env_info
from seqcomm.envs.matrix import MatrixGame
from seqcomm.seqcomm_dfl import SeqCommDFL
from seqcomm.team_q import TeamQ, masked_argmax

INFO = EnvInfo(n_agents=3, obs_dim=4, state_dim=5, n_actions=3, episode_limit=5)


def learner(**kw) -> SeqCommDFL:
    comm = functools.partial(SeqCommMessenger, ordering="fixed")
    return SeqCommDFL(INFO, comm=comm, world_model_gradient="none", hidden_dim=8, **kw)


class TableCritic(nn.Module):
    """``Q_c(s, a) = sum_j table[j, a_j]``: a critic whose values are known by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, state: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        return (joint * self.table).sum((-1, -2)).unsqueeze(-1)

    def switch_values(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Up to a per-receiver constant (which no decision depends on): the table."""
        return self.table.expand(*action.shape, -1)


def test_components_are_built_from_their_factories_with_the_task_sizes():
    """``world_model``, ``critic`` and ``implicit`` are factories (class_path in YAML): the
    learner passes the task's sizes and keeps the components' own arguments; by default they
    are the classes' defaults."""
    model = SeqCommDFL(INFO, comm=functools.partial(SeqCommMessenger, ordering="fixed"),
                       hidden_dim=8)
    assert model.world_model.state_head.out_features == INFO.state_dim
    assert model.world_model.pooling == "mean" and model.world_model.obs_head[0].in_features == 256
    assert model.critic.normalize and model.critic.net[0].out_features == 128
    assert (model.implicit.solver, model.implicit.iters) == ("minres", 5)
    assert (model.implicit.curvature, model.implicit.damping) == ("hessian", 1e-3)
    model = SeqCommDFL(INFO, comm=functools.partial(SeqCommMessenger, ordering="fixed"),
                       hidden_dim=8,
                       world_model=functools.partial(WorldModel, hidden_dim=16, pooling="concat"),
                       critic=functools.partial(TeamCritic, hidden_dim=24, normalize=False),
                       implicit=functools.partial(ImplicitSolver, solver="cg", iters=3))
    wm = model.world_model
    assert (wm.pooling, wm.n_agents, wm.msg_dim) == ("concat", INFO.n_agents,
                                                     model.net.comm.ctx_dim)
    assert wm.joint[0].in_features == INFO.state_dim + 16 * INFO.n_agents
    assert not model.critic.normalize and model.critic.net[0].out_features == 24
    assert (model.implicit.solver, model.implicit.iters) == ("cg", 3)
    assert "world_model" not in model.hparams and "implicit" not in model.hparams


def test_guidance_potential_target_is_delivered_minus_masked_under_the_critic():
    model = learner()
    table = torch.tensor([[0.0, 1.0, 2.0], [0.0, 10.0, 20.0], [0.0, 100.0, 200.0]])
    model.critic = TableCritic(table)
    batch = TensorDict({STATE: torch.zeros(1, 5), MASK: torch.ones(1, 3, 3, dtype=torch.bool)},
                       batch_size=[1])
    # greedy actions: all delivered (2, 2, 2); agent 0 masked -> receiver 1 plays 1;
    # agent 1 masked -> receivers 0 and 2 play 0; agent 2 masked -> nobody changes
    q_all = torch.tensor([[[0.0, 0.0, 1.0]] * 3])  # [B=1, n, A]
    q_masked = q_all.expand(3, 1, 3, 3).clone()
    q_masked[0, 0, 1] = torch.tensor([0.0, 1.0, 0.0])
    q_masked[1, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    q_masked[1, 0, 2] = torch.tensor([1.0, 0.0, 0.0])
    gp = model.guidance_potential_target(batch, {}, q_masked, q_all)
    # delivered: 2 + 20 + 200 = 222; agent 0 masked: 2 + 10 + 200; agent 1 masked: 0 + 20 + 0
    assert torch.allclose(gp, torch.tensor([[10.0, 202.0, 0.0]]))


def counterfactual_utilities(model, h):
    """(utilities with each sender masked, with all delivered, the all-delivered contexts)."""
    ctx = model.counterfactual_contexts(h)
    q = model.receiver_q(h.detach(), ctx)
    return q[:-1], q[-1], ctx[-1]

def test_counterfactual_rows_mask_exactly_one_sender():
    torch.manual_seed(0)
    model = learner()
    h = torch.randn(2, 3, 8)
    q_masked, q_all, _ = counterfactual_utilities(model, h)
    assert q_masked.shape == (3, 2, 3, 3) and q_all.shape == (2, 3, 3)
    full, _ = model.net.utilities(h)
    assert torch.allclose(q_all, full, atol=1e-6)
    for i in range(3):
        deliver = torch.ones(3)
        deliver[i] = 0
        assert torch.allclose(q_masked[i], model.net.utilities(h, deliver)[0], atol=1e-6)


@pytest.mark.parametrize("receiver", ["frozen", "online"])
def test_frozen_receiver_passes_the_value_aware_gradient_to_messages_only(receiver):
    torch.manual_seed(0)
    model = learner(va_receiver=receiver)
    h = torch.randn(2, 3, 8)
    q_masked, q_all, _ = counterfactual_utilities(model, h)
    (q_all.sum() + q_masked.sum()).backward()
    head_grad = sum(p.grad.abs().sum() for p in model.net.agent.head.parameters()
                    if p.grad is not None)
    assert (head_grad == 0) == (receiver == "frozen")
    assert model.net.comm.encoder.head.weight.grad.abs().sum() > 0


def test_every_receiver_gets_gradient_from_another_agents_observation():
    """Through the GRU, the base round and the MLP receiver: the leader included."""
    torch.manual_seed(0)
    comm = functools.partial(SeqCommMessenger, ordering="fixed")
    net = TeamQ(INFO, comm, hidden_dim=8)
    obs = torch.randn(4, 3, 4, requires_grad=True)
    h = net.agent.encode(net.inputs(obs, torch.zeros(4, 5)), torch.zeros(4, 3, 8))
    q, _ = net.utilities(h)
    for receiver in range(3):
        (g,) = torch.autograd.grad(q[:, receiver].sum(), obs, retain_graph=True)
        others = [i for i in range(3) if i != receiver]
        assert g[:, others].abs().sum() > 0, f"receiver {receiver} hears nobody"


def test_mlp_receiver_lets_a_message_mean_different_things_to_different_receivers():
    """d Q / d ctx depends on the receiver's own state with the MLP head, not with the
    linear one (a per-action offset): "this risk is yours, not mine"."""
    torch.manual_seed(0)
    for receiver, interacts in (("mlp", True), ("linear", False)):
        net = TeamQ(INFO, functools.partial(SeqCommMessenger), hidden_dim=8, receiver=receiver)
        ctx = torch.randn(1, net.comm.ctx_dim, requires_grad=True)
        grads = []
        for sign in (1.0, -1.0):  # two receivers in opposite states
            q = net.agent.q(sign * 10 * torch.ones(1, 8), ctx)
            (g,) = torch.autograd.grad(q[0, 0], ctx)
            grads.append(g)
        assert (not torch.allclose(grads[0], grads[1])) == interacts


def test_value_aware_loss_teaches_messages_to_steer_receivers_to_the_better_action():
    """L_VA's gradient reaches the messenger only (frozen receiver head) and moves the
    receivers' decisions toward what the evaluator prefers: the gain rises."""
    torch.manual_seed(0)
    model = learner(va_normalize=False, influence_tau=0.1)
    table = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    model.critic = TableCritic(table)
    B = 16
    batch = TensorDict({STATE: torch.zeros(B, 5), MASK: torch.ones(B, 3, 3, dtype=torch.bool),
                        ACTION: torch.zeros(B, 3, dtype=torch.long)}, batch_size=[B])
    h = torch.randn(B, 3, 8)
    opt = torch.optim.Adam(model.net.comm.parameters(), lr=1e-2)

    def gain() -> torch.Tensor:
        q_masked, q_all, ctx = counterfactual_utilities(model, h)
        return model.evaluator_gain(batch, {}, q_masked, q_all, h, MessageOutput(), ctx)

    def value() -> float:  # the receivers' softened decision value with all messages
        with torch.no_grad():
            q_all = counterfactual_utilities(model, h)[1]
            return float(decision_value(q_all, table, 0.1).mean())

    before = value()
    for _ in range(100):
        loss = value_aware_loss(gain())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert value() > before + 0.3, (before, value())
    assert all(p.grad is None for p in model.net.agent.head.parameters())


def test_monte_carlo_warmup_gain_favours_actions_followed_by_better_returns():
    model = learner(va_normalize=False)
    model.critic = TableCritic(torch.zeros(3, 3))  # a flat baseline: the advantage is G's
    B = 4
    reward = torch.tensor([1.0, 5.0, -3.0, 0.0]).view(B, 1, 1)
    batch = TensorDict({STATE: torch.zeros(B, 1, 5),
                        MASK: torch.ones(B, 1, 3, 3, dtype=torch.bool),
                        ACTION: torch.ones(B, 1, 3, dtype=torch.long),
                        ("next", "reward"): reward,
                        ("next", "done"): torch.ones(B, 1, 1, dtype=torch.bool)},
                       batch_size=[B, 1])
    q_all = torch.zeros(B, 1, 3, 3, requires_grad=True)
    q_masked = torch.zeros(3, B, 1, 3, 3)
    mc = model.monte_carlo_gain(batch, q_all, q_masked, torch.randn(3, B, 1, 3))
    assert mc.shape == (3, B, 1, 3)
    mc.sum().backward()
    taken = q_all.grad[..., 1]  # the taken action's utility, every receiver
    assert (taken[1] > 0).all() and (taken[2] < 0).all()  # best return up, worst down


def test_trust_region_bounds_imagined_targets_by_the_real_residual():
    """``target_radius`` r: imagined targets stay within r x RMS(real TD residual) of the real
    ones, keep their side, and are untouched (up to tanh's slope) near the real target."""
    real = torch.tensor([0.0, 10.0, -5.0, 2.0])
    q_tot = real + torch.tensor([1.0, -1.0, 1.0, -1.0])  # RMS residual 1
    imagined = real + torch.tensor([50.0, -30.0, 0.01, 0.0])
    cache = {"target": real, "q_tot": q_tot}
    off = learner()
    assert torch.equal(off.trust_region(imagined, cache), imagined)
    clipped = learner(target_radius=2.0).trust_region(imagined, cache)
    gap = clipped - real
    assert (gap.abs() <= 2.0).all() and gap[0] > 1.99 and gap[1] < -1.99
    assert gap[2] == pytest.approx(0.01, rel=1e-3) and gap[3] == 0
    with pytest.raises(ValueError, match="target_radius"):
        learner(target_radius=-1.0)


@pytest.mark.parametrize("mode", ["greedy", "uniform"])
def test_imagined_actions_off_the_replay_move_q_tot_at_those_actions(mode):
    """``imagined_actions``: the world model imagines from the online greedy joint action or
    from uniform draws, both among the available actions; the imagined TD loss reaches each
    agent's utility at the imagined action only, and the trust region centres the rows at
    the replay's joint action on the real target, the others on the online ``Q_tot``."""
    model, batch = matrix_dfl_step(imagined_actions=mode, target_radius=1.0)
    mask = batch[MASK].clone()
    mask[:, :, 0, 0] = False  # agent 0 may not take action 0
    batch[MASK] = mask
    batch[ACTION][..., 0] = 1
    if mode == "greedy":  # half the rows took the greedy joint action, half did not
        greedy = masked_argmax(model.td_loss(batch)[1]["q"].detach(), mask)
        batch[ACTION][:4] = greedy[:4]
        batch[ACTION][4:, :, 1] = 1 - greedy[4:, :, 1]
    loss, cache = model.td_loss(batch)
    pred = model.imagine(batch, cache)
    action = cache["imagined_action"]
    assert mask.gather(-1, action.unsqueeze(-1)).all()
    if mode == "greedy":
        assert torch.equal(action, masked_argmax(cache["q"].detach(), mask))
    taken = model.taken_rows(batch, action)
    assert taken.any() and not taken.all()  # both kinds of row in the batch
    inner, target = model.imagined_td_loss(batch, cache, pred)
    grad = torch.autograd.grad(inner, cache["q"])[0]
    at = torch.zeros_like(grad, dtype=torch.bool).scatter(-1, action.unsqueeze(-1), True)
    assert (grad[~at] == 0).all() and (grad[at] != 0).any()
    q_tot = model.net.mix(cache["q"].gather(-1, action.unsqueeze(-1)).squeeze(-1), batch[STATE])
    center = torch.where(taken, cache["target"], q_tot)
    radius = (cache["q_tot"] - cache["target"]).pow(2).mean().sqrt()
    expected = center + radius * torch.tanh((target - center) / radius)
    assert inner.item() == pytest.approx((q_tot - expected).pow(2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="imagined_actions"):
        learner(imagined_actions="random")


def test_per_tensor_cap_holds_each_world_model_tensor_to_its_anchor():
    """``hypergradient_per_tensor``: the hypergradient part of every world-model tensor's
    gradient is at most ``hypergradient_ratio`` x that tensor's weighted anchor, and the
    setting needs a ratio."""
    model, batch = matrix_dfl_step(mle_weight=2.0, hypergradient_ratio=0.01,
                                   hypergradient_per_tensor=True)
    loss, cache = model.td_loss(batch)
    pred = model.imagine(batch, cache)
    inner = model.imagined_td_loss(batch, cache, pred)[0]
    grads, _ = model.world_model_gradients(batch, cache, loss, inner, pred)
    mle = model.world_model.prediction_loss(pred, batch["next", STATE], batch["next", *OBS],
                                            batch["next", "reward"], batch["next", "terminated"])
    theta = list(model.world_model.parameters())
    anchor = torch.autograd.grad(mle, theta, retain_graph=True)
    model.hparams.hypergradient_per_tensor, model.hparams.mle_weight = False, 0.0
    hyper, _ = model.world_model_gradients(batch, cache, loss, inner, pred)
    ratios = [((g - 2.0 * a).norm() / (2.0 * a.norm())).item()
              for g, a in zip(grads, anchor, strict=True) if a.norm() > 0]
    assert max(ratios) <= 0.01 + 1e-4
    assert max(h.norm() / (2.0 * a.norm()) for h, a in zip(hyper, anchor, strict=True)
               if a.norm() > 0) > 0.01  # the cap binds: uncapped, some tensor is above it
    with pytest.raises(ValueError, match="hypergradient_per_tensor"):
        learner(hypergradient_per_tensor=True)


def test_evaluation_runs_in_eval_mode_and_restores_the_mode(monkeypatch):
    """The final summary evaluates right after ``fit``, with the module in training mode:
    sampled (Gumbel) labels would make the "greedy" evaluation random."""
    import seqcomm.learner as learner_module

    model = learner()
    seen = []

    def fake_evaluate(env, policy, n_episodes):
        seen.append((policy.greedy, policy.net.training, model.net.comm.training))
        return {"return": 0.0}

    monkeypatch.setattr(learner_module, "evaluate_policy", fake_evaluate)
    monkeypatch.setattr(SeqCommDFL, "trainer", property(
        lambda self: SimpleNamespace(datamodule=SimpleNamespace(
            eval_env=SimpleNamespace(device=torch.device("cpu"))))))
    model.train()
    model.evaluate(1)
    assert seen == [(True, False, False)] and model.training and model.net.comm.training


def matrix_batch(env: MatrixGame) -> TensorDict:
    """One-step episodes of ``env`` under random joint actions, ``[B, T=1]``."""
    td = env.reset()
    td[ACTION] = torch.randint(0, 2, (env.batch_size[0], 2))
    td["next"] = env.step(td)["next"]
    td["is_init"] = torch.ones(env.batch_size[0], 1, dtype=torch.bool)
    return td.unsqueeze(1)


@pytest.mark.parametrize("receiver", ["soft", "online"])
def test_influence_trains_the_messages_not_the_receivers(receiver):
    """L_inf ("differ from the masked decision") is blind to value: through a receiver head
    that learns, it taught the matrix game's receiver the wrong action under a label whose
    best action is the masked one. Its gradient must reach the messenger only."""
    torch.manual_seed(0)
    env = MatrixGame(8, seed=1)
    model = SeqCommDFL(env_info(env), comm=functools.partial(
        SeqCommMessenger, ordering="fixed", fixed_order=[1, 0], base_round=False),
        world_model_gradient="none",
        hidden_dim=8, va_receiver=receiver, influence_tau=1.0)
    batch = matrix_batch(env)
    _, cache = model.td_loss(batch)
    inf = model.message_losses(batch, cache)["inf"]
    heads = list(model.net.agent.head.parameters())
    grads = torch.autograd.grad(inf, heads + list(model.net.comm.parameters()),
                                allow_unused=True)
    norm = [0.0 if g is None else float(g.abs().sum()) for g in grads]
    assert sum(norm[:len(heads)]) == 0.0
    assert sum(norm[len(heads):]) > 0.0


def test_value_aware_losses_start_at_va_start_fraction():
    """Before ``va_start_fraction`` of the run ``L_VA`` and ``L_inf`` are zero and send no
    gradient (the awareness term still trains); from it on both are live."""
    torch.manual_seed(0)
    env = MatrixGame(8, seed=1)
    model = SeqCommDFL(env_info(env), comm=functools.partial(
        SeqCommMessenger, ordering="fixed", fixed_order=[1, 0]), world_model_gradient="none",
        hidden_dim=8, va_start_fraction=0.25, va_warmup_fraction=0.0)
    batch = matrix_batch(env)
    _, cache = model.td_loss(batch)
    for progress, live in ((0.0, False), (0.2, False), (0.25, True), (0.9, True)):
        model.progress = lambda p=progress: p
        out = model.message_losses(batch, dict(cache))
        value_aware = out["va"] + out["inf"]
        assert value_aware.requires_grad == live and (value_aware.abs() > 0) == live, progress
        assert out["aware"].requires_grad
    with pytest.raises(ValueError, match="va_start_fraction"):
        learner(va_start_fraction=1.5)


@pytest.mark.parametrize("lambda_gp", [0.0, 1.0])
def test_lambda_gp_zero_skips_the_guidance_potential_regression(lambda_gp, monkeypatch):
    """``lambda_gp: 0``: no guidance-potential target is computed, the loss is zero and the
    ordering head does not even run (``gp_pred`` is None); otherwise the regression trains
    the head."""
    torch.manual_seed(0)
    env = MatrixGame(8, seed=1)
    model = SeqCommDFL(env_info(env), comm=functools.partial(SeqCommMessenger, ordering="fixed"),
                       world_model_gradient="none", hidden_dim=8, lambda_gp=lambda_gp)
    calls = []
    target = model.guidance_potential_target
    monkeypatch.setattr(model, "guidance_potential_target",
                        lambda *a: calls.append(1) or target(*a))
    batch = matrix_batch(env)
    _, cache = model.td_loss(batch)
    out = model.message_losses(batch, cache)
    assert len(calls) == int(lambda_gp > 0)
    assert (cache["aux"].gp_pred is not None) == (lambda_gp > 0)
    assert out["gp"].requires_grad == (lambda_gp > 0)
    if lambda_gp > 0:
        out["gp"].backward()
        psi = model.net.comm.ordering.psi[0].weight.grad
        assert psi is not None and psi.abs().sum() > 0


def test_lookahead_receiver_learns_its_pools_best_action():
    """Under ``label_scoring: lookahead`` the receiver's utilities under each label move toward
    the best action of that (receiver observation, label) pool by the critic's values, even
    where the receiver is confidently wrong; an undecided pool teaches nothing."""
    torch.manual_seed(0)
    env = MatrixGame(8, seed=1)
    model = SeqCommDFL(env_info(env), comm=functools.partial(
        SeqCommMessenger, message="discrete", n_labels=2, ordering="fixed",
        fixed_order=[1, 0], base_round=False), world_model_gradient="none", hidden_dim=8,
        label_scoring="lookahead")
    B = 4  # receiver observation 0 every time; the sender sends label 0
    obs = torch.zeros(B, 1, 2, env_info(env).obs_dim)
    obs[torch.arange(B), 0, 1, torch.arange(B) % 2] = 1.0  # two sender observations, label 0
    batch = TensorDict({"agents": {"observation": obs}}, batch_size=[B, 1])
    batch[MASK] = torch.ones(B, 1, 2, 2, dtype=torch.bool)
    probs = torch.tensor([1.0, 0.0]).expand(B, 1, 2, 2)
    values = torch.tensor([[3.0, 1.0], [0.0, 0.0]]).expand(B, 1, 2, 2)  # a0 best; sender idle
    q = torch.tensor([0.0, 5.0]).expand(2, B, 1, 2, 2).clone().requires_grad_(True)
    gain = model.lookahead_gain(batch, values, probs, q)
    (g,) = torch.autograd.grad(gain.sum(), q)
    assert (g[0, :, :, 0, 0] > 0).all() and (g[0, :, :, 0, 1] < 0).all()  # toward a0
    assert g[:, :, :, 1].abs().sum() == 0  # the sender's own pools are undecided (0 = 0)
    assert g[1].abs().sum() == 0  # label 1 is sent by nobody: no pool, no target


def test_label_temperature_anneals_geometrically_to_its_final_value():
    """``lambda_entropy_final`` decays the label entropy weight (the sender's temperature)
    geometrically over ``entropy_anneal_fraction`` of the run, then holds it."""
    model = learner(lambda_entropy=0.5, lambda_entropy_final=0.005, entropy_anneal_fraction=0.5)
    for progress, expected in ((0.0, 0.5), (0.25, 0.05), (0.5, 0.005), (0.9, 0.005)):
        model.progress = lambda p=progress: p
        assert model.label_entropy_weight() == pytest.approx(expected)
    assert learner(lambda_entropy=0.5).label_entropy_weight() == 0.5  # no final: constant
    with pytest.raises(ValueError, match="lambda_entropy_final"):
        learner(lambda_entropy=0.0, lambda_entropy_final=0.1)


def test_annealed_lookahead_sender_acts_on_a_gain_far_below_its_first_temperature():
    """A label worth 0.01 (temperature 0.025 at the start) barely moves a sender already at
    its Boltzmann target; once the temperature has annealed, the same score pushes the sender
    hard toward the better label (the loss keeps its scale: only the target sharpens)."""
    env = MatrixGame(8, seed=1)
    B = 4
    obs = torch.zeros(B, 1, 2, env_info(env).obs_dim)
    obs[torch.arange(B), 0, 1, torch.arange(B) % 2] = 1.0  # two sender observations
    batch = TensorDict({"agents": {"observation": obs}}, batch_size=[B, 1])
    batch[MASK] = torch.ones(B, 1, 2, 2, dtype=torch.bool)
    values = torch.zeros(B, 1, 2, 2)
    values[:, 0, 0] = torch.tensor([[3.0, 1.0], [1.0, 1.02]])[torch.arange(B) % 2]
    q = torch.zeros(2, B, 1, 2, 2)

    def push(progress: float) -> float:
        torch.manual_seed(0)
        model = SeqCommDFL(env_info(env), comm=functools.partial(
            SeqCommMessenger, message="discrete", n_labels=2, ordering="fixed",
            fixed_order=[1, 0], base_round=False), world_model_gradient="none", hidden_dim=8,
            label_scoring="lookahead", lambda_va=20.0, lambda_entropy=0.5,
            lambda_entropy_final=0.005)
        model.progress = lambda: progress
        logits = torch.tensor([0.2, -0.2]).expand(B, 1, 2, 2).clone().requires_grad_(True)
        gain = model.lookahead_gain(batch, values, logits.softmax(-1), q)
        (g,) = torch.autograd.grad(gain.sum(), logits)
        return float(g[:, 0, 1, 1].mean())  # sender (agent 1): toward label 1

    start, end = push(0.0), push(1.0)
    assert end > 0 and end > 20 * abs(start)


def test_team_critic_trains_in_its_own_step_with_its_own_clip():
    """The critic has its own Adam, outside w's, and its own gradient clip: a large critic
    loss is clipped to ``grad_clip`` by the critic's norm alone, and no gradient reaches w."""
    model = learner(grad_clip=0.5)
    opt_w, opt_critic = model.configure_optimizers()
    critic = {id(p) for p in model.critic.parameters()}
    assert not critic & {id(p) for g in opt_w.param_groups for p in g["params"]}
    assert critic == {id(p) for g in opt_critic.param_groups for p in g["params"]}
    before = [p.detach().clone() for p in model.critic.parameters()]
    state, joint = torch.randn(16, INFO.state_dim), torch.randn(16, INFO.n_agents, INFO.n_actions)
    loss = model.critic.loss(state, joint, 1e3 * torch.randn(16, 1))
    model.step_critic(type("Opt", (), {"zero_grad": opt_critic.zero_grad,
                                       "optimizer": opt_critic})(), loss)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.critic.parameters()]))
    assert 0 < norm <= 0.5 + 1e-5
    after = model.critic.parameters()
    assert all(not torch.equal(b, p) for b, p in zip(before, after, strict=True))
    assert all(p.grad is None for p in model.net.parameters())


def test_checkpoint_from_before_the_critics_own_step_splits_the_adam_state():
    """An older checkpoint's single Adam over (net, critic) resumes as w's and the critic's:
    each parameter keeps its own moments."""
    model = learner()
    net, critic = list(model.net.parameters()), list(model.critic.parameters())
    old = torch.optim.Adam(net + critic, lr=1e-3)
    for p in net + critic:
        p.grad = torch.randn_like(p)
    old.step()
    checkpoint = {"optimizer_states": [old.state_dict()]}
    model.on_load_checkpoint(checkpoint)
    opt_w, opt_critic = model.configure_optimizers()
    for opt, state in zip((opt_w, opt_critic), checkpoint["optimizer_states"], strict=True):
        opt.load_state_dict(state)
    for p in net:
        assert torch.equal(opt_w.state[p]["exp_avg"], old.state[p]["exp_avg"])
    for p in critic:
        assert torch.equal(opt_critic.state[p]["exp_avg_sq"], old.state[p]["exp_avg_sq"])


def test_value_aware_losses_are_weighed_by_the_critics_resolution_of_actions():
    """``va_confidence``: 1 for an exact critic, spread^2 / (spread^2 + MSE) otherwise;
    off, the losses keep their full weight whatever the critic's error."""
    table = torch.tensor([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    B = 4
    batch = TensorDict({STATE: torch.zeros(B, 5), MASK: torch.ones(B, 3, 3, dtype=torch.bool),
                        ACTION: torch.zeros(B, 3, dtype=torch.long)}, batch_size=[B])
    cf = SimpleNamespace(receivers=None)
    model = learner(va_confidence=True, va_normalize=False)
    model.critic = TableCritic(table)
    _, spread = model.evaluator_values(batch, {})
    assert spread.item() > 0.5
    exact = model.evaluator_confidence(batch, {}, torch.tensor(0.0), cf)
    noisy = model.evaluator_confidence(batch, {}, 99 * spread.pow(2), cf)
    assert exact.item() == pytest.approx(1.0) and noisy.item() == pytest.approx(0.01)
    model = learner(va_confidence=False)
    model.critic = TableCritic(table)
    assert model.evaluator_confidence(batch, {}, 99 * spread.pow(2), cf).item() == 1.0


def test_dfl_every_runs_the_decision_focused_update_on_every_kth_step(fit_matrix):
    """``dfl_every: 3``: updates 0, 3, 6, ... are decision-focused (the world model's loss
    moves), the two between are TD steps (the value loss moves, the world model's stays)."""
    run = fit_matrix("--config", str(ROOT / "conf/methods/seqcomm_dfl.yaml"),
                     "--model.init_args.dfl_every=3", "--trainer.log_every_n_steps=1",
                     "--data.total_frames=1280")
    metrics = read_metrics(run)
    flags = metrics["train/decision_focused"]
    steps = sorted(flags)[:-1]  # the last row: the end of fit's flush repeats the last values
    assert len(steps) >= 9 and steps == list(range(len(steps)))
    assert [flags[s] for s in steps] == [float(s % 3 == 0) for s in steps]
    model_td, td = metrics["loss/model_td"], metrics["loss/td"]
    for s in steps[1:]:
        assert (model_td[s] != model_td[s - 1]) == (s % 3 == 0), s
        assert td[s] != td[s - 1], s


@pytest.mark.parametrize("body", [True, False])
def test_va_body_decides_whether_message_losses_train_the_senders_states(body):
    """``va_body: false``: the counterfactual pass behind ``L_VA`` / ``L_inf`` reaches the
    messenger's parameters and not the senders' recurrent states; ``true``: both."""
    torch.manual_seed(0)
    model = learner(va_body=body)
    h = torch.randn(2, 3, 8, requires_grad=True)
    model.counterfactual_utilities(None, {"h": h}).q.sum().backward()
    assert model.net.comm.encoder.head.weight.grad.abs().sum() > 0
    assert (h.grad is not None and bool(h.grad.abs().sum() > 0)) == body


@pytest.mark.parametrize("messages", ["all", "refined"])
def test_va_messages_decides_whether_message_losses_train_the_base_round(messages):
    """``va_messages: refined``: the counterfactual pass behind ``L_VA`` / ``L_inf`` trains the
    refinement and not the base round (whose values get no gradient); ``all``: both."""
    torch.manual_seed(0)
    model = learner(va_messages=messages, va_body=False)
    h = torch.randn(2, 3, 8)
    model.counterfactual_utilities(None, {"h": h}).q.sum().backward()
    comm = model.net.comm
    assert comm.rho[0].weight.grad.abs().sum() > 0 and comm.ctx_value.weight.grad.abs().sum() > 0
    base_grad = comm.base_value.weight.grad
    assert (base_grad is not None and bool(base_grad.abs().sum() > 0)) == (messages == "all")
    with pytest.raises(ValueError, match="va_messages"):
        SeqCommDFL(INFO, comm=functools.partial(SeqCommMessenger, refinement=False),
                   world_model_gradient="none", hidden_dim=8, va_messages="refined")


def test_project_conflicting_removes_only_the_opposing_component_per_tensor():
    """One-sided PCGrad per tensor: where the auxiliary gradient opposes the main one it loses
    its component along it (hand-computed), even when the inner product over all tensors is
    positive; where it does not, it passes unchanged; ``None`` stays ``None``."""
    from seqcomm.dfl.gradient_projection import add_gradients, project_conflicting
    main = [torch.tensor([-1.0, 1.0]), torch.tensor([0.0]), torch.tensor([1.0])]
    aux = [torch.tensor([1.0, 0.0]), None, torch.tensor([3.0])]
    out, cosine = project_conflicting(aux, main)
    assert torch.allclose(out[0], torch.tensor([0.5, 0.5])) and (out[0] * main[0]).sum() == 0
    assert out[1] is None and torch.equal(out[2], aux[2])
    assert cosine == pytest.approx(2 / 30 ** 0.5)  # positive over all the tensors
    total = add_gradients(main, [None, torch.tensor([1.0]), None])
    assert torch.equal(total[0], main[0]) and total[1].item() == 1.0


@pytest.mark.parametrize("mode", ["sum", "project"])
def test_message_gradient_decides_whether_message_losses_may_oppose_td(mode):
    """``message_gradient``: ``sum`` steps on the weighted sum's gradient; ``project`` drops
    the message losses' component against the TD losses', so where L_VA pulls exactly
    against TD only TD's gradient is left, and the cosine is logged."""
    model = learner(message_gradient=mode)
    p = nn.Parameter(torch.zeros(3))
    losses = {"td": (p - 1).pow(2).sum(), "model_td": p.sum() * 0, "va": (p + 1).pow(2).sum()}
    grads, logs = model.w_gradients(losses, {"td": 1.0, "model_td": 0.5, "va": 1.0}, [p])
    expected = torch.full((3,), -2.0) if mode == "project" else torch.zeros(3)
    assert torch.allclose(grads[0], expected)
    assert logs == ({"grad/message_td_cosine": pytest.approx(-1.0)} if mode == "project" else {})
    with pytest.raises(ValueError, match="message_gradient"):
        learner(message_gradient="pcgrad")


def test_message_gradient_project_trains_through_fit_and_logs_the_cosine(fit_matrix):
    """The method file with ``message_gradient: project`` trains (the TD loss moves) and logs
    the cosine between the message and TD gradients, a number in [-1, 1], every update."""
    run = fit_matrix("--config", str(ROOT / "conf/methods/seqcomm_dfl.yaml"),
                     "--model.init_args.message_gradient=project",
                     "--trainer.log_every_n_steps=1", "--data.total_frames=640")
    metrics = read_metrics(run)
    cosine, td = metrics["grad/message_td_cosine"], metrics["loss/td"]
    assert len(cosine) >= 4 and all(-1.0 <= c <= 1.0 for c in cosine.values())
    assert any(c != 0.0 for c in cosine.values()) and len(set(td.values())) > 1

"""The SeqComm baseline (seqcomm.comm.launching, seqcomm.comm.intention, seqcomm_learner):
who hears whose action, intention values against hand-computed rollouts, the launching
phase against a rank-by-rank reference, and a few updates on matrix, maze and hospital."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import read_metrics, read_summary
from test_ablations import SHORT, TINY, check_run, stack, task, values

from seqcomm.agent import RNNAgent
from seqcomm.cli import main
from seqcomm.comm.intention import (
    intention_values,
    leader_orders,
    order_by_intention,
    rollout_return,
)
from seqcomm.comm.launching import LaunchingMessenger, launch
from seqcomm.data import EpisodeData
from seqcomm.dfl.world_model import WorldModel, WorldModelPrediction
from seqcomm.envs.base import env_info
from seqcomm.envs.hospital import Hospital
from seqcomm.seqcomm_learner import SeqCommLearner
from seqcomm.sequential_policy import ORDER

METHOD = "conf/methods/seqcomm.yaml"


def launcher(n: int, n_actions: int, hidden: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    comm = LaunchingMessenger(hidden, n, msg_dim=4, attn_dim=4, action_dim=4)
    comm.bind_actions(n_actions)
    agent = RNNAgent(3, n, n_actions, hidden, comm.ctx_dim)
    return comm, agent


def random_orders(batch: int, n: int) -> torch.Tensor:
    return torch.stack([torch.randperm(n) for _ in range(batch)])


# -- launching phase ------------------------------------------------------------------------
def test_followers_get_gradient_from_leaders_actions_and_leaders_none_from_followers():
    n, A, B = 3, 4, 6
    comm, agent = launcher(n, A)
    h = torch.randn(B, n, 8)
    order = random_orders(B, n)
    onehot = torch.nn.functional.one_hot(torch.randint(A, (B, n)), A).float()
    onehot.requires_grad_(True)
    ctx, _ = comm(h, order=order, actions=onehot)
    q = agent.q(h, ctx)
    rank = order.argsort(-1)
    for j in range(n):
        (grad,) = torch.autograd.grad(q[:, j].pow(2).sum(), onehot, retain_graph=True)
        heard = grad.abs().sum(-1) > 0  # [B, n]: did j's utility read agent i's action?
        assert torch.equal(heard, rank < rank[:, j:j + 1]), (j, order, heard)
    # the TD path: a follower's loss trains the action embedding, a leader's does not
    leader, follower = order[:, 0], order[:, -1]
    for who, expect in ((leader, False), (follower, True)):
        comm.zero_grad()
        ctx, _ = comm(h, order=order, actions=onehot.detach().argmax(-1))
        agent.q(h, ctx)[torch.arange(B), who].sum().backward()
        assert bool(comm.action_embed.weight.grad.abs().sum() > 0) is expect


def test_launch_is_the_rank_by_rank_protocol_and_its_utilities_are_the_teacher_forced_ones():
    n, A, B = 4, 5, 16
    comm, agent = launcher(n, A, seed=1)
    h = torch.randn(B, n, 8)
    order = random_orders(B, n)
    mask = torch.rand(B, n, A) < 0.7
    mask[..., 0] = True
    explore = torch.rand(B, n) < 0.3
    rand = torch.multinomial(mask.view(-1, A).float(), 1).view(B, n)

    def utilities(actions):
        ctx, _ = comm(h, order=order, actions=actions)
        return agent.q(h, ctx)

    actions, q = launch(utilities, mask, n, (explore, rand))
    reference = torch.zeros(B, n, dtype=torch.long)
    rows = torch.arange(B)
    for k in range(n):  # one agent at a time, in rank order
        who = order[:, k]
        greedy = utilities(reference).masked_fill(~mask, -math.inf).argmax(-1)[rows, who]
        reference[rows, who] = torch.where(explore[rows, who], rand[rows, who], greedy)
    assert torch.equal(actions, reference)
    assert not torch.equal(actions, launch(utilities, mask, 1, (explore, rand))[0])
    # training's one masked pass on the taken actions gives the acting-time utilities
    assert torch.allclose(q, utilities(actions))


# -- negotiation phase ----------------------------------------------------------------------
def copy_model(weights: tuple[float, ...]):
    """Deterministic: s' = s + sum_i w_i a_i, r = s + a_0, P(terminated) = 1/2."""
    w = torch.tensor(weights)

    def model(state, obs, actions):
        nxt = state + (w * actions.float()).sum(-1, keepdim=True)
        return WorldModelPrediction(nxt, obs, state + actions[..., :1].float(),
                                    torch.zeros_like(state))
    return model


def by_rank(h, state, order, mask):
    """Each agent's intended action is its rank (the leader plays 0); chosen utility 1."""
    actions = order.argsort(-1)
    return actions, torch.ones_like(actions, dtype=state.dtype)


def keep(next_obs, next_state, h):
    return h


def test_intention_value_is_the_hand_computed_rollout_return():
    gamma = 0.5
    value = lambda chosen, state: state * chosen.sum(-1, keepdim=True)  # noqa: E731
    orders = torch.tensor([[[0, 1, 2], [0, 2, 1]], [[1, 0, 2], [1, 2, 0]],
                           [[2, 0, 1], [2, 1, 0]]]).unsqueeze(0)  # [B=1, n=3, F=2, n=3]
    state, obs, h = torch.ones(1, 1), torch.zeros(1, 3, 1), torch.zeros(1, 3, 2)
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    got = intention_values(by_rank, keep, copy_model((1.0, 2.0, 4.0)), value, h, state, obs,
                           mask, orders, horizon=2, gamma=gamma)

    def by_hand(order: list[int]) -> float:
        a = [order.index(i) for i in range(3)]
        s0 = 1.0
        s1 = s0 + a[0] + 2 * a[1] + 4 * a[2]
        s2 = s1 + a[0] + 2 * a[1] + 4 * a[2]
        # r_k = s_k + a_0, alive 1, 1/2, 1/4; V(s_2) = 3 s_2
        return (s0 + a[0]) + gamma * 0.5 * (s1 + a[0]) + gamma**2 * 0.25 * 3 * s2

    expected = torch.tensor([[sum(by_hand(o) for o in pair) / 2
                              for pair in orders[0].tolist()]])
    assert expected.tolist() == [[7.0625, 8.0, 6.125]]
    assert torch.allclose(got, expected)
    assert order_by_intention(got).tolist() == [[1, 0, 2]]
    # one order, H = 0: only the bootstrap; H = 1: one reward and half a bootstrap
    one = orders[:, :, :1]
    zero = intention_values(by_rank, keep, copy_model((1.0, 2.0, 4.0)), value, h, state, obs,
                            mask, one, horizon=0, gamma=gamma)
    assert zero.tolist() == [[3.0, 3.0, 3.0]]
    ret = rollout_return(by_rank, keep, copy_model((1.0, 2.0, 4.0)), value, h, state, obs,
                         mask, torch.tensor([[1, 2, 0]]), horizon=1, gamma=gamma)
    assert ret.item() == pytest.approx((1 + 2) + gamma * 0.5 * 3 * (1 + 2 + 0 + 4))


def test_leader_orders_start_with_their_leader_and_sample_the_rest():
    gen = torch.Generator().manual_seed(0)
    orders = leader_orders(torch.Size([50]), 4, 6, gen)
    assert orders.shape == (50, 4, 6, 4)
    assert torch.equal(orders[..., 0], torch.arange(4).view(1, 4, 1).expand(50, 4, 6))
    assert torch.equal(orders.sort(-1).values, torch.arange(4).expand(50, 4, 6, 4))
    assert len({tuple(o) for o in orders[:, 0].reshape(-1, 4).tolist()}) == 6  # all 3! tails


# -- training -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    def run(*args: str):
        root = tmp_path_factory.mktemp("seqcomm")
        main(["fit", *args, *TINY, "--wandb", "false", "--trainer.enable_progress_bar",
              "false", "--trainer.default_root_dir", str(root), "--run_name", "run"])
        return root / "run" / "version_0"
    return run


@pytest.mark.parametrize("task_name", ["matrix", "maze", "hospital"])
def test_seqcomm_trains_a_few_updates(task_name, fit):
    run = fit(*stack(task(task_name), METHOD), *SHORT.get(task_name, []))
    metrics, summary, config = check_run(run)
    assert summary["updates"] == 3
    hp = config["model"]["init_args"]
    assert hp["orders"] == 2 and hp["horizon"] == 2
    model_mle = metrics["loss/model_mle"]  # {step: value}
    assert len(model_mle) >= 3 and min(model_mle.values()) > 0  # logged every update
    spread = values(metrics, "comm/intention_spread")
    assert spread and min(spread) >= 0 and all(math.isfinite(v) for v in spread)
    n = {"matrix": 2, "maze": 2, "hospital": 3}[task_name]
    entropy = values(metrics, "comm/order_entropy")
    assert entropy and max(entropy) <= math.log2(n) + 1e-6
    assert set(values(metrics, "comm/bits_per_step")) and all(
        b > 32.0 * (hp["comm"]["init_args"]["msg_dim"] + 1)
        for b in values(metrics, "comm/bits_per_step"))
    assert read_summary(run)["env_steps"] > 0 and "loss/td" in read_metrics(run)


def test_the_replay_batch_keeps_the_acting_order(tmp_path):
    """The order each step was acted in reaches the learner (stored under ORDER) and is a
    permutation; a learner trains on it."""
    env = lambda num_envs, seed, device: Hospital(num_envs, seed, device,  # noqa: E731
                                                  n_specialists=3, episode_limit=3)
    data = EpisodeData(env, num_envs=4, batch_size=4, warmup_chunks=4, buffer_size=8)
    model = SeqCommLearner(env_info=data.info, comm=LaunchingMessenger, hidden_dim=16)

    class Trainer:  # what EpisodeData reads of a trainer
        lightning_module, global_rank = model, 0
        strategy = SimpleNamespace(root_device=torch.device("cpu"))

    data.trainer = Trainer()
    data.setup("fit")
    data.collect()
    batch = data.buffer.sample()
    order = batch[ORDER]
    assert order.shape == (4, 3, 3)
    assert torch.equal(order.sort(-1).values, torch.arange(3).expand(4, 3, 3))
    loss, _ = model.td_loss(batch)
    assert math.isfinite(loss.item())
    # another order changes the teacher-forced utilities (followers read other leaders)
    h, _ = model.recurrent_states(model.net, batch)
    q = model.utilities(model.net, h, order, batch["agents", "action"])
    q_rev = model.utilities(model.net, h, order.flip(-1), batch["agents", "action"])
    assert not torch.allclose(q, q_rev)


def test_the_world_model_is_a_component_built_with_the_task_sizes():
    """``world_model`` is a factory (class_path in YAML); by default ``WorldModel`` of width 64
    (SeqComm's former ``model_hidden``); the learner passes the task's sizes, no messages."""
    info = env_info(Hospital(1, 0, "cpu", n_specialists=3, episode_limit=3))
    model = SeqCommLearner(env_info=info, comm=LaunchingMessenger, hidden_dim=16)
    wm = model.world_model
    assert isinstance(wm, WorldModel) and wm.state_head.in_features == 64
    assert (wm.pooling, wm.msg_dim, wm.n_agents) == ("mean", 0, info.n_agents)
    assert wm.state_head.out_features == info.state_dim
    assert "world_model" not in model.hparams and "model_hidden" not in model.hparams
    model = SeqCommLearner(env_info=info, comm=LaunchingMessenger, hidden_dim=16,
                           world_model=functools.partial(WorldModel, hidden_dim=8,
                                                         pooling="concat"))
    wm = model.world_model
    assert wm.pooling == "concat" and wm.joint[0].in_features == info.state_dim + 8 * 3

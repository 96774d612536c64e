"""Unit tests of the QMIX backbone (docs/method.md §1.2): mixer, agent, policy, TD target."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from seqcomm.comm.base import MessageOutput
from seqcomm.envs.base import ACTION, AGENTS, MASK, OBS, STATE, EnvInfo
from seqcomm.learner import QLearner
from seqcomm.mixer import MonotonicMixer
from seqcomm.policy import EpsilonGreedyPolicy
from seqcomm.team_q import TeamQ, masked_argmax

INFO = EnvInfo(n_agents=3, obs_dim=5, state_dim=7, n_actions=6, episode_limit=4)


# -- mixer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_mixer_is_monotonic_in_every_agent_utility(seed):
    torch.manual_seed(seed)
    mixer = MonotonicMixer(state_dim=7, n_agents=3, embed_dim=16)
    for p in mixer.parameters():  # away from the initialisation, weights of both signs
        nn.init.normal_(p, std=0.5)
    chosen = (torch.randn(4096, 3) * 5).requires_grad_()
    state = torch.randn(4096, 7) * 3
    mixer(chosen, state).sum().backward()  # samples are independent: row i holds dQ_tot_i/dQ
    assert (chosen.grad >= 0).all()
    assert (chosen.grad > 0).float().mean() > 0.99  # not monotone by being flat


def test_mixer_gradcheck_float64():
    torch.manual_seed(0)
    mixer = MonotonicMixer(state_dim=4, n_agents=3, embed_dim=8).double()
    chosen = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    state = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mixer, (chosen, state), eps=1e-6, atol=1e-5)


def test_mixer_broadcasts_state_over_extra_leading_dims():
    torch.manual_seed(0)
    mixer = MonotonicMixer(state_dim=4, n_agents=3, embed_dim=8)
    chosen = torch.randn(6, 2, 5, 3)  # e.g. [message masks, B, T, n]
    state = torch.randn(2, 5, 4)
    out = mixer(chosen, state)
    assert out.shape == (6, 2, 5, 1)
    explicit = mixer(chosen, state.expand(6, 2, 5, 4))
    torch.testing.assert_close(out, explicit)
    torch.testing.assert_close(out[3], mixer(chosen[3], state))


@pytest.mark.parametrize(("chosen_shape", "state_shape"), [
    ((6, 2, 5, 3), (2, 5, 4)),  # counterfactual message masks in front
    ((2, 5, 3, 6, 3), (2, 5, 1, 1, 4)),  # switched (agent, action) pairs behind
    ((4, 2, 5, 6, 3), (2, 1, 1, 4)),  # shared dims on both sides of the state's own
])
def test_broadcast_state_runs_the_hypernetworks_once_with_the_same_values_and_gradients(
        chosen_shape, state_shape):
    """A state shared by extra dims of ``chosen`` is not copied through the hypernetworks
    (issue 9); the result is TorchRL's mixing of the expanded state, gradients included."""
    torch.manual_seed(0)
    mixer = MonotonicMixer(state_dim=4, n_agents=3, embed_dim=8).double()
    rows = []
    mixer.hyper_w_1.register_forward_hook(lambda m, x, y: rows.append(x[0].numel() // 4))
    chosen = torch.randn(*chosen_shape, dtype=torch.float64, requires_grad=True)
    state = torch.randn(*state_shape, dtype=torch.float64, requires_grad=True)
    out = mixer(chosen, state)
    assert rows == [state.numel() // 4]
    expanded = state.expand(*chosen_shape[:-1], 4).contiguous()
    reference = super(MonotonicMixer, mixer).forward(chosen.unsqueeze(-1), expanded)
    assert out.shape == (*chosen_shape[:-1], 1)
    torch.testing.assert_close(out, reference)
    params = [chosen, state, *mixer.parameters()]
    for g, h in zip(torch.autograd.grad(out.sum(), params),
                    torch.autograd.grad(reference.sum(), params), strict=True):
        torch.testing.assert_close(g, h)


# -- agent ---------------------------------------------------------------------------------
def test_unroll_restarts_the_recurrent_state_at_episode_starts():
    torch.manual_seed(0)
    net = TeamQ(INFO, hidden_dim=8)
    obs = torch.randn(2, 5, 3, 5)
    is_init = torch.zeros(2, 5, dtype=torch.bool)
    is_init[:, 0] = True
    is_init[0, 3] = True  # a second episode starts at t=3 in chunk 0
    h = net.agent.unroll(obs, is_init)
    fresh = net.agent.unroll(obs[:, 3:], is_init[:, :2])  # new episodes at t=3
    torch.testing.assert_close(h[0, 3:], fresh[0])  # chunk 0 forgot t < 3
    assert not torch.allclose(h[1, 3], fresh[1, 0])  # chunk 1 did not


# -- acting policy -------------------------------------------------------------------------
def policy_input(E: int, seed: int) -> TensorDict:
    """Random observations and masks with one or two available actions per agent."""
    g = torch.Generator().manual_seed(seed)
    n, A = INFO.n_agents, INFO.n_actions
    mask = torch.rand(E, n, A, generator=g) < 0.2
    forced = torch.randint(A, (E, n), generator=g)  # every agent keeps at least one action
    mask.scatter_(-1, forced.unsqueeze(-1), True)
    agents = TensorDict({"observation": torch.randn(E, n, INFO.obs_dim, generator=g),
                         "action_mask": mask}, batch_size=(E, n))
    return TensorDict({AGENTS: agents, STATE: torch.randn(E, INFO.state_dim, generator=g)},
                      batch_size=(E,))


def test_exploration_draws_uniformly_among_available_actions_only():
    torch.manual_seed(0)
    policy = EpsilonGreedyPolicy(TeamQ(INFO, hidden_dim=8), eps_start=1.0, eps_end=1.0)
    policy.generator.manual_seed(0)
    td = policy_input(4096, seed=1)
    mask = td[MASK].clone()
    counts = torch.zeros_like(mask, dtype=torch.long)
    for _ in range(8):
        action = policy(td.clone())[ACTION]
        assert mask.gather(-1, action.unsqueeze(-1)).all()
        counts.scatter_add_(-1, action.unsqueeze(-1), torch.ones_like(action).unsqueeze(-1))
    # rows with two available actions: per row, the more frequent one takes on average
    # E[max(k, 8 - k)] / 8 = 1304 / 2048 of 8 uniform draws (a greedy choice: all 8), and over
    # all rows the lower-index action takes half of them
    two = mask.sum(-1) == 2
    assert two.sum() > 1000
    share = (counts.max(-1).values[two].float() / 8).mean().item()
    assert share == pytest.approx(1304 / 2048, abs=0.02)
    first = mask[two].long().argmax(-1, keepdim=True)
    lower = counts[two].gather(-1, first).sum().item() / (8 * two.sum().item())
    assert lower == pytest.approx(0.5, abs=0.02)


def test_greedy_policy_picks_the_best_available_action():
    torch.manual_seed(0)
    net = TeamQ(INFO, hidden_dim=8)
    policy = EpsilonGreedyPolicy(net, eps_start=1.0, eps_end=1.0)
    policy.greedy = True
    td = policy_input(4096, seed=2)
    mask = td[MASK].clone()
    action = policy(td.clone())[ACTION]
    assert mask.gather(-1, action.unsqueeze(-1)).all()
    with torch.no_grad():
        h = net.agent.encode(td[OBS], torch.zeros(4096, INFO.n_agents, 8))
        q, _ = net.utilities(h)
    best = q.masked_fill(~mask, -float("inf")).max(-1).values
    torch.testing.assert_close(q.gather(-1, action.unsqueeze(-1)).squeeze(-1), best)
    assert (q.argmax(-1) != action).float().mean() > 0.3  # the mask did change choices


def test_epsilon_anneals_linearly_with_env_steps():
    policy = EpsilonGreedyPolicy(TeamQ(INFO, hidden_dim=8), 1.0, 0.1, eps_anneal_frames=1000)
    for frames, eps in ((0, 1.0), (500, 0.55), (1000, 0.1), (5000, 0.1)):
        policy.frames.fill_(frames)
        assert policy.epsilon == pytest.approx(eps)


# -- TD target -----------------------------------------------------------------------------
class MarkAgent:
    """Recurrent states that only say where they are: 0 at the stored step, 1 after the next
    observation."""

    def unroll(self, obs, is_init):
        return obs.new_zeros(*obs.shape[:-1], 1)

    def encode(self, obs, h):
        return obs.new_ones(*obs.shape[:-1], 1)


class KnownQ(nn.Module):
    """A stand-in ``TeamQ`` with hand-set utilities: ``q_now`` at the stored step and ``q_next``
    after the next observation; ``Q_tot = w . chosen + state[0]``."""

    def __init__(self, q_now: list, q_next: list, w: list) -> None:
        super().__init__()
        self.q_now, self.q_next = torch.tensor(q_now), torch.tensor(q_next)
        self.w = torch.tensor(w)
        self.agent = MarkAgent()
        self.anchor = nn.Parameter(torch.zeros(()))  # so the online loss has a parameter

    def inputs(self, obs, state):
        return obs

    def utilities(self, h, deliver=None):
        q = torch.where(h == 0, self.q_now, self.q_next) + self.anchor
        return q, MessageOutput()

    def mix(self, chosen, state):
        return (chosen * self.w).sum(-1, keepdim=True) + state[..., :1]


def transition(reward: float, terminated: bool) -> TensorDict:
    """One stored step (B=1, T=1) of 2 agents with 3 actions; agent 1 cannot take action 2
    after the next observation, and the next state's first entry is 0.5."""
    def step(state0: float, mask: list) -> dict:
        return {AGENTS: TensorDict({"observation": torch.zeros(1, 1, 2, 4),
                                    "action_mask": torch.tensor(mask).view(1, 1, 2, 3)},
                                   batch_size=(1, 1, 2)),
                STATE: torch.tensor([[[state0, 0.0]]])}
    td = TensorDict(step(0.0, [True] * 6), batch_size=(1, 1))
    td["is_init"] = torch.ones(1, 1, 1, dtype=torch.bool)
    td[ACTION] = torch.tensor([[[2, 0]]])
    nxt = TensorDict(step(0.5, [True, True, True, True, True, False]), batch_size=(1, 1))
    nxt["reward"] = torch.full((1, 1, 1), reward)
    nxt["terminated"] = torch.full((1, 1, 1), terminated)
    td["next"] = nxt
    return td


@pytest.mark.parametrize(
    "double_q, terminated, expected",
    [
        # online argmax (masked): agent 0 -> 0 (9), agent 1 -> 1 (6; 7 is masked); target
        # utilities there: 1 and 0 -> Q_tot^- = 2*1 + 3*0 + 0.5 = 2.5; y = 1 + 0.9 * 2.5
        (True, False, 3.25),
        # the target's own masked argmax: 5 and 4 -> Q_tot^- = 2*5 + 3*4 + 0.5 = 22.5
        (False, False, 1 + 0.9 * 22.5),
        (True, True, 1.0),  # terminal: no bootstrap
    ],
)
def test_td_target_by_hand(double_q, terminated, expected):
    info = EnvInfo(n_agents=2, obs_dim=4, state_dim=2, n_actions=3, episode_limit=1)
    learner = QLearner(info, gamma=0.9, double_q=double_q)
    # online utilities at the stored step are 0 (so Q_tot = state[0] = 0, loss = y^2); the
    # online and the target networks disagree on the best next action of both agents
    learner.net = KnownQ(q_now=[[0.0] * 3] * 2, q_next=[[9, 0, 1], [0, 6, 7]], w=[5.0, 5.0])
    learner.target = KnownQ(q_now=[[0.0] * 3] * 2, q_next=[[1, 5, 2], [4, 0, 3]], w=[2.0, 3.0])
    loss, cache = learner.td_loss(transition(reward=1.0, terminated=terminated))
    torch.testing.assert_close(cache["q_tot"], torch.zeros(1, 1, 1))
    torch.testing.assert_close(loss.sqrt(), torch.tensor(expected))
    loss.backward()  # the target is a constant: d loss / d Q_tot = 2 (Q_tot - y) * w
    torch.testing.assert_close(learner.net.anchor.grad, torch.tensor(-2 * expected * 10.0))


def test_masked_argmax_pinned():
    """``masked_argmax`` (the one masked greedy choice, also the label look-ahead's pools):
    the best available action, ties to the first, an agent with none available picks 0."""
    torch.manual_seed(0)
    q = torch.randn(64, 3, 5)
    mask = torch.rand(64, 3, 5) > 0.5
    mask[0, 0] = False
    q[1, 0] = 2.0
    mask[1, 0] = True
    got = masked_argmax(q, mask)
    assert torch.equal(got, q.masked_fill(~mask, torch.finfo(q.dtype).min).argmax(-1))
    assert got[0, 0] == 0 and got[1, 0] == 0
    assert mask.gather(-1, got.unsqueeze(-1)).squeeze(-1)[mask.any(-1)].all()

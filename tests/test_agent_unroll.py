"""RNNAgent.unroll (hoisted input projection) against the step-by-step GRUCell loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from seqcomm.agent import RNNAgent
from seqcomm.envs.base import ACTION, OBS, STATE
from seqcomm.learner import QLearner
from seqcomm.team_q import TeamQ


def _reference_unroll(agent: RNNAgent, obs: torch.Tensor, is_init: torch.Tensor,
                      prev_action: torch.Tensor | None = None) -> torch.Tensor:
    """The definition: ``encode`` (one ``nn.GRUCell`` step) per time step from a zero state,
    the state zeroed wherever ``is_init``."""
    B, T, n = obs.shape[:3]
    h = obs.new_zeros(B, n, agent.hidden_dim)
    states = []
    for t in range(T):
        prev = prev_action[:, t] if prev_action is not None else None
        h = agent.encode(obs[:, t], h * (~is_init[:, t]).view(B, 1, 1).to(h.dtype), prev)
        states.append(h)
    return torch.stack(states, dim=1)


def _chunk(B: int, T: int, n: int, D: int, A: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, T, n, D, generator=g)
    is_init = torch.rand(B, T, generator=g) < 0.2
    is_init[0, 0] = True           # a reset at t = 0
    is_init[1] = False             # a row without any reset
    is_init[2, [0, 3, 4, T - 1]] = True  # several per row, adjacent ones and the last step
    is_init[3] = True              # one-step episodes (the matrix game)
    prev = torch.nn.functional.one_hot(torch.randint(A, (B, T, n), generator=g), A).float()
    prev = prev * (~is_init)[..., None, None]
    return obs, is_init, prev


@pytest.mark.parametrize("body", ["gru", "mlp"])
@pytest.mark.parametrize("last_action", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_unroll_matches_step_loop(last_action: bool, seed: int, body: str) -> None:
    B, T, n, D, A, H = 6, 11, 3, 5, 4, 16
    torch.manual_seed(seed)
    agent = RNNAgent(D, n, A, hidden_dim=H, last_action=last_action, body=body)
    obs, is_init, prev = _chunk(B, T, n, D, A, seed)
    prev = prev if last_action else None
    named = [(k, p) for k, p in sorted(agent.named_parameters()) if not k.startswith("head")]
    params = [p for _, p in named]
    w = torch.randn(B, T, n, H)  # a loss that weighs every state differently

    fast = agent.unroll(obs, is_init, prev)
    ref = _reference_unroll(agent, obs, is_init, prev)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    g_fast = torch.autograd.grad((fast * w).sum(), params)
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    for (name, _), a, b in zip(named, g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_unroll_state_dict_keys() -> None:
    keys = set(RNNAgent(5, 3, 4, hidden_dim=8).state_dict())
    assert {"fc.weight", "fc.bias", "rnn.weight_ih", "rnn.weight_hh", "rnn.bias_ih",
            "rnn.bias_hh", "head.weight", "head.bias"} == keys
    keys = set(RNNAgent(5, 3, 4, hidden_dim=8, body="mlp").state_dict())
    assert {"fc.weight", "fc.bias", "mlp.weight", "mlp.bias", "head.weight", "head.bias"} == keys


def test_mlp_body_has_no_memory() -> None:
    """Feed-forward agents: a step's state depends on that step's input only (the GRU's
    depends on earlier steps), whatever state ``encode`` is handed."""
    obs, is_init = torch.randn(4, 7, 3, 5), torch.zeros(4, 7, dtype=torch.bool)
    changed = obs.clone()
    changed[:, 2] += 1.0  # step 2's input only
    for body, later_moves in (("mlp", False), ("gru", True)):
        torch.manual_seed(0)
        agent = RNNAgent(5, 3, 4, hidden_dim=8, body=body)
        diff = (agent.unroll(changed, is_init) - agent.unroll(obs, is_init)).abs().amax((0, 2, 3))
        assert diff[2] > 0 and bool(diff[3:].gt(0).all()) == later_moves, (body, diff)
        assert diff[:2].eq(0).all()
        h = torch.randn(4, 3, 8)  # the state handed to one step matters to the GRU only
        moved = (agent.encode(obs[:, 0], h) - agent.encode(obs[:, 0], 0 * h)).abs().amax()
        assert bool(moved > 0) == later_moves
    with pytest.raises(ValueError, match="body='lstm'"):
        RNNAgent(5, 3, 4, body="lstm")


@pytest.mark.parametrize("body", ["gru", "mlp"])
@pytest.mark.parametrize("last_action", [False, True])
def test_recurrent_states_match_definition(last_action: bool, body: str) -> None:
    """``h_next`` taken from the unroll where the next step continues the episode equals one
    ``encode`` step from every state on its next observation (including a stored next
    observation that differs from the following step's, which must be recomputed)."""
    B, T, n, D, A, H = 6, 9, 3, 5, 4, 16
    torch.manual_seed(0)
    agent = RNNAgent(D + 2, n, A, hidden_dim=H, last_action=last_action, body=body)
    obs, is_init, _ = _chunk(B, T, n, D, A, 3)
    state = torch.randn(B, T, 2)
    next_obs, next_state = torch.randn(B, T, n, D), torch.randn(B, T, 2)
    cont = ~is_init[:, 1:]  # the next step continues the episode: same observation
    next_obs[:, :-1][cont], next_state[:, :-1][cont] = obs[:, 1:][cont], state[:, 1:][cont]
    row = cont[1].nonzero()[0].item()
    next_obs[1, row] += 1.0  # a stored next observation that is not the next step's
    action = torch.randint(A, (B, T, n))
    batch = TensorDict({"is_init": is_init.unsqueeze(-1), ACTION: action, OBS: obs,
                        STATE: state, ("next", *OBS): next_obs, ("next", STATE): next_state},
                       batch_size=[B, T])
    info = SimpleNamespace(n_actions=A)
    net = SimpleNamespace(
        agent=agent,
        inputs=lambda o, s: torch.cat([o, s.unsqueeze(-2).expand(*o.shape[:-1], 2)], -1),
        previous_actions=lambda a, i: TeamQ.previous_actions(SimpleNamespace(info=info), a, i))
    h, h_next = QLearner.recurrent_states(None, net, batch)

    prev, own = net.previous_actions(action, is_init) if last_action else (None, None)
    h_ref = _reference_unroll(agent, net.inputs(obs, state), is_init, prev)
    h_next_ref = agent.encode(net.inputs(next_obs, next_state), h_ref, own)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_next, h_next_ref, atol=1e-5, rtol=1e-5)
    w, w_next = torch.randn_like(h), torch.randn_like(h)
    params = [p for k, p in sorted(agent.named_parameters()) if not k.startswith("head")]
    grads = torch.autograd.grad((h * w).sum() + (h_next * w_next).sum(), params)
    grads_ref = torch.autograd.grad((h_ref * w).sum() + (h_next_ref * w_next).sum(), params)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("comm", ["dropout", "commnet", "gumbel"])
def test_next_state_utilities_equal_a_fresh_pass(comm: str) -> None:
    """``online_next_utilities`` reusing the chunk's pass equals a fresh pass over every next
    state: exactly the same numbers for a deterministic messenger (CommNet); for the
    refinement's dropout, the same draws as a fresh pass under the same seed, and not the
    chunk's draws; a Gumbel-sampling messenger falls back to the fresh pass."""
    from seqcomm.comm.commnet import CommNet
    from seqcomm.comm.stackelberg import SeqCommMessenger

    B, T, n, D, A, H = 6, 9, 3, 5, 4, 16
    torch.manual_seed(0)
    make = {"dropout": lambda h, k: SeqCommMessenger(h, k, ordering="fixed",
                                                     refinement_dropout=0.5),
            "commnet": lambda h, k: CommNet(h, k, ctx_dim=8),
            "gumbel": lambda h, k: SeqCommMessenger(h, k, message="discrete", ordering="fixed",
                                                    refinement_dropout=0.5)}[comm]
    info = SimpleNamespace(obs_dim=D, state_dim=2, n_agents=n, n_actions=A)
    net = TeamQ(info, make, hidden_dim=H)
    obs, is_init, _ = _chunk(B, T, n, D, A, 0)
    state = torch.randn(B, T, 2)
    next_obs = torch.cat([obs[:, 1:], torch.randn(B, 1, n, D)], 1)
    next_obs[2, 4] += 1.0  # a stored next observation that is not the next step's
    batch = TensorDict({"is_init": is_init.unsqueeze(-1), ACTION: torch.randint(A, (B, T, n)),
                        OBS: obs, STATE: state, ("next", *OBS): next_obs,
                        ("next", STATE): torch.cat([state[:, 1:], state[:, -1:]], 1)},
                       batch_size=[B, T])
    h, h_next = QLearner.recurrent_states(None, net, batch)
    q, aux = net.utilities(h)
    with torch.no_grad():
        torch.manual_seed(1)
        fresh = net.utilities(h_next)[0]
        torch.manual_seed(1)
        reused = QLearner.online_next_utilities(SimpleNamespace(net=net), h, h_next, q, aux)
    torch.testing.assert_close(reused, fresh, atol=1e-5, rtol=1e-5)
    cont = torch.cat([~is_init[:, 1:], is_init.new_zeros(B, 1)], 1)
    cont[2, 4] = False
    shared = (reused[:, :-1][cont[:, :-1]] - q[:, 1:][cont[:, :-1]].detach()).abs().amax()
    assert (shared == 0) == (comm == "commnet"), shared  # a sampling messenger's draws differ

"""SeqComm-DFL's sampled counterfactuals (``counterfactual_senders`` /
``counterfactual_receivers``): all rows reproduce the default losses, and a subset's losses
average to the all-senders (all-receivers) ones."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from tensordict import TensorDict

from seqcomm.comm.stackelberg import SeqCommMessenger
from seqcomm.dfl.critic import TeamCritic
from seqcomm.envs.base import ACTION, MASK, STATE, EnvInfo
from seqcomm.seqcomm_dfl import SeqCommDFL

N, A, S = 4, 3, 5
INFO = EnvInfo(n_agents=N, obs_dim=4, state_dim=S, n_actions=A, episode_limit=5)
KEYS = ("va", "inf", "gp")


def setup(**kw) -> tuple[SeqCommDFL, TensorDict, dict]:
    """A 4-agent learner, a batch ``[B=6, T=2]`` and a hand-made ``td_loss`` cache."""
    torch.manual_seed(0)
    comm = functools.partial(SeqCommMessenger, ordering="prosocial")
    model = SeqCommDFL(INFO, comm=comm, world_model_gradient="none", hidden_dim=8,
                       critic=functools.partial(TeamCritic, hidden_dim=16), influence_tau=0.1,
                       **kw)
    model.critic.eval()  # no running-statistics update between the calls compared
    with torch.no_grad():  # messages that move decisions: gains far from zero
        for p in [*model.net.comm.parameters(), *model.net.agent.head.parameters()]:
            p.mul_(4.0)
    B, T = 6, 2
    mask = torch.rand(B, T, N, A) > 0.3
    mask[..., 0] = True
    batch = TensorDict({STATE: torch.randn(B, T, S), MASK: mask,
                        ACTION: torch.randint(0, A, (B, T, N))}, batch_size=[B, T])
    h = torch.randn(B, T, N, 8)
    q, aux = model.net.utilities(h)
    chosen = q.gather(-1, batch[ACTION].unsqueeze(-1)).squeeze(-1)
    cache = {"h": h, "q": q, "aux": aux, "q_tot": model.net.mix(chosen, batch[STATE]),
             "target": torch.randn(B, T, 1)}
    return model, batch, cache


def losses(model: SeqCommDFL, batch: TensorDict, cache: dict, rows=None) -> torch.Tensor:
    """``[va, inf, gp]`` with ``counterfactual_rows`` fixed to ``rows`` (None: the model's)."""
    if rows is not None:
        model.counterfactual_rows = lambda: rows
    try:
        out = model.message_losses(batch, dict(cache))
    finally:
        model.__dict__.pop("counterfactual_rows", None)
    return torch.stack([out[k].detach() for k in KEYS])


def subsets(k: int) -> list[torch.Tensor]:
    return [torch.tensor(c) for c in itertools.combinations(range(N), k)]


def test_all_rows_reproduce_the_default_losses():
    model, batch, cache = setup()
    full = losses(model, batch, cache)
    assert torch.equal(losses(model, batch, cache, (torch.arange(N), None)), full)
    assert torch.equal(losses(model, batch, cache, (torch.arange(N), torch.arange(N))), full)
    # k = n (or more) draws nothing: the default path
    model, batch, cache = setup(counterfactual_senders=N, counterfactual_receivers=N + 1)
    assert model.counterfactual_rows() == (None, None)
    assert torch.equal(losses(model, batch, cache), full)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sender_subsets_average_to_the_all_senders_losses(k):
    """Over every k-subset (each equally likely), L_VA and L_inf average exactly to the
    all-senders values; the GP regression's normaliser comes from the subset, so it is
    close but not exact."""
    model, batch, cache = setup()
    full = losses(model, batch, cache)
    mean = torch.stack([losses(model, batch, cache, (s, None)) for s in subsets(k)]).mean(0)
    torch.testing.assert_close(mean[:2], full[:2], rtol=1e-5, atol=1e-7)
    assert abs(float(mean[2] - full[2])) < 0.2 * abs(float(full[2]))


@pytest.mark.parametrize("k, r", [(2, 2), (4, 1), (3, 3)])
def test_receiver_subsets_average_to_the_all_pairs_value_aware_loss(k, r):
    """Senders and receivers drawn independently: L_VA over every (sender, receiver)
    subset pair averages to the all-pairs value (raw values: ``va_normalize`` estimates the
    spread from the sampled receivers)."""
    model, batch, cache = setup(va_normalize=False)
    full = losses(model, batch, cache)
    senders = subsets(k) if k < N else [torch.arange(N)]
    mean = torch.stack([losses(model, batch, cache, (s, rv))
                        for s in senders for rv in subsets(r)]).mean(0)
    torch.testing.assert_close(mean[0], full[0], rtol=1e-5, atol=1e-7)


def test_sampled_losses_match_in_expectation():
    """Through the sampler itself: the mean over many updates' draws is within a few
    standard errors of the all-senders (all-pairs) losses."""
    model, batch, cache = setup(va_normalize=False, counterfactual_senders=2,
                                counterfactual_receivers=2)
    full = losses(model, batch, cache, (None, None))
    torch.manual_seed(1)
    draws = torch.stack([losses(model, batch, cache) for _ in range(400)])
    err = draws[:, :2].std(0) / 400**0.5
    assert ((draws[:, :2].mean(0) - full[:2]).abs() <= 4 * err + 1e-7).all(), (
        draws[:, :2].mean(0), full[:2], err)


def test_switch_values_for_some_agents_are_the_rows_of_all():
    torch.manual_seed(0)
    critic = TeamCritic(S, N, A, 16)
    state, action = torch.randn(7, S), torch.randint(0, A, (7, N))
    agents = torch.tensor([1, 3])
    torch.testing.assert_close(critic.switch_values(state, action, agents),
                               critic.switch_values(state, action)[:, agents])
    with_graph = critic.switch_values(state, action)
    with torch.no_grad():  # ReLUs in place without a graph: the same values
        assert torch.equal(critic.switch_values(state, action), with_graph.detach())


def test_negative_subset_sizes_are_rejected():
    with pytest.raises(ValueError, match="counterfactual_senders"):
        setup(counterfactual_senders=-1)

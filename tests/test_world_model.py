"""Communication-augmented world model (docs/method.md §3.1)."""

from __future__ import annotations

import pytest
import torch

from seqcomm.dfl.world_model import WorldModel, WorldModelPrediction

S, N, D, A, M = 5, 3, 4, 6, 2


def batch(shape=(7,), msg_dim=M, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        state=torch.randn(*shape, S, generator=gen),
        obs=torch.randn(*shape, N, D, generator=gen),
        action=torch.randint(A, (*shape, N), generator=gen),
        messages=torch.randn(*shape, N, msg_dim, generator=gen),
    )


@pytest.mark.parametrize("pooling", ["mean", "concat"])
@pytest.mark.parametrize("shape", [(7,), (2, 3)])
def test_output_shapes(pooling, shape):
    wm = WorldModel(S, D, N, A, msg_dim=M, hidden_dim=16, pooling=pooling)
    pred = wm(**batch(shape))
    assert isinstance(pred, WorldModelPrediction)
    assert pred.next_state.shape == (*shape, S)
    assert pred.next_obs.shape == (*shape, N, D)
    assert pred.reward.shape == (*shape, 1)
    assert pred.terminated_logit.shape == (*shape, 1)


def test_predictions_are_residual():
    wm = WorldModel(S, D, N, A, msg_dim=M, hidden_dim=16)
    for head in (wm.state_head, wm.obs_head[-1]):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    x = batch()
    pred = wm(**x)
    assert torch.equal(pred.next_state, x["state"])
    assert torch.equal(pred.next_obs, x["obs"])


def test_no_messages():
    wm = WorldModel(S, D, N, A, msg_dim=0, hidden_dim=16)
    x = batch(msg_dim=0)
    with_empty = wm(**x)
    x["messages"] = None
    without = wm(**x)
    assert torch.equal(with_empty.next_state, without.next_state)
    assert without.next_obs.shape == (7, N, D)


def test_messages_and_actions_influence_predictions():
    wm = WorldModel(S, D, N, A, msg_dim=M, hidden_dim=16)
    x = batch()
    msgs = x["messages"].requires_grad_()
    pred = wm(**x)
    out = pred.next_state.sum() + pred.next_obs.sum() + pred.reward.sum()
    (g,) = torch.autograd.grad(out, msgs)
    assert (g.abs().sum((0, -1)) > 0).all()  # every agent's message matters
    other = dict(x, action=(x["action"] + 1) % A)
    assert not torch.allclose(wm(**other).reward, pred.reward)


def test_agents_are_told_apart():
    """Swapping two agents' inputs changes the prediction: the agent id is embedded."""
    wm = WorldModel(S, D, N, A, msg_dim=M, hidden_dim=16)
    x = batch()
    swapped = {k: v[:, [1, 0, 2]] if k != "state" else v for k, v in x.items()}
    assert not torch.allclose(wm(**x).reward, wm(**swapped).reward)


def test_prediction_loss_decreases_under_adam():
    torch.manual_seed(0)
    wm = WorldModel(S, D, N, A, msg_dim=M, hidden_dim=32)
    x = batch(shape=(32,))
    gen = torch.Generator().manual_seed(1)
    targets = dict(
        next_state=torch.randn(32, S, generator=gen),
        next_obs=torch.randn(32, N, D, generator=gen),
        reward=torch.randn(32, 1, generator=gen),
        terminated=torch.rand(32, 1, generator=gen) < 0.3,
    )
    opt = torch.optim.Adam(wm.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = wm.prediction_loss(wm(**x), **targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_prediction_loss_mask_ignores_padded_steps():
    wm = WorldModel(S, D, N, A, msg_dim=M, hidden_dim=16)
    x = batch()
    pred = wm(**x)
    targets = dict(next_state=x["state"], next_obs=x["obs"], reward=torch.zeros(7, 1),
                   terminated=torch.zeros(7, 1, dtype=torch.bool))
    mask = torch.arange(7) < 4
    garbage = dict(targets, reward=torch.where(mask[:, None], 0.0, 1e6))
    masked = wm.prediction_loss(pred, **garbage, mask=mask)
    first = wm.prediction_loss(WorldModelPrediction(*(t[:4] for t in pred)),
                               **{k: v[:4] for k, v in targets.items()})
    assert torch.allclose(masked, first)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="pooling"):
        WorldModel(S, D, N, A, pooling="max")
    with pytest.raises(ValueError, match="msg_dim"):
        WorldModel(S, D, N, A, msg_dim=-1)
    wm = WorldModel(S, D, N, A, msg_dim=M, hidden_dim=8)
    x = batch()
    with pytest.raises(ValueError, match="messages"):
        wm(**dict(x, messages=None))
    with pytest.raises(ValueError, match="obs"):
        wm(**dict(x, obs=x["obs"][..., :2]))

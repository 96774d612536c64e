"""The receivers' state loss (``model.lambda_state``; docs/method.md §2.4)."""

import torch

from seqcomm.comm.stackelberg import SeqCommMessenger
from seqcomm.dfl.receiver_state import ReceiverStateHead


def test_gradient_reaches_the_context_only():
    head = ReceiverStateHead(hidden_dim=4, ctx_dim=3, state_dim=5)
    h = torch.randn(8, 2, 4, requires_grad=True)
    ctx = torch.randn(8, 2, 3, requires_grad=True)
    head.loss(h, ctx, torch.randn(8, 5)).backward()
    assert h.grad is None  # the receiver's own state is read, not trained
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_loss_is_scale_free_and_skips_constant_columns():
    head = ReceiverStateHead(hidden_dim=4, ctx_dim=3, state_dim=3)
    h, ctx = torch.randn(64, 2, 4), torch.randn(64, 2, 3)
    state = torch.randn(64, 3)
    state[:, 2] = 7.0  # constant: nothing to learn
    scaled = state * torch.tensor([1000.0, 0.001, 1.0])
    assert torch.allclose(head.loss(h, ctx, state), head.loss(h, ctx, scaled), rtol=1e-4)
    assert torch.isfinite(head.loss(h, ctx, state))


def test_messages_learn_what_each_receiver_lacks():
    """Three agents each see one private coin; the state is all three coins. Trained by the
    state loss alone, the messenger carries the coins a receiver cannot see: the decoded state
    explains far more with the messages delivered than with every message masked."""
    torch.manual_seed(0)
    n, hidden = 3, 8
    messenger = SeqCommMessenger(hidden_dim=hidden, n_agents=n, msg_dim=4, ordering="fixed")
    head = ReceiverStateHead(hidden, messenger.ctx_dim, state_dim=n)
    embed = torch.randn(n, 2, hidden)  # agent i's state shows its own coin only
    params = list(messenger.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)

    def batch(size=256):
        coins = torch.randint(0, 2, (size, n))
        h = embed[torch.arange(n), coins]  # [size, n, hidden]
        return h, coins.float()

    for _ in range(400):
        h, state = batch()
        loss = head.loss(h, messenger(h)[0], state)
        opt.zero_grad()
        loss.backward()
        opt.step()
    h, state = batch(1024)
    with torch.no_grad():
        delivered = head.loss(h, messenger(h)[0], state)
        masked = head.loss(h, messenger(h, torch.zeros(n))[0], state)
    # masked, a receiver knows one coin of three: 2/3 of the variance stays unexplained
    assert masked > 0.5
    assert delivered < 0.1

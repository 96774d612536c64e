"""CommNet, TarMAC and RGMComm baselines (docs/method.md §5); RGMComm's clustering and
learner: tests/test_rgmcomm.py."""


import pytest
import torch

from seqcomm.comm import CommNet, MessageOutput, NoComm, RGMComm, TarMAC
from seqcomm.comm.launching import LaunchingMessenger

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


@pytest.mark.parametrize("cls", [CommNet, TarMAC, "slots"])  # RGMComm: test_rgmcomm.py
def test_deliver_mask_removes_a_sender_exactly(cls):
    torch.manual_seed(0)
    comm = CommNet(H, N, sender_slots=True) if cls == "slots" else cls(H, N)
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


def test_commnet_mean_is_anonymous_and_sender_slots_keep_who_said_what():
    """Swapping two senders' states leaves CommNet's mean unchanged for the third agent; with
    ``sender_slots`` the context changes, and it is the others' states side by side."""
    torch.manual_seed(0)
    h = torch.randn(6, N, H)
    swapped = h[:, [0, 2, 1]]
    plain, slots = CommNet(H, N, ctx_dim=4), CommNet(H, N, ctx_dim=4, sender_slots=True)
    assert torch.allclose(plain(h)[0][:, 0], plain(swapped)[0][:, 0], atol=1e-6)
    assert not torch.allclose(slots(h)[0][:, 0], slots(swapped)[0][:, 0], atol=1e-3)
    w = slots.comm.weight.T.reshape(H, N, 4)  # input column (d, i): feature d of sender i
    expect = (h[:, 1] @ w[:, 1] + h[:, 2] @ w[:, 2]) / 2
    assert torch.allclose(slots(h)[0][:, 0], expect, atol=1e-5)


def test_tarmac_attention_weights_over_others():
    comm = TarMAC(H, 2, key_dim=4, value_dim=3)
    h = torch.randn(5, 2, H)
    ctx, aux = comm(h)
    # with two agents each receiver attends only to the other: weight 1 on its value
    assert torch.allclose(ctx, aux.messages.flip(-2), atol=1e-6)
    assert comm.bits_per_step() == 32 * 7


@pytest.mark.parametrize("cls, produced", [
    (NoComm, set()), (CommNet, {"messages"}), (TarMAC, {"messages", "signatures"}),
    (RGMComm, {"labels", "label_probs"}), (LaunchingMessenger, {"order"}),
])
def test_message_output_sets_only_what_the_messenger_produces(cls, produced):
    comm = cls(H, N, ctx_dim=5) if cls is CommNet else cls(H, N)  # CommNet sends h
    kwargs = {"order": torch.tensor([2, 0, 1])} if cls is LaunchingMessenger else {}
    _, out = comm(torch.randn(4, N, H), **kwargs)
    assert isinstance(out, MessageOutput)
    assert {k for k, v in out._asdict().items() if v is not None} == produced
    assert out.messages is None or out.messages.shape[-1] == comm.message_dim
    assert comm.discrete == (cls is RGMComm)
    assert not comm.scores_labels and not comm.zero_when_silent
    with pytest.raises(NotImplementedError):
        comm.label_contexts()

"""The full-information team critic that scores receivers' decisions (docs/method.md §2.4).

``Q_c(s, a)`` sees the global state and the joint action and is regressed on the same TD
targets as ``Q_tot``. Unlike a receiver's own utility, it cannot be raised by a message, so
the value-aware loss evaluated with it rewards messages that change decisions for the better.

The critic regresses on targets standardised by running statistics: on hospital the values
(about -100 to -180) dwarf the effect of one treatment (a few points), and a critic fitted on
raw targets ranked "treat this bed" against "idle" no better than chance (0.59 on ambiguous
beds; 0.93 with standardised targets, docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seqcomm.distributed import average_across_ranks


class TeamCritic(nn.Module):
    """``Q_c(s, a_1..a_n)``, with a batched "agent j switches to action a" evaluation.

    Args:
        state_dim: size of the global state.
        n_agents: number of agents.
        n_actions: number of actions per agent.
        hidden_dim: width of the MLP.
        normalize: regress on targets standardised by running statistics (``loss``); the
            outputs are mapped back to the targets' units.
        norm_rate: update rate of the running mean and standard deviation (after the first
            ``1 / norm_rate`` batches, which are averaged with equal weights).
    """

    enumerates_joint_actions = True  # best_joint_score scores all A^n joint actions

    def __init__(self, state_dim: int, n_agents: int, n_actions: int, hidden_dim: int = 128,
                 normalize: bool = True, norm_rate: float = 0.01):
        super().__init__()
        self.n_agents, self.n_actions = n_agents, n_actions
        self.normalize, self.norm_rate = normalize, norm_rate
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.net = self.body(state_dim, hidden_dim)

    def body(self, state_dim: int, hidden_dim: int) -> nn.Module:
        """The network: an MLP on the state and the flattened one-hot joint action."""
        return nn.Sequential(
            nn.Linear(state_dim + self.n_agents * self.n_actions, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

    def score(self, state: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        """The critic's output in standardised units, ``[*B, 1]``."""
        return self.net(torch.cat([state, joint.flatten(-2)], dim=-1))

    def forward(self, state: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        """``state [*B, S]``, one-hot ``joint [*B, n, A]`` -> ``[*B, 1]``."""
        return self.unscale(self.score(state, joint))

    def unscale(self, out: torch.Tensor) -> torch.Tensor:
        return self.target_mean + self.target_std * out

    def loss(self, state: torch.Tensor, joint: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Squared error against ``target [*B, 1]``, in standardised units when ``normalize``
        (the running statistics move towards the batch's in training mode)."""
        target = target.detach()
        if self.normalize and self.training:
            with torch.no_grad():  # a running average first, an exponential one later
                self.count += 1
                rate = max(1.0 / float(self.count), self.norm_rate)
                # one set of statistics for all DDP ranks (each sees its own batch)
                mean, std = average_across_ranks(
                    torch.stack([target.mean(), target.std().clamp_min(1e-2)]))
                self.target_mean.lerp_(mean, rate)
                self.target_std.lerp_(std, rate)
        pred = self.score(state, joint)
        return (pred - (target - self.target_mean) / self.target_std).pow(2).mean()

    def first_layer_split(self) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
        """The first layer, its state columns ``[H, S]`` and its one-hot action columns as
        ``[n, A, H]`` (column of agent j's action a): the layer is linear in the actions."""
        first, n, A = self.net[0], self.n_agents, self.n_actions
        return first, first.weight[:, : -n * A], first.weight[:, -n * A :].T.reshape(n, A, -1)

    def best_joint_score(self, state: torch.Tensor, mask: torch.Tensor,
                         max_elements: int = 2**18) -> torch.Tensor:
        """``max_a score(state, a)`` over the joint actions available under ``mask [*B, n, A]``,
        ``[*B, 1]`` in standardised units; every one of the ``A^n`` joint actions is scored,
        through the first layer's additive split as in ``switch_values`` (blocks of samples
        bound the ``[block, A^n, hidden]`` activations by ``max_elements``). Subclasses whose
        maximum needs no enumeration set ``enumerates_joint_actions = False``."""
        n, A = self.n_agents, self.n_actions
        first, w_state, w_act = self.first_layer_split()
        joints = torch.cartesian_prod(*[torch.arange(A, device=state.device)] * n).view(-1, n)
        cols = w_act[torch.arange(n, device=state.device), joints]
        joint_z = cols.sum(-2)  # [J, H]: each joint action's share of the first layer
        flat_s, flat_m = state.reshape(-1, state.shape[-1]), mask.reshape(-1, n, A).bool()
        avail = flat_m[:, torch.arange(n, device=state.device), joints].all(-1)  # [N, J]
        block = max(1, max_elements // (joints.shape[0] * joint_z.shape[-1]))
        best = torch.cat([
            self.rest((flat_s[s : s + block] @ w_state.T + first.bias).unsqueeze(-2) + joint_z)
            .squeeze(-1).masked_fill(~avail[s : s + block], float("-inf")).amax(-1)
            for s in range(0, flat_s.shape[0], block)])
        return best.view(*state.shape[:-1], 1)

    def rest(self, z: torch.Tensor) -> torch.Tensor:
        """The layers after the first on its pre-activation ``z``; without a graph the ReLUs
        run in place (the same values, two fewer copies of ``z``)."""
        if torch.is_grad_enabled():
            return self.net[1:](z)
        return self.net[4](self.net[2](z.relu_()).relu_())

    def switch_values(self, state: torch.Tensor, action: torch.Tensor,
                      agents: torch.Tensor | None = None) -> torch.Tensor:
        """``[*B, n, A]``: the critic's value when agent j plays a and the others keep
        ``action [*B, n]``; one batched pass over all (j, a). ``agents`` (indices) restricts
        j to those: ``[*B, len(agents), A]``.

        The first layer is linear in the one-hot actions, so its pre-activation for every
        switch is the taken joint's plus one column difference: ``O(n A hidden)`` memory per
        sample instead of materialising ``n A`` joint one-hots of size ``n A`` each.
        """
        n = self.n_agents
        first, w_state, w_act = self.first_layer_split()
        taken = w_act[torch.arange(n, device=action.device), action]  # [*B, n, H]
        z = state @ w_state.T + first.bias + taken.sum(-2)  # [*B, H]: the taken joint
        if agents is not None:
            taken, w_act = taken[..., agents, :], w_act[agents]
        z = z[..., None, None, :] - taken.unsqueeze(-2) + w_act  # [*B, n, A, H]
        return self.unscale(self.rest(z).squeeze(-1))


#: A team critic configured by class_path; the learner supplies (state_dim, n_agents, n_actions).
CriticFactory = Callable[[int, int, int], TeamCritic]

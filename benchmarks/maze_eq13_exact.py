"""Does RGMComm's Eq. 13 prefer the maze's reachability bit? Exact values, no learning.

Computes by backward induction over the maze's own step function (``Maze._step``) the
action values of the first step under three continuations: ``optimal`` (the ideal policy
with full observability, the paper's ``Q*``), ``no_comm`` (both always walk to the low
landmark, the best policy without messages, where a team that learned without informative
labels settles) and ``full_info`` (the scripted full-information policy). From each, the
Eq. 5 vectors of sender 0's start cells over every (receiver start cell, receiver action,
sender action), weighted by the uniform start distribution, activated as the learner does;
then Eq. 13 of the reachability bit against every labelling of the start cells (exhaustive
up to 2^16 labellings, else Hartigan's search from many random starts).

With ``--runs``, the same for finished RGMComm maze runs with the values of each run's own
critic at the first step in place of the exact ones (and how far they are from ``Q*``): is
the bit Eq. 13's minimum on first-step observations with the values the run clustered?

    python benchmarks/maze_eq13_exact.py --sizes 4:3 5:4
    python benchmarks/maze_eq13_exact.py --runs runs/maze/rgmcomm_s0/version_0 ...
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from torch.nn import functional as F

from seqcomm.comm.rgmcomm import activate_q, clustering_loss, refine_labelling
from seqcomm.envs.base import ACTION, MASK, OBS
from seqcomm.envs.maze import Maze


def first_step_values(size: int, steps: int, continuation: str,
                      gamma: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q[c1, c2, a1, a2]`` at ``t = 0`` over all cell pairs (``-inf`` where a move leaves
    the grid), and the availability mask ``[c1, c2, a1, a2]``."""
    C, A = size * size, 5
    env = Maze(num_envs=C * C, size=size, steps=steps)
    cells = torch.cartesian_prod(torch.arange(C), torch.arange(C))  # [C^2, 2]
    pos = torch.stack([cells // size, cells % size], -1)
    joints = torch.cartesian_prod(torch.arange(A), torch.arange(A))  # [A^2, 2]
    value_next = torch.zeros(C * C)  # V_{t+1}(c1, c2) of the continuation
    for t in reversed(range(steps)):
        env.pos, env.t = pos.clone(), torch.full((C * C,), t)
        td = env._observe()
        mask = td[MASK]  # [C^2, 2, A]
        q = torch.empty(C * C, A * A)
        for k, joint in enumerate(joints):  # a loop over 25 joint actions, offline
            env.pos, env.t = pos.clone(), torch.full((C * C,), t)
            out = env._step(td.update({ACTION: joint.expand(C * C, 2)}))
            nxt = env._flat(env.pos)
            cont = value_next[nxt[:, 0] * C + nxt[:, 1]]
            q[:, k] = out["reward"][:, 0] + gamma * (~out["done"][:, 0]) * cont
        avail = (mask[:, 0, joints[:, 0]] & mask[:, 1, joints[:, 1]])  # [C^2, A^2]
        q = q.masked_fill(~avail, float("-inf"))
        if continuation == "optimal":
            value_next = q.amax(-1)
        else:
            env.pos, env.t = pos.clone(), torch.full((C * C,), t)
            policy = getattr(env, f"{continuation}_policy")(env._observe())  # [C^2, 2]
            value_next = q.gather(-1, (policy[:, 0] * A + policy[:, 1]).unsqueeze(-1))[:, 0]
    return q.view(C, C, A, A), avail.view(C, C, A, A)


def eq5_first_step(q: torch.Tensor, avail: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Activated Eq. 5 vectors of sender 0's start cells ``[K, K * A * A]``: every receiver
    start cell and action, every sender action, weight ``1 / K`` (independent uniform starts)."""
    qs, ok = q[starts][:, starts], avail[starts][:, starts]  # [K(sender), K, A_s, A_r]
    values = (qs / len(starts)).masked_fill(~ok, 0.0).permute(0, 1, 3, 2).flatten(1)
    return activate_q(values, ok.permute(0, 1, 3, 2).flatten(1))


def best_labelling(x: torch.Tensor, restarts: int = 256, exhaustive_up_to: int = 16):
    """The lowest Eq. 13 loss over 2-label labellings of the rows of ``x`` and whether the
    search was exhaustive (then also the losses of all labellings)."""
    K = x.shape[0]
    if K <= exhaustive_up_to:
        labels = torch.tensor(list(itertools.product([0, 1], repeat=K)))
        losses = torch.vmap(lambda p: clustering_loss(p, x))(F.one_hot(labels, 2).float())
        return labels[losses.argmin()], losses.min(), losses
    torch.manual_seed(0)
    starts = torch.randint(0, 2, (restarts, K))
    groups = torch.arange(K).expand(restarts, K)
    found = refine_labelling(starts, x.expand(restarts, *x.shape), groups, 2, max_moves=4 * K)
    losses = torch.vmap(lambda p: clustering_loss(p, x))(F.one_hot(found, 2).float())
    return found[losses.argmin()], losses.min(), None


def critic_first_step_values(critic, size: int, steps: int) -> torch.Tensor:
    """A run's critic ``Q_c(o, a)`` at ``t = 0`` over all cell pairs and joint actions,
    ``[c1, c2, a1, a2]`` (``first_step_values``' layout)."""
    C, A = size * size, 5
    env = Maze(num_envs=C * C, size=size, steps=steps)
    env.reset()
    cells = torch.cartesian_prod(torch.arange(C), torch.arange(C))
    env.pos, env.t = torch.stack([cells // size, cells % size], -1), torch.zeros(C * C).long()
    state = env._observe()[OBS].flatten(-2)  # [C^2, 2 D]
    joints = F.one_hot(torch.cartesian_prod(torch.arange(A), torch.arange(A)), A).float()
    with torch.no_grad():
        q = critic(state.unsqueeze(1).expand(-1, A * A, -1), joints.expand(C * C, -1, -1, -1))
    return q.view(C, C, A, A)


def bit_row(x: torch.Tensor, bit: torch.Tensor) -> str:
    """The table's last four cells for vectors ``x``: the bit's loss, the lowest loss, the
    bit's rank and the best labelling's agreement with the bit."""
    best, low, losses = best_labelling(x)
    loss = clustering_loss(F.one_hot(bit, 2).float(), x)
    rank = "search" if losses is None else f"{int((losses < loss - 1e-6).sum())} of {len(losses)}"
    agree = (best == bit).float().mean().item()
    return f"{loss:.4f} | {low:.4f} | {rank} | {max(agree, 1 - agree):.2f}"


def runs_table(runs: list[Path], size: int = 4, steps: int = 3) -> None:
    """``--runs``: Eq. 13 on each run's critic's first-step vectors (sender 0)."""
    from hospital_decisions import load_run  # loads Lightning: only for --runs

    starts = Maze(size=size, steps=steps).start_cells
    bit = (starts // size + starts % size <= steps).long()
    exact, avail = first_step_values(size, steps, "optimal")
    ok = avail[starts][:, starts]
    print("| run | RMSE to `Q*` (`Q*` sd) | correlation | bit's Eq. 13 loss | lowest loss | "
          "bit's rank | best labelling = bit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs:
        model, _ = load_run(run)
        q = critic_first_step_values(model.critic, size, steps)
        got, want = q[starts][:, starts][ok], exact[starts][:, starts][ok]
        rmse, corr = (got - want).pow(2).mean().sqrt(), torch.corrcoef(torch.stack([got, want]))
        print(f"| {run} | {rmse:.3f} ({want.std():.3f}) | {corr[0, 1]:.3f} | "
              f"{bit_row(eq5_first_step(q, avail, starts), bit)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["4:3", "5:4"],
                        help="size:steps of each maze")
    parser.add_argument("--runs", nargs="+", type=Path,
                        help="finished RGMComm maze runs (4x4, 3 steps) to score instead")
    args = parser.parse_args()
    if args.runs:
        return runs_table(args.runs)
    print("| maze | values of | bit's Eq. 13 loss | lowest loss | bit's rank | best "
          "labelling = bit |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for spec in args.sizes:
        size, steps = (int(v) for v in spec.split(":"))
        probe = Maze(size=size, steps=steps)
        starts = probe.start_cells
        rows, cols = starts // size, starts % size
        bit = (rows + cols <= steps).long()  # sender can reach the high landmark (0, 0)
        for continuation in ("optimal", "full_info", "no_comm"):
            x = eq5_first_step(*first_step_values(size, steps, continuation), starts)
            print(f"| {size}x{size}, {steps} steps | {continuation} | {bit_row(x, bit)} |")


if __name__ == "__main__":
    main()

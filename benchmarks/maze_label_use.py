"""Does a trained RGMComm maze run's receiver act on the labels it hears?

Loads a finished run (``config.yaml``, ``checkpoints/last.ckpt``) and plays its greedy policy
from every pair of start cells once (the maze's dynamics, ``seqcomm.envs.maze.Maze``), with
the labels as sent and with every label heard replaced (at the utility head, or in the
recurrent input for ``into: input`` runs): all 0, all 1, and the reachability bit (can the
sender reach the high landmark in the moves left; the information the task needs, in the
label value the sender uses for it). Also prints how often each sender's first label equals
that bit (up to renaming) and, for ``into: input`` runs (labels of observations), how often
its labels equal the bit at each step over the run's replay. A receiver that acts on its
messages changes return when the labels are replaced. Last, on three replay samples of the
run's own buffer drawn as its clustering draws them, each sender's clustering loss (the run's
``objective``, Eq. 13 or the return gap, on the Eq. 5 vectors of the run's final critic) of
its labels and of the reachability bit: does the clustering objective prefer the bit?

    python benchmarks/maze_label_use.py runs/ladder_maze/rgmcomm_s0/version_0
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from hospital_decisions import load_run, run_directory, ward
from tensordict import TensorDict
from torch.nn import functional as F

from seqcomm.comm.q_vectors import group_representatives, local_group_ids
from seqcomm.envs.base import ACTION, MASK, OBS, STATE
from seqcomm.envs.maze import Maze
from seqcomm.team_q import masked_argmax

MODES = ("as sent", "all 0", "all 1", "reachability")


def reachable(env: Maze) -> torch.Tensor:
    """``[E, 2]``: each agent can still reach the high landmark."""
    left = (env.steps - env.t)[:, None]
    return (env.pos - env.high_cell).abs().sum(-1) <= left


@torch.no_grad()
def play(model, env: Maze, starts: torch.Tensor, mode: str) -> tuple[float, list[float]]:
    """Mean return over the start pairs ``starts [E, 2, 2]`` and the first-step agreement of
    each sender's label with the reachability bit."""
    net, comm = model.net, model.net.comm
    env.reset()
    env.pos, env.t = starts.clone(), torch.zeros_like(env.t)
    td = env._observe()
    h = torch.zeros(env.num_envs, 2, net.agent.hidden_dim)
    done = torch.zeros(env.num_envs, dtype=torch.bool)
    total, agree = torch.zeros(env.num_envs), None
    into_input = comm.into == "input"  # labels of o_i, heard in the recurrent input
    for _ in range(env.steps):
        if into_input:
            labels = comm.label_logits(td[OBS]).argmax(-1)  # [E, 2]
        else:
            h = net.agent.encode(net.inputs(td[OBS], td[STATE]), h)
            labels = comm.label_logits(h).argmax(-1)
        bit = reachable(env).long()
        if agree is None:
            same = (labels == bit).float().mean(0)
            agree = torch.maximum(same, 1 - same).tolist()
        if mode == "all 0":
            labels = torch.zeros_like(labels)
        elif mode == "all 1":
            labels = torch.ones_like(labels)
        elif mode == "reachability":  # each sender's label for "reachable" = its majority one
            value = torch.stack([labels[:, i][bit[:, i] == 1].float().mean().round()
                                 for i in range(2)]).nan_to_num(1.0).long()
            labels = torch.where(bit == 1, value, 1 - value)
        onehot = torch.nn.functional.one_hot(labels, comm.n_labels).to(h.dtype)
        ctx = torch.einsum("eim,imd->eid", onehot, comm.embedding).flip(1)  # 2 agents
        if into_input:
            own = net.inputs(td[OBS], td[STATE])[..., : -comm.input_dim]
            h = net.agent.encode(torch.cat([own, ctx], -1), h)
            ctx = ctx[..., :0]
        action = masked_argmax(net.agent.q(h, ctx), td[MASK])
        out = env._step(TensorDict({ACTION: action}, batch_size=[env.num_envs]))
        total += torch.where(done, 0.0, out["reward"].squeeze(-1))
        done |= out["done"].squeeze(-1)
        td = out
    return total.mean().item(), agree


def observed_reachability(obs: torch.Tensor, size: int, steps: int) -> torch.Tensor:
    """Reachability bits ``[*B]`` from maze observations (own cell one-hot, then the step
    one-hot if observed; without it, ``observe_step=False``, the bit of the first step)."""
    cell = obs[..., : size * size].argmax(-1)
    t = obs[..., size * size :].argmax(-1) if obs.shape[-1] > size * size else 0
    return (cell // size + cell % size <= steps - t).long()


@torch.no_grad()
def objective_labels_vs_bit(model, data, size: int, steps: int, samples: int = 3) -> torch.Tensor:
    """``[2 (labels, bit), n]``: mean over ``samples`` replay samples of each sender's
    clustering loss (the run's ``objective``, ``RGMCommLearner.objective_of``) of its hard
    labels and of the reachability bit, on the clustering's own inputs."""
    torch.manual_seed(0)
    comm = model.net.comm
    losses = []
    for _ in range(samples):
        sample = model.cluster_sample(data.buffer)
        objective, inputs = model.objective_of(sample, *model.cluster_vectors(sample))
        reps = group_representatives(local_group_ids(sample["sender"].transpose(0, 1)))
        bit = observed_reachability(sample[OBS], size, steps)  # [N, n]
        for labels in (comm.label_logits(inputs).argmax(-1).T, bit.T.gather(1, reps)):
            losses.append(objective.loss(F.one_hot(labels, comm.n_labels).to(inputs.dtype)))
    return torch.stack(losses).view(samples, 2, -1).mean(0)


@torch.no_grad()
def replay_agreement(model, data, size: int, steps: int) -> torch.Tensor:
    """``[n, steps]``: per sender and step, the share of the replay's observations whose
    label equals the reachability bit, up to renaming (``into: input`` runs)."""
    buffer = data.buffer
    obs = buffer[: len(buffer)][OBS]
    obs = obs.reshape(-1, *obs.shape[-2:])
    obs = obs[obs.abs().sum((-1, -2)) > 0]  # padding rows are all zero
    same = model.net.comm.label_logits(obs).argmax(-1) == observed_reachability(obs, size, steps)
    t = obs[..., size * size :].argmax(-1)
    share = torch.stack([torch.stack([same[t[:, i] == k, i].float().mean() for k in range(steps)])
                         for i in range(obs.shape[-2])])
    return torch.maximum(share, 1 - share)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | " + " | ".join(f"return, labels {m}" for m in MODES)
          + " | first label = reachability (sender 0 / 1) | clustering loss, labels / bit "
          "(sender 0; sender 1) | label = reachability over the replay, at each step "
          "(sender 0; sender 1) |")
    print("| --- |" + " ---: |" * (len(MODES) + 3))
    for run in args.runs:
        model, data = load_run(run, replay=True)
        if not hasattr(model.net.comm, "label_logits"):
            raise SystemExit(f"{run}: not an RGMComm run (its messenger has no labels)")
        maze = {k: v for k, v in ward(run_directory(run)).items() if k != "num_envs"}
        probe = Maze(num_envs=1, **maze)
        cells = probe.start_cells
        pairs = torch.tensor(list(itertools.product(cells.tolist(), repeat=2)))
        starts = torch.stack([pairs // probe.size, pairs % probe.size], dim=-1)  # [E, 2, 2]
        env = Maze(num_envs=len(pairs), **maze)
        results = [play(model, env, starts, mode) for mode in MODES]
        agree = results[0][1]
        loss = objective_labels_vs_bit(model, data, probe.size, probe.steps)
        steps = "-"
        if model.net.comm.into == "input":
            share = replay_agreement(model, data, probe.size, probe.steps)
            steps = "; ".join("/".join(f"{v:.2f}" for v in row) for row in share.tolist())
        print(f"| {run} | " + " | ".join(f"{r[0]:.3f}" for r in results)
              + f" | {agree[0]:.2f} / {agree[1]:.2f} | {loss[0, 0]:.3f} / {loss[1, 0]:.3f}; "
              f"{loss[0, 1]:.3f} / {loss[1, 1]:.3f} | {steps} |")


if __name__ == "__main__":
    main()

"""Where does hospital's information get lost? A supervised probe of each receiver design.

Every agent network (GRU agent + message generator + utility head, exactly as the learners
build it) is trained by supervision, not RL, to say from one step's observations whether its
specialist may treat each occupied bed: the utility of "treat bed k" is the logit. On an
*ambiguous* bed (a risk the specialist does not see itself: type j-1, which is its to treat,
or type j+1, which is not) its own observation is at chance, 0.5; only what another agent
tells it can do better. The probe separates "the channel cannot express it" from "RL did not
find it": a design below 1.0 here cannot close hospital's gap however long it trains.

    python benchmarks/receiver_probe.py --seeds 0 1 2 --steps 1500
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
from torch.nn import functional as F

from seqcomm.comm.commnet import CommNet
from seqcomm.comm.stackelberg import SeqCommMessenger
from seqcomm.comm.tarmac import TarMAC
from seqcomm.envs.base import OBS, STATE, env_info
from seqcomm.envs.hospital import Hospital
from seqcomm.envs.reference import random_policy
from seqcomm.team_q import TeamQ

#: design -> TeamQ keyword arguments
DESIGNS = {
    "no comm": dict(comm=None),
    "full_obs": dict(comm=None, full_obs=True),
    "oracle": dict(comm=None, oracle_obs=True),
    "commnet, linear head": dict(comm=CommNet, receiver="linear"),
    "commnet, mlp head": dict(comm=CommNet),
    "commnet, sender slots (diagnostic), mlp head": dict(
        comm=functools.partial(CommNet, sender_slots=True)),
    "tarmac, linear head": dict(comm=TarMAC, receiver="linear"),
    "tarmac, mlp head": dict(comm=TarMAC),
    "seqcomm, no base round, linear head": dict(
        comm=functools.partial(SeqCommMessenger, ordering="fixed", base_round=False),
        receiver="linear"),
    "seqcomm, no base round, mlp head": dict(
        comm=functools.partial(SeqCommMessenger, ordering="fixed", base_round=False)),
    "seqcomm, base round, mlp head": dict(
        comm=functools.partial(SeqCommMessenger, ordering="fixed")),
    "seqcomm, base round, prosocial order, mlp head": dict(
        comm=functools.partial(SeqCommMessenger, ordering="prosocial")),
}


def ward_samples(env: Hospital, n_steps: int, generator: torch.Generator):
    """Observations, states and per-(specialist, bed) labels from random-policy play."""
    td = env.reset()
    for _ in range(n_steps):
        td["agents", "action"] = random_policy(td, generator)
        td = env.step_and_maybe_reset(td)[1]
    n = env.n_agents
    risk = env.risk  # [E, K], n = risk-free
    j = torch.arange(n).view(1, n, 1)
    r = risk.unsqueeze(1)  # [E, 1, K]
    may_treat = (r == n) | (j == (r + 1) % n)
    occupied = env.occupied.unsqueeze(1).expand_as(may_treat)
    ambiguous = occupied & (r < n) & (r != j)
    return td[OBS].clone(), td[STATE].clone(), may_treat.float(), occupied, ambiguous


def probe(design: dict, seed: int, steps: int, batch: int) -> torch.Tensor:
    """Accuracy per specialist on ambiguous beds after ``steps`` supervised updates."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    env = Hospital(num_envs=batch, seed=seed)
    info = env_info(env)
    net = TeamQ(info, hidden_dim=64, **design)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    K = env.n_beds

    def logits(obs, state):
        h = net.agent.encode(net.inputs(obs, state), obs.new_zeros(*obs.shape[:-1], 64))
        return net.utilities(h)[0][..., 1:K + 1]  # "treat bed k" utilities [E, n, K]

    for _ in range(steps):
        obs, state, label, occupied, _ = ward_samples(env, int(torch.randint(1, 20, (1,),
                                                                             generator=gen)), gen)
        loss = F.binary_cross_entropy_with_logits(logits(obs, state)[occupied], label[occupied])
        opt.zero_grad()
        loss.backward()
        opt.step()
    correct, total = torch.zeros(env.n_agents), torch.zeros(env.n_agents)
    with torch.no_grad():
        for length in (3, 8, 13, 18):
            obs, state, label, _, ambiguous = ward_samples(env, length, gen)
            hit = ((logits(obs, state) > 0).float() == label) & ambiguous
            correct += hit.sum((0, 2)).float()
            total += ambiguous.sum((0, 2)).float()
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"supervised probe, hospital, {args.steps} Adam steps of {args.batch} wards, "
          f"seeds {args.seeds}; accuracy on ambiguous beds (chance 0.5)\n")
    print("| design | mean | min over seeds | worst specialist (mean over seeds) |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.designs:
        accs = [probe(DESIGNS[name], s, args.steps, args.batch) for s in args.seeds]
        means = [float(a.mean()) for a in accs]
        worst = statistics.fmean(float(a.min()) for a in accs)
        print(f"| {name} | {statistics.fmean(means):.3f} | {min(means):.3f} | {worst:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()

"""Diagnostic: can receivers on maze use a perfect one-bit message, and where must it enter?

Runs ``seqcomm fit`` on ``conf/maze.yaml`` with every heard message replaced by its sender's
reachability bit: can the sender still reach the high landmark in the moves left, read off its
own observation (label 1 = yes). Three placements (``--into``):

- ``head`` (default): RGMComm (``conf/methods/rgmcomm.yaml``) whose delivered labels are the
  bits. Clustering still runs; its labels are just not the ones heard. If these runs beat the
  no-communication optimum 0.5, the receivers can use the bit and a miss of RGMComm on maze is
  its labels' (docs/results.md section 11).
- ``head_q``: the same label channel on plain QLearner (no critic, no clustering): separates
  the RGMComm learner from the receiver's reading of the bit.
- ``input``: QLearner, the agents' bits appended to every agent's recurrent input (the way
  the oracle channel's observations enter, ``conf/methods/oracle.yaml``), no message head.
- ``labels_input``: RGMComm as its method file runs it (labels of the senders' observations
  into the receivers' recurrent input, online clustering) with every label the bit of its
  sender's observation: RGMComm's channel and learner with perfect labels from the start.
  With ``--late U`` the labels are a fixed random labelling of the observations (as
  uninformative as labels before the clustering has found anything) until update ``U``, then
  the bits: do receivers take right labels that arrive late? With ``--exact-steps K`` only
  observations of the first ``K`` steps get their bit, the others the random labelling: do
  the labels of later steps matter?

    python benchmarks/maze_true_bit.py --into input --seed_everything=0 \
        --trainer.default_root_dir=runs/maze_true_bit --run_name=true_bit_input_s0
"""

from __future__ import annotations

import argparse

import torch
from maze_label_use import observed_reachability

from seqcomm.agent import RNNAgent
from seqcomm.cli import main
from seqcomm.comm.rgmcomm import RGMComm
from seqcomm.rgmcomm_learner import RGMCommLearner
from seqcomm.team_q import TeamQ

SIZE, STEPS = 4, 3  # conf/maze.yaml; --size and --steps run another maze
PLACEMENTS = ("head", "head_q", "input", "labels_input")


def reachability(obs: torch.Tensor) -> torch.Tensor:
    """``[*B, n]`` bits from the ``SIZE`` x ``SIZE``, ``STEPS``-step maze's observations."""
    if obs.shape[-1] != SIZE * SIZE + STEPS + 1:
        raise SystemExit(f"maze_true_bit: expected the {SIZE}x{SIZE}, {STEPS}-step maze")
    return observed_reachability(obs, SIZE, STEPS)


class Bits:
    """The bits of the observations behind recent recurrent states, found again by value.

    A label function sees states, not observations, and the learner hands it states of the
    step, of the next step and of subsets of both; so every state the agent computes is kept
    with its input's bit, and a state's bit is that of the kept row equal to it. (A side
    channel holding "the last observations encoded" gives the learner's current steps their
    next step's bits: the learner encodes the next observations last.)"""

    def __init__(self, keep: int = 16) -> None:
        self.keep, self.rows, self.bits = keep, [], []

    def add(self, inputs: torch.Tensor, h: torch.Tensor) -> None:
        self.rows = [*self.rows, h.detach().reshape(-1, h.shape[-1])][-self.keep :]
        self.bits = [*self.bits, reachability(inputs).reshape(-1)][-self.keep :]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """``[*B, n]`` bits of states ``h [*B, n, H]``."""
        kept, query = torch.cat(self.rows), h.detach().reshape(-1, h.shape[-1])
        _, ids = torch.unique(torch.cat([kept, query]), dim=0, return_inverse=True)
        table = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        table[ids[: len(kept)]] = torch.cat(self.bits)
        found = table[ids[len(kept) :]]
        if (found < 0).any():
            raise RuntimeError("maze_true_bit: a state whose observation is not kept")
        return found.reshape(h.shape[:-1])


def patch_labels() -> None:
    """Every state the agent computes is kept with its observation's bit; RGMComm's label
    logits become the bits of the states they read."""
    encode, unroll = RNNAgent.encode, RNNAgent.unroll
    bits = Bits()

    def kept_encode(self, obs, h, prev_action=None):
        out = encode(self, obs, h, prev_action)
        bits.add(obs, out)
        return out

    def kept_unroll(self, obs, is_init, prev_action=None):
        out = unroll(self, obs, is_init, prev_action)
        bits.add(obs, out)
        return out

    def bit_logits(self, h):
        return torch.nn.functional.one_hot(bits(h), self.n_labels).to(h.dtype)

    RNNAgent.encode, RNNAgent.unroll, RGMComm.label_logits = kept_encode, kept_unroll, bit_logits


def patch_observation_labels(late: int = 0, exact_steps: int | None = None) -> None:
    """RGMComm's label logits (``into: input``: they read observations) become the bits of
    the first ``exact_steps`` steps' observations from update ``late`` on; before it and
    elsewhere, a fixed random label per (cell, step) observation."""
    exact_steps = STEPS if exact_steps is None else exact_steps
    draw = torch.Generator().manual_seed(7)
    noise = torch.randint(0, 2, (SIZE * SIZE + STEPS + 1,), generator=draw)
    step = {"now": 0}
    train = RGMCommLearner.training_step

    def counted(self, dataloader_iter):
        step["now"] = self.global_step
        return train(self, dataloader_iter)

    def bit_logits(self, obs):
        random = ((obs > 0).long() * noise).sum(-1) % 2  # parity of the cell's and step's
        exact = (obs[..., SIZE * SIZE :].argmax(-1) < exact_steps) & (step["now"] >= late)
        bits = torch.where(exact, reachability(obs), random)
        return torch.nn.functional.one_hot(bits, self.n_labels).to(obs.dtype)

    RGMCommLearner.training_step, RGMComm.label_logits = counted, bit_logits


def patch_inputs() -> None:
    """Under ``oracle_obs`` the oracle's slot (all agents' observations) carries all agents'
    bits instead, zero-padded to the slot's width (zero inputs get no weight gradient)."""

    def bit_inputs(self, obs, state):
        bits = reachability(obs).to(obs.dtype)  # [*B, n]
        slot = torch.zeros(*obs.shape[:-1], obs.shape[-2] * obs.shape[-1], dtype=obs.dtype)
        slot[..., : bits.shape[-1]] = bits.unsqueeze(-2)
        return torch.cat([obs, slot], dim=-1)

    TeamQ.inputs = bit_inputs


def arguments(into: str) -> list[str]:
    """The configs and overrides of a placement."""
    if into == "input":
        return ["--config", "conf/methods/oracle.yaml"]
    if into == "labels_input":
        return ["--config", "conf/methods/rgmcomm.yaml"]
    # the bits replace labels read from recurrent states: RGMComm's head placement
    rgmcomm = ["--config", "conf/methods/rgmcomm.yaml",
               "--model.init_args.comm.init_args.into=head"]
    if into == "head_q":
        return [*rgmcomm, "--model.class_path=seqcomm.learner.QLearner",
                "--model.init_args.comm=seqcomm.comm.rgmcomm.RGMComm",
                "--model.init_args.comm.init_args.n_labels=2"]
    return rgmcomm


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     epilog="other arguments go to seqcomm fit")
    parser.add_argument("--into", choices=PLACEMENTS, default="head")
    parser.add_argument("--late", type=int, default=0)
    parser.add_argument("--exact-steps", type=int, default=None, help="default: every step")
    parser.add_argument("--size", type=int, default=SIZE, help="the maze's side")
    parser.add_argument("--steps", type=int, default=STEPS, help="the maze's moves")
    args, rest = parser.parse_known_args()
    SIZE, STEPS = args.size, args.steps
    rest = [f"--data.env.init_args.size={SIZE}", f"--data.env.init_args.steps={STEPS}", *rest]
    if args.into == "input":
        patch_inputs()
    elif args.into == "labels_input":
        patch_observation_labels(args.late, args.exact_steps)
    else:
        patch_labels()
    main(["fit", "--config", "conf/maze.yaml", *arguments(args.into), "--wandb", "false", *rest])

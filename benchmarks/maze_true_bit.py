"""Diagnostic: can RGMComm's receivers use a perfect one-bit label on maze?

Runs ``seqcomm fit`` on ``conf/maze.yaml`` + ``conf/methods/rgmcomm.yaml`` (plus any overrides
given) with every delivered label replaced by its sender's reachability bit: can the sender
still reach the high landmark in the moves left, read off its own observation (label 1 = yes).
Clustering still runs; its labels are just not the ones heard. If these runs beat the
no-communication optimum 0.5, the receivers can use the bit and a miss of RGMComm on maze is
its labels' (docs/results.md section 11).

    python benchmarks/maze_true_bit.py --seed_everything=0 \
        --trainer.default_root_dir=runs/maze_true_bit --run_name=true_bit_s0
"""

from __future__ import annotations

import sys

import torch
from maze_label_use import observed_reachability

from seqcomm.cli import main
from seqcomm.comm.rgmcomm import RGMComm
from seqcomm.team_q import TeamQ

SIZE, STEPS = 4, 3  # conf/maze.yaml


def reachability(obs: torch.Tensor) -> torch.Tensor:
    """``[*B, n]`` bits from the 4x4, 3-step maze's observations."""
    if obs.shape[-1] != SIZE * SIZE + STEPS + 1:
        raise SystemExit(f"maze_true_bit: expected the {SIZE}x{SIZE}, {STEPS}-step maze")
    return observed_reachability(obs, SIZE, STEPS)


def patch() -> None:
    """TeamQ keeps the bits of the observations it last encoded; RGMComm's label logits
    become those bits wherever their shapes line up (the heard labels), else its own."""
    inputs, utilities, label_logits = TeamQ.inputs, TeamQ.utilities, RGMComm.label_logits

    def keep_bits(self, obs, state):
        self.true_bits = reachability(obs)
        return inputs(self, obs, state)

    def hand_bits(self, h, deliver=None):
        self.comm.true_bits = getattr(self, "true_bits", None)
        return utilities(self, h, deliver)

    def bit_logits(self, h):
        bits = getattr(self, "true_bits", None)
        if bits is None or bits.shape != h.shape[-1 - bits.dim() : -1]:
            return label_logits(self, h)
        onehot = torch.nn.functional.one_hot(bits, self.n_labels).to(h.dtype)
        return onehot.expand(*h.shape[:-1], self.n_labels)

    TeamQ.inputs, TeamQ.utilities, RGMComm.label_logits = keep_bits, hand_bits, bit_logits


if __name__ == "__main__":
    patch()
    main(["fit", "--config", "conf/maze.yaml", "--config", "conf/methods/rgmcomm.yaml",
          "--wandb", "false", *sys.argv[1:]])

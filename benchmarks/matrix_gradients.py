"""Which loss term moves a trained 1-bit matrix run where: a gradient read-out.

Loads a finished SeqComm-DFL run on the matrix game (``config.yaml`` and ``last.ckpt``), builds
one batch of every observation pair (8 copies each, greedy actions with 5% random ones), and
for each loss term of the value step (weighted as in ``training_step``) prints the first-order
change that one plain gradient step on that term alone would make to

- the receiver's (agent 1's) utility gap ``Q(a0) - Q(a1)`` under label ``--label`` when its
  observation is ``--o1``, and
- the sender's (agent 2's) label log-ratio ``log p(0) / p(1)`` for its observation ``--o2``.

A positive number raises the quantity. It shows which objective drives a wrong cell (docs/results.md
section 7: the TD loss, through the shared recurrent encoder, outweighs the label's own
objective 27x on table 2 seed 0).

    python benchmarks/matrix_gradients.py runs/matrix_ce1/table_2_s0/version_0 --table 2 --o2 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hospital_decisions import load

from seqcomm.envs.base import ACTION, OBS, STATE
from seqcomm.envs.matrix import MatrixGame


def batch_of_all_pairs(env: MatrixGame, model, seed: int = 0):
    """Every (o1, o2) pair, greedy actions with 5% uniformly random ones, one step."""
    td = env.reset()
    with torch.no_grad():
        q, _ = model.net.utilities(states(model, td))
    gen = torch.Generator().manual_seed(seed)
    explore = torch.rand(q.shape[:-1], generator=gen) < 0.05
    td[ACTION] = torch.where(explore, torch.randint(0, q.shape[-1], q.shape[:-1], generator=gen),
                             q.argmax(-1))
    td["next"] = env.step(td)["next"]
    td["is_init"] = torch.ones(td.batch_size[0], 1, dtype=torch.bool)
    return td


def states(model, td) -> torch.Tensor:
    obs = td[OBS]
    h0 = obs.new_zeros(*obs.shape[:-1], model.net.agent.hidden_dim)
    return model.net.agent.encode(model.net.inputs(obs, td[STATE]), h0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory (version_k)")
    parser.add_argument("--table", default="rgmcomm", help="rgmcomm or a random table's seed")
    parser.add_argument("--o1", type=int, default=0)
    parser.add_argument("--label", type=int, default=1)
    parser.add_argument("--o2", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load(args.run).train()
    table = ({"table": "rgmcomm"} if args.table == "rgmcomm" else
             {"table": "random", "table_seed": int(args.table), "n_obs1": 2, "n_actions": 2,
              "n_obs2": 4})
    env = MatrixGame(num_envs=64, exhaustive=True, **table)
    td = batch_of_all_pairs(env, model)
    o1 = td[OBS][:, 0, :2].argmax(-1)  # agent 1's one-hot observation comes first
    o2 = td[OBS][:, 1].argmax(-1) - 2  # agent 2's after two entries
    r, s = int((o1 == args.o1).nonzero()[0, 0]), int((o2 == args.o2).nonzero()[0, 0])
    label_ctx = model.net.comm.label_contexts()[args.label]

    def receiver_gap() -> torch.Tensor:
        q = model.net.agent.q(states(model, td)[r:r + 1, :1], label_ctx.view(1, 1, -1))
        return (q[..., 0] - q[..., 1]).sum()

    def sender_log_ratio() -> torch.Tensor:
        probs = model.net.utilities(states(model, td))[1].label_probs[s, 1]
        return probs[0].log() - probs[1].log()

    params = [p for p in model.net.parameters() if p.requires_grad]
    targets = {"receiver gap": receiver_gap, "sender log-ratio": sender_log_ratio}
    directions = {k: torch.autograd.grad(f(), params, allow_unused=True)
                  for k, f in targets.items()}
    td_loss, cache = model.td_loss(td.unsqueeze(1))
    losses = {"td": td_loss, **model.message_losses(td.unsqueeze(1), cache)}
    # weighted as in training_step, without a world model; the critic's loss moves no w
    terms = {name: weight * losses[name]
             for name, weight in model.loss_weights(imagined=False).items()
             if name in losses and name != "critic"}
    print(f"now: receiver gap {float(receiver_gap()):.3f}, "
          f"sender log-ratio {float(sender_log_ratio()):.3f}")
    print("| term | loss | " + " | ".join(targets) + " |")
    print("| --- | ---: |" + " ---: |" * len(targets))
    for name, loss in terms.items():
        if not loss.requires_grad:
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        effects = [-sum(float((d * g).sum()) for d, g in zip(dirs, grads, strict=True)
                        if d is not None and g is not None) for dirs in directions.values()]
        print(f"| {name} | {float(loss):.4g} | " + " | ".join(f"{e:+.4g}" for e in effects)
              + " |")


if __name__ == "__main__":
    main()

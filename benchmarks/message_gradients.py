"""Where SeqComm-DFL's value-aware losses push a trained messenger, on the run's own replay.

Loads a finished SeqComm-DFL run (any of the ladder's ``seqcomm_*`` rungs: ``config.yaml``,
``checkpoints/last.ckpt`` with its replay buffer) and, on ``--samples`` replay batches, reads:

- **gradients**: the norm of each weighted loss's gradient (the real TD loss, the imagined
  TD loss of a run with a world model, ``L_VA``, ``L_inf``, ``L_aware``, the
  guidance-potential regression) on the messenger, the receivers'
  utility head and the agents' recurrent body, and its cosine with the TD gradient. The
  weights are ``--lambda-va`` / ``--lambda-inf`` (the method file's by default; times the
  run's ``va_confidence`` weight where that is on), so a run trained by TD alone shows what
  the value-aware losses would do to its messages.
- **the evaluator's verdict**: the mean receiver gain (``evaluator_gain``: the critic's
  value of each receiver's decision with the sender's message against masked, in units of
  the values' spread between actions) and the share of (sample, pair) gains above zero; the
  critic's fit (R^2 on the TD targets) and its RMS error in units of that spread; the same
  gain for the whole channel (every sender masked at once), and the share of receivers'
  greedy actions that masking one sender, or all, changes.
- **the receivers' use**: the greedy win rate and return with every message delivered and
  with every message masked (``--episodes`` fresh episodes each), and with every agent
  switched to the critic's best response to the others' greedy actions (or one agent
  drawn per step).

With ``--fit-critic team|factored`` the run's critic is first replaced by a fresh one of
that kind, fitted on the run's replay against the run's own TD targets (``--fit-steps``).

    python benchmarks/message_gradients.py runs/mc_sight_u8_400k/seqcomm_td_s0/version_0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hospital_decisions import load_run

from seqcomm.dfl.critic import TeamCritic
from seqcomm.dfl.factored_critic import FactoredCritic
from seqcomm.dfl.value_aware import decision_value
from seqcomm.envs.base import ACTION, MASK, STATE
from seqcomm.envs.reference import evaluate_policy
from seqcomm.team_q import masked_argmax

MESSAGE_TERMS = ("va", "inf", "aware", "gp")
CRITICS = {"team": TeamCritic, "factored": FactoredCritic}


def parameter_groups(model) -> dict[str, list[torch.nn.Parameter]]:
    """Messenger, receivers' utility head, agents' recurrent body."""
    agent = model.net.agent
    head = {id(p) for p in agent.head.parameters()}
    return {"messenger": list(model.net.comm.parameters()),
            "receiver head": list(agent.head.parameters()),
            "agent body": [p for p in agent.parameters() if id(p) not in head]}


def flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(grads, params, strict=True)])


def read_sample(model, batch, weights: dict[str, float]) -> tuple[dict, dict]:
    """Per (group, term) gradient vectors and the evaluator's statistics on one batch."""
    td, cache = model.td_loss(batch)
    msg = model.message_losses(batch, cache)
    losses = {"td": td, **{k: weights[k] * msg[k] for k in MESSAGE_TERMS}}
    pred = model.imagine(batch, cache)
    if pred is not None:  # the imagined TD loss, as the w step weighs it
        losses["model_td"] = weights["model_td"] * model.imagined_td_loss(batch, cache, pred)[0]
    grads = {(g, k): flat_grad(loss, params) for g, params in parameter_groups(model).items()
             for k, loss in losses.items() if loss.requires_grad}
    with torch.no_grad():
        cf = model.counterfactual_utilities(batch, cache)
        gain = model.evaluator_gain(batch, cache, cf.q_masked, cf.q_all, cache["h"],
                                    cache["aux"], cf.ctx_all)  # [n_send, *B, n_recv]
        n = gain.shape[0]
        off = ~torch.eye(n, dtype=torch.bool).view(n, *[1] * (gain.dim() - 2), n)
        gain = gain.masked_select(off.expand_as(gain))
        # the whole channel: every sender masked at once, against every message delivered
        mask, tau = batch[MASK], model.hparams.influence_tau
        values, _ = model.evaluator_values(batch, cache)
        q_none = model.receiver_q(cache["h"], torch.zeros_like(cf.ctx_all))
        channel = (decision_value(cf.q_all, values, tau, mask)
                   - decision_value(q_none, values, tau, mask))
        greedy = masked_argmax(cf.q_all, mask)
        one_changed = (masked_argmax(cf.q_masked, mask) != greedy).float().mean()
        all_changed = (masked_argmax(q_none, mask) != greedy).float().mean()
        joint = torch.nn.functional.one_hot(batch[ACTION], model.info.n_actions)
        fit = model.critic(batch[STATE], joint.to(cache["h"].dtype)).squeeze(-1)
        target = cache["target"].squeeze(-1)
        _, spread = model.evaluator_values(batch, cache)
        err = (fit - target).pow(2).mean()
    stats = {"gain": gain.mean().item(), "gain > 0": (gain > 0).float().mean().item(),
             "channel gain": channel.mean().item(),
             "channel gain > 0": (channel > 0).float().mean().item(),
             "greedy changed, one sender masked": one_changed.item(),
             "greedy changed, all masked": all_changed.item(),
             "critic R2": (1 - err / target.var()).item(),
             "critic RMS / spread": (err.sqrt() / spread).item()}
    return grads, stats


def fit_critic(model, data, critic_cls: type, steps: int) -> None:
    """Replace the run's team critic by a fresh ``critic_cls``, fitted for ``steps`` Adam
    steps on the run's replay against its own TD targets (as in training)."""
    info = model.info
    model.critic = critic_cls(info.state_dim, info.n_agents, info.n_actions).train()
    opt = torch.optim.Adam(model.critic.parameters(), lr=model.hparams.lr)
    for _ in range(steps):
        batch = data.buffer.sample()
        with torch.no_grad():
            _, cache = model.td_loss(batch)
        joint = torch.nn.functional.one_hot(batch[ACTION], info.n_actions).float()
        loss = model.critic.loss(batch[STATE], joint, cache["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()


def masked_forward(comm):
    """``comm``'s forward with every message masked (the receivers hear nothing)."""
    forward = comm.forward

    def silent(h, deliver=None):
        return forward(h, h.new_zeros(h.shape[-2]))
    return silent


class CriticBestResponse(torch.nn.Module):
    """The greedy policy, then agents switched to the team critic's best response to the
    others' greedy actions: all at once (``every=True``) or one agent drawn per step: how
    good a decision-maker the evaluator of ``L_VA`` is on the task's own states."""

    def __init__(self, policy, critic, every: bool = True):
        super().__init__()
        self.policy, self.critic, self.every = policy, critic, every
        self.in_keys, self.out_keys = policy.in_keys, policy.out_keys

    def forward(self, td):
        td = self.policy(td)
        action = td[ACTION]
        best = masked_argmax(self.critic.switch_values(td[STATE], action), td[MASK])
        if not self.every:  # one agent per env copy switches
            drawn = torch.randint(action.shape[-1], action.shape[:-1], device=action.device)
            one = torch.nn.functional.one_hot(drawn, action.shape[-1]).bool()
            best = torch.where(one, best, action)
        td.set(ACTION, best)
        return td


def play(model, data, episodes: int, seed: int, policy=None) -> dict[str, float]:
    policy = model.policy if policy is None else policy
    env = data.wrap(data.make_eval_env(min(episodes, 32), seed, "cpu"), model.policy)
    model.policy.greedy = True
    with torch.no_grad():
        return evaluate_policy(env, policy, episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=8, help="replay batches per run")
    parser.add_argument("--lambda-va", type=float, default=1.0)
    parser.add_argument("--lambda-inf", type=float, default=0.1)
    parser.add_argument("--episodes", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-critic", choices=sorted(CRITICS), default=None,
                        help="first replace the run's critic by a fresh one fitted on its replay")
    parser.add_argument("--fit-steps", type=int, default=2000)
    args = parser.parse_args()
    for run in args.runs:
        torch.manual_seed(args.seed)
        model, data = load_run(run, replay=True)
        model.train()
        if args.fit_critic:
            fit_critic(model, data, CRITICS[args.fit_critic], args.fit_steps)
        hp = model.hparams
        weights = {"model_td": hp.model_td_weight, "va": args.lambda_va,
                   "inf": args.lambda_inf, "aware": hp.lambda_aware,
                   "gp": hp.lambda_gp}
        sums, stats = {}, []
        for _ in range(args.samples):
            grads, st = read_sample(model, data.buffer.sample(), weights)
            for key, g in grads.items():
                sums[key] = sums.get(key, 0) + g / args.samples
            stats.append(st)
        refit = f"critic refitted: {args.fit_critic}, {args.fit_steps} steps; " * bool(
            args.fit_critic)
        print(f"\n{run}  ({refit}lambda_va={args.lambda_va}, lambda_inf={args.lambda_inf}; "
              f"mean gradient over {args.samples} replay batches)")
        print("| parameters | term | norm | norm / TD norm | cosine with TD |")
        print("| --- | --- | ---: | ---: | ---: |")
        for (group, term), g in sums.items():
            ref = sums.get((group, "td"))
            if ref is None or g.norm() == 0:
                continue
            cos = torch.nn.functional.cosine_similarity(g, ref, dim=0).item()
            print(f"| {group} | {term} | {g.norm():.3g} | {g.norm() / ref.norm():.3g} "
                  f"| {cos:+.2f} |")
        for key in stats[0]:
            values = torch.tensor([s[key] for s in stats])
            print(f"{key}: {values.mean():.3f} (sd {values.std():.3f} over batches)")
        model.eval()
        seed = args.seed + 1_000_003
        delivered = play(model, data, args.episodes, seed)
        critic = play(model, data, args.episodes, seed,
                      CriticBestResponse(model.policy, model.critic))
        one = play(model, data, args.episodes, seed,
                   CriticBestResponse(model.policy, model.critic, every=False))
        model.net.comm.forward = masked_forward(model.net.comm)
        masked = play(model, data, args.episodes, seed)
        for key in delivered:
            print(f"greedy {key}: delivered {delivered[key]:.3f}, masked {masked[key]:.3f}, "
                  f"critic's best response: every agent {critic[key]:.3f}, one agent "
                  f"{one[key]:.3f}")


if __name__ == "__main__":
    main()

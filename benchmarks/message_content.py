"""What do a trained run's messages tell each receiver about the state it cannot see?

Rolls out the run's final greedy policy (fresh copies, the run's evaluation seed + 1,000,003,
as ``message_use.py``) and records at every step the global state, each agent's recurrent
state ``h_j`` (its own history only: the receiver head reads the context, the recurrent
input does not) and its context ``ctx_j`` (what the messages delivered). Then, per receiver,
probes regress the state on ``h_j`` alone and on ``[h_j, ctx_j]`` (ridge, and a small MLP),
trained on three quarters of the copies and scored on the rest: the held-out R^2 gain is what
the messages add about the state beyond what the receiver already knew. The same probe on
``[h_j, h_-j]`` (the senders' own recurrent states) is what they could have added.

    python benchmarks/message_content.py RUN_DIR [RUN_DIR ...] [--copies 64] [--steps 120]

``--features a:b c:d`` probes state columns a..b-1 and c..d-1 separately; ``others:a:b``
splits columns a..b into one equal block per agent and drops the receiver's own (microcombat
3m: allies ``others:0:12``, enemies ``12:21``, last actions ``others:21:48``); ``actions`` probes
the one-hot of the other agents' greedy actions at this very step (their intentions, which
their recurrent states decide before any message is read). Scores are averaged over receivers.

``--senders a:b`` (messengers that report base messages, SeqComm-DFL's): per sender, what its
own message keeps of state columns a..b-1, by ridge R^2 from ``h_i``, from the pre-message
``raw_i``, from the bounded base message ``m_i`` and from the refined message; and the share
of messages at their bound (tanh: coordinates beyond 0.95; norm: messages on the sphere); and
the receivers' gain over ``h_j`` from their context and from the others' base messages handed
over directly (what the attention could have delivered).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hospital_decisions import load_run
from torch import nn

from seqcomm.envs.base import ACTION, STATE


@torch.no_grad()
def rollout(model, data, copies: int, steps: int) -> tuple[torch.Tensor, ...]:
    """``state [T*E, S]``, ``h [T*E, n, H]``, ``ctx [T*E, n, C]``, ``copy [T*E]``, ``out``
    (the messenger's ``MessageOutput`` fields, concatenated over steps) and the greedy actions
    ``[T*E, n]``."""
    net, seen, outs = model.net, {}, []
    utilities = net.utilities

    def recording(h, deliver=None):
        q, out = utilities(h, deliver)
        seen["h"], seen["ctx"] = h, out.ctx
        outs.append(out)
        return q, out

    net.utilities = recording
    try:
        env = data.wrap(data.make_eval_env(copies, data.seed() + 1_000_003, "cpu"), model.policy)
        model.policy.greedy = True
        td = env.reset()
        states, hs, ctxs, actions = [], [], [], []
        for _ in range(steps):
            states.append(td[STATE].clone())
            td = model.policy(td)
            actions.append(td[ACTION].clone())
            hs.append(seen["h"])
            ctxs.append(seen["ctx"])
            td, root = env.step_and_maybe_reset(td)
            td = root
    finally:
        net.__dict__.pop("utilities", None)
    copy = torch.arange(copies).repeat(steps)
    out = {k: torch.cat([getattr(o, k) for o in outs]) for k in outs[0]._fields
           if getattr(outs[0], k) is not None}
    return torch.cat(states), torch.cat(hs), torch.cat(ctxs), copy, out, torch.cat(actions)


def standardise(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    mean, std = x[train].mean(0), x[train].std(0)
    return (x - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))


def r2(pred: torch.Tensor, y: torch.Tensor, test: torch.Tensor, keep: torch.Tensor) -> float:
    """Held-out R^2 averaged over the target columns that vary."""
    resid = ((pred[test] - y[test]) ** 2).mean(0)
    var = y[test].var(0, unbiased=False)
    return (1 - resid[keep] / var[keep]).mean().item()


def ridge(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, alpha: float = 1.0):
    """Closed-form ridge fit on the ``train`` rows, predictions for all rows (a few lines of
    torch; scikit-learn is not a dependency of the package)."""
    x = torch.cat([x, torch.ones(len(x), 1)], -1)
    xt = x[train]
    w = torch.linalg.solve(xt.T @ xt + alpha * torch.eye(x.shape[1]), xt.T @ y[train])
    return x @ w


def mlp(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, updates: int = 600):
    torch.manual_seed(0)
    probe = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, y.shape[1]))
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    xt, yt = x[train], y[train]
    for _ in range(updates):
        idx = torch.randint(len(xt), (1024,))
        loss = ((probe(xt[idx]) - yt[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return probe(x)


def all_but(x: torch.Tensor, j: int) -> torch.Tensor:
    """``x [R, n, d]`` -> ``[R, (n - 1) d]``: every agent's rows but ``j``'s, side by side."""
    return torch.cat([x[:, i] for i in range(x.shape[1]) if i != j], -1)


def columns(spec: str) -> slice:
    """``"a:b"`` -> ``slice(a, b)`` (either end may be empty)."""
    lo, _, hi = spec.partition(":")
    return slice(int(lo) if lo else None, int(hi) if hi else None)


def probe_run(run: Path, copies: int, steps: int, features: list[str],
              probes: list[str]) -> list[tuple[str, float, float, float]]:
    """``(row name, R^2 from h_j, from [h_j, ctx_j], from [h_j, h_-j])``, averaged over
    receivers j; the last is what the senders' own states would add (what they knew)."""
    model, data = load_run(run)
    state, h, ctx, copy, _, actions = rollout(model, data, copies, steps)
    train = copy < (3 * copies) // 4
    test = ~train
    fits = {"ridge": ridge, "mlp": mlp}
    n = h.shape[1]
    inputs = []  # per receiver: h_j; [h_j, ctx_j]; [h_j, h_-j]
    for j in range(n):
        own = standardise(h[:, j], train)
        senders = standardise(all_but(h, j), train)
        inputs.append((own, torch.cat([own, standardise(ctx[:, j], train)], -1),
                       torch.cat([own, senders], -1)))
    rows = []
    for spec in features:
        others = spec.startswith("others:") or spec == "actions"
        if spec == "actions":
            heads = [m for m in model.net.agent.head.modules() if isinstance(m, nn.Linear)]
            n_actions = heads[-1].out_features
            target = nn.functional.one_hot(actions.long(), n_actions).flatten(1).float()
        else:
            target = state[:, columns(spec.removeprefix("others:"))]
        for name in probes:
            scores = torch.zeros(3)
            for j in range(n):
                y = target
                if others:  # one equal block per agent: drop the receiver's own
                    y = torch.cat([b for i, b in enumerate(y.chunk(n, -1)) if i != j], -1)
                y = standardise(y, train)
                keep = (y[train].std(0) > 1e-6) & (y[test].std(0) > 1e-6)
                scores += torch.tensor([r2(fits[name](x, y, train), y, test, keep)
                                        for x in inputs[j]])
            rows.append((f"state[{spec}], {name}", *(scores / n).tolist()))
    return rows


def probe_senders(run: Path, copies: int, steps: int,
                  spec: str) -> tuple[list[list[float]], list[float]]:
    """Per sender ``[R^2 from h_i, raw_i, m_i, refined_i, share at the bound]`` of state
    columns ``spec`` (ridge, held out as ``probe_run``); and, averaged over receivers j, the
    R^2 gain over ``h_j`` of ``[h_j, ctx_j]`` and of ``[h_j, the others' base messages]``
    (handed over directly: what the attention could deliver)."""
    model, data = load_run(run)
    state, h, _, copy, out, _ = rollout(model, data, copies, steps)
    if "base_messages" not in out:
        raise SystemExit(f"{run}: its messenger reports no base messages (SeqComm-DFL's do)")
    encoder = model.net.comm.encoder
    with torch.no_grad():
        raw = encoder.raw(h)
    train = copy < (3 * copies) // 4
    test = ~train
    y = standardise(state[:, columns(spec)], train)
    keep = (y[train].std(0) > 1e-6) & (y[test].std(0) > 1e-6)
    base, n = out["base_messages"], h.shape[1]
    rows = []
    for i in range(n):
        scores = [r2(ridge(standardise(x[:, i], train), y, train), y, test, keep)
                  for x in (h, raw, base, out["messages"])]
        rows.append([*scores, encoder.at_bound(base[:, i]).item()])
    gains = torch.zeros(2)
    for j in range(n):
        own = standardise(h[:, j], train)
        alone = r2(ridge(own, y, train), y, test, keep)
        gains += torch.tensor([
            r2(ridge(torch.cat([own, standardise(x, train)], -1), y, train), y, test, keep)
            - alone for x in (out["ctx"][:, j], all_but(base, j))])
    return rows, (gains / n).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--copies", type=int, default=64)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--features", nargs="+", default=[":"],
                        help="state column ranges a:b, one probe target each (default: all)")
    parser.add_argument("--probes", nargs="+", default=["ridge", "mlp"],
                        choices=["ridge", "mlp"])
    parser.add_argument("--senders", metavar="A:B", default=None,
                        help="instead: what each sender's own message keeps of columns A:B")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.senders is not None:
        print(f"| run | sender | state[{args.senders}] R^2 from h_i | raw_i | m_i | refined_i "
              "| share at the bound |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        delivered = []
        for run in args.runs:
            rows, gains = probe_senders(run, args.copies, args.steps, args.senders)
            for i, row in enumerate(rows):
                print(f"| {run} | {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
            delivered.append(f"{run}: context {gains[0]:+.3f}, others' base messages "
                             f"{gains[1]:+.3f}")
        print("\nGain over h_j, receivers' mean:\n" + "\n".join(delivered))
        return
    print("| run | target, probe | R^2 from h_j | from [h_j, ctx_j] | from [h_j, h_-j] "
          "| gain: context / senders' states |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for run in args.runs:
        for name, alone, heard, full in probe_run(run, args.copies, args.steps, args.features,
                                                  args.probes):
            print(f"| {run} | {name} | {alone:.3f} | {heard:.3f} | {full:.3f} "
                  f"| {heard - alone:+.3f} / {full - alone:+.3f} |")


if __name__ == "__main__":
    main()

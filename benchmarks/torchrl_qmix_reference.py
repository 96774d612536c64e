"""TorchRL's own QMIX pipeline on VMAS, timed: the throughput reference for ``pipeline_speed``.

The structure follows TorchRL's ``sota-implementations/multiagent/qmix_vdn.py`` (VmasEnv +
RewardSum, a parameter-shared feed-forward ``MultiAgentMLP`` with ``QValueModule`` and
``EGreedyModule``, ``QMixer``, ``Collector``, a ``TensorDictReplayBuffer`` of transitions,
``QMixerLoss`` with TD(0), ``SoftUpdate``, Adam). Sizes come from the command line so that
``pipeline_speed.py --compare`` can run it at seqcomm's settings: ``num_envs`` copies play
``max_steps`` steps per collection (frames per batch = num_envs x max_steps), each update
samples ``minibatch`` transitions (= seqcomm's batch of chunks x max_steps), and
``updates_per_collect`` updates follow each collection. Unlike the original script there is
no evaluation and no logger; the loop stops after the timed window.

    python benchmarks/torchrl_qmix_reference.py --scenario simple_spread --json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
from torchrl.data.replay_buffers.storages import LazyTensorStorage
from torchrl.envs import RewardSum, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.modules import EGreedyModule, QValueModule, SafeSequential
from torchrl.modules.models.multiagent import MultiAgentMLP, QMixer
from torchrl.objectives import SoftUpdate, ValueEstimators
from torchrl.objectives.multiagent.qmixer import QMixerLoss

#: Scenario options matching seqcomm.envs.vmas.VmasTask's (shared team reward on navigation).
SCENARIO_KWARGS = {"simple_spread": {}, "navigation": {"shared_rew": True}}


class Stopwatch:
    """Wall-clock and process CPU seconds, in total and per named phase, over a window.

    CPU seconds (``time.process_time``, one torch thread) are the steadier measure on a
    shared machine: other processes' load stretches wall time but not this process's CPU time.
    """

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.start: tuple | None = None

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = self.now()
        try:
            yield
        finally:
            w, c = self.now()
            self.spent[name][0] += w - wall
            self.spent[name][1] += c - cpu

    def open(self, frames: int, updates: int) -> None:
        """Start the window at these counters."""
        self.start = (*self.now(), frames, updates, {k: list(v) for k, v in self.spent.items()})

    def result(self, frames: int, updates: int) -> dict:
        """Rates since ``open`` (wall and CPU) and the wall/CPU seconds of each phase."""
        wall, cpu = self.now()
        wall, cpu = wall - self.start[0], cpu - self.start[1]
        frames, updates = frames - self.start[2], updates - self.start[3]
        phases = {k: [v[i] - self.start[4].get(k, [0.0, 0.0])[i] for i in (0, 1)]
                  for k, v in self.spent.items()}
        return {"env_steps_per_s": frames / wall, "updates_per_s": updates / wall,
                "env_steps_per_cpu_s": frames / cpu, "updates_per_cpu_s": updates / cpu,
                "wall_s": wall, "cpu_s": cpu, "window_frames": frames,
                "window_updates": updates, "phases": phases}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="simple_spread", choices=sorted(SCENARIO_KWARGS))
    p.add_argument("--n-agents", type=int, default=3)
    p.add_argument("--num-envs", type=int, default=32, help="parallel VMAS copies")
    p.add_argument("--max-steps", type=int, default=25, help="episode length (truncation)")
    p.add_argument("--minibatch", type=int, default=800, help="transitions per update")
    p.add_argument("--buffer-frames", type=int, default=125_000, help="replay capacity")
    p.add_argument("--updates-per-collect", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64, help="agent MLP width (2 hidden layers)")
    p.add_argument("--mixer-embed", type=int, default=32)
    p.add_argument("--tau", type=float, default=0.005, help="target Polyak rate")
    p.add_argument("--warmup-updates", type=int, default=10, help="updates before the window")
    p.add_argument("--window-updates", type=int, default=50, help="updates timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line (for --compare)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    frames_per_batch = args.num_envs * args.max_steps

    env = VmasEnv(scenario=args.scenario, num_envs=args.num_envs, continuous_actions=False,
                  max_steps=args.max_steps, device=args.device, seed=args.seed,
                  n_agents=args.n_agents, **SCENARIO_KWARGS[args.scenario])
    env = TransformedEnv(env, RewardSum(in_keys=[env.reward_key],
                                        out_keys=[("agents", "episode_reward")]))

    # -- policy: shared feed-forward agent, greedy Q head, epsilon-greedy exploration ----
    net = MultiAgentMLP(
        n_agent_inputs=env.observation_spec["agents", "observation"].shape[-1],
        n_agent_outputs=env.full_action_spec["agents", "action"].space.n,
        n_agents=env.n_agents, centralized=False, share_params=True, device=args.device,
        depth=2, num_cells=args.hidden, activation_class=nn.Tanh)
    qnet = SafeSequential(
        TensorDictModule(net, in_keys=[("agents", "observation")],
                         out_keys=[("agents", "action_value")]),
        QValueModule(action_value_key=("agents", "action_value"),
                     out_keys=[env.action_key, ("agents", "action_value"),
                               ("agents", "chosen_action_value")],
                     spec=env.full_action_spec_unbatched, action_space=None))
    explore = EGreedyModule(eps_init=0.3, eps_end=0.0, annealing_num_steps=50_000,
                            action_key=env.action_key, spec=env.full_action_spec_unbatched)
    qnet_explore = TensorDictSequential(qnet, explore)

    # -- mixer, loss, target updates ------------------------------------------------------
    mixer = TensorDictModule(
        QMixer(state_shape=env.observation_spec_unbatched["agents", "observation"].shape,
               mixing_embed_dim=args.mixer_embed, n_agents=env.n_agents, device=args.device),
        in_keys=[("agents", "chosen_action_value"), ("agents", "observation")],
        out_keys=["chosen_action_value"])
    loss_module = QMixerLoss(qnet, mixer, delay_value=True)
    loss_module.set_keys(action_value=("agents", "action_value"),
                         local_value=("agents", "chosen_action_value"),
                         global_value="chosen_action_value", action=env.action_key)
    loss_module.make_value_estimator(ValueEstimators.TD0, gamma=0.99)
    target_updater = SoftUpdate(loss_module, tau=args.tau)
    optim = torch.optim.Adam(loss_module.parameters(), 5e-4)

    collector = Collector(env, qnet_explore, device=args.device, storing_device=args.device,
                          frames_per_batch=frames_per_batch, total_frames=-1)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.buffer_frames, device=args.device),
        sampler=SamplerWithoutReplacement(), batch_size=args.minibatch)

    # -- the loop, timed over updates (warmup, warmup + window] ----------------------------
    watch, batches = Stopwatch(), iter(collector)
    updates = frames = 0
    stop = args.warmup_updates + args.window_updates
    while updates < stop:
        with watch.phase("collect"):
            data = next(batches)
            # shared team reward: drop the agent dimension (as the original script does)
            data.set(("next", "reward"), data.get(("next", env.reward_key)).mean(-2))
            del data["next", env.reward_key]
            buffer.extend(data.reshape(-1))
            frames += data.numel()
        for _ in range(args.updates_per_collect):
            with watch.phase("sample"):
                batch = buffer.sample()
            loss = loss_module(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(loss_module.parameters(), 10.0)
            optim.step()
            optim.zero_grad()
            target_updater.step()
            updates += 1
            if updates == args.warmup_updates:
                watch.open(frames, updates)
            if updates == stop:
                break
        # per-collection bookkeeping, counted as collection like seqcomm's epsilon update
        # (EGreedyModule.step loops once per frame: ~10 ms per 800 frames here)
        with watch.phase("collect"):
            explore.step(frames=data.numel())
            collector.update_policy_weights_()
    result = {"pipeline": "torchrl qmix_vdn", "scenario": args.scenario,
              **watch.result(frames, updates)}
    collector.shutdown()
    print(json.dumps(result) if args.json else result)
    return result


if __name__ == "__main__":
    main()

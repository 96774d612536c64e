"""QMIX with pluggable communication: the LightningModule every method builds on
(docs/method.md §1, §7 and §8).

The module organises; its parts come from the config: the message generator (``comm``, by
class_path), the agent/mixer sizes, the optimiser and exploration numbers. Collection and
replay live in ``seqcomm.data.EpisodeData``; evaluation runs as Lightning validation; the
collection statistics, the throughput clock and the random generators' seeding and restore are
callbacks (``seqcomm.callbacks``, installed by ``seqcomm fit``).
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from tensordict import TensorDictBase

from seqcomm.agent import Body, Receiver
from seqcomm.comm.base import MessageOutput
from seqcomm.envs.base import ACTION, MASK, OBS, STATE, EnvInfo, metric_name
from seqcomm.envs.reference import evaluate_policy
from seqcomm.errors import NonFiniteError
from seqcomm.policy import EpsilonGreedyPolicy
from seqcomm.team_q import CommFactory, TeamQ, masked_argmax

NEXT = "next"

# env_info is a hyperparameter: let checkpoints load under torch.load(weights_only=True)
torch.serialization.add_safe_globals([EnvInfo])


class QLearner(L.LightningModule):
    """QMIX (Rashid et al. 2018) on recurrent agents, with messages when ``comm`` is set.

    Args:
        env_info: environment sizes; linked from ``data.info`` by the CLI, never typed.
        comm: message generator (``class_path`` of a ``seqcomm.comm`` class); none = QMIX.
        hidden_dim: agent width, the GRU state size (PyMARL 64).
        mixer_embed_dim: mixing network width (PyMARL 32).
        full_obs: every agent also observes the global state (the upper reference).
        oracle_obs: every agent also observes all agents' observations (an oracle channel).
        receiver: how utilities read the message context: ``mlp`` (message x own-state
            interactions) or ``linear`` (a per-action offset); see ``RNNAgent``.
        last_action: agents also input their previous action's one-hot (PyMARL's SMAC default);
            acting and training unrolls both feed it.
        agent_body: ``gru`` (recurrent, PyMARL) or ``mlp`` (feed-forward, as TorchRL's and
            BenchMARL's QMIX: each step's utilities from that step's input alone).
        lr: Adam learning rate (PyMARL 5e-4).
        gamma: discount.
        grad_clip: gradient-norm clip (PyMARL 10).
        double_q: double-Q targets (online argmax, target evaluation).
        target_update_interval: updates between hard target copies (used when target_tau=0).
        target_tau: Polyak rate of the target networks (0 = hard copies).
        eps_start: initial exploration rate.
        eps_end: final exploration rate.
        eps_anneal_frames: env steps over which epsilon anneals (PyMARL 50k).
    """

    #: some parameters sit out some backward passes (a critic or world model trained by
    #: its own loss): plain DDP needs ``find_unused_parameters`` (``seqcomm fit`` sets it)
    ddp_unused_parameters: bool = False

    def __init__(
        self,
        env_info: EnvInfo | None = None,
        comm: CommFactory | None = None,
        hidden_dim: int = 64,
        mixer_embed_dim: int = 32,
        full_obs: bool = False,
        oracle_obs: bool = False,
        receiver: Receiver = "mlp",
        lr: float = 5e-4,
        gamma: float = 0.99,
        grad_clip: float = 10.0,
        double_q: bool = True,
        target_update_interval: int = 200,
        target_tau: float = 0.0,
        eps_start: float = 1.0,
        eps_end: float = 0.05,
        eps_anneal_frames: int = 50_000,
        last_action: bool = False,
        agent_body: Body = "gru",
    ) -> None:
        super().__init__()
        if env_info is None:
            raise ValueError("model.env_info is missing: run through `seqcomm fit`, which links "
                             "it from the environment, or pass seqcomm.envs.base.env_info(env)")
        if not 0.0 <= gamma <= 1.0 or not 0.0 <= target_tau <= 1.0:
            raise ValueError("model.gamma and model.target_tau must lie in [0, 1]")
        self.save_hyperparameters(ignore=["comm"])
        self.automatic_optimization = False
        self.info = env_info
        self.net = TeamQ(env_info, comm, hidden_dim, mixer_embed_dim, full_obs, oracle_obs,
                         receiver, last_action, agent_body)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.policy = EpsilonGreedyPolicy(self.net, eps_start, eps_end, eps_anneal_frames)

    # -- the QMIX loss ----------------------------------------------------------------
    def recurrent_states(self, net: TeamQ, batch: TensorDictBase):
        """States at each step and after each step's next observation (``[B, T, n, H]``).

        Bootstrapping from ``next`` observations (one batched GRU step on top of the unrolled
        states) stays correct across episode ends and at the chunk's last step. Where step
        ``t + 1`` continues the episode on the same input, that step is ``h[:, t + 1]``
        already, so it is taken from the unroll instead of being recomputed.
        """
        is_init = batch["is_init"].squeeze(-1)
        # under last_action: the one-hot previous actions each step and its next step see
        prev = (net.previous_actions(batch[ACTION], is_init)
                if getattr(net.agent, "last_action", False) else ())
        inputs = net.inputs(batch[OBS], batch[STATE])
        next_inputs = net.inputs(batch[NEXT, *OBS], batch[NEXT, STATE])
        h = net.agent.unroll(inputs, is_init, *prev[:1])
        same = ~is_init[:, 1:] & (next_inputs[:, :-1] == inputs[:, 1:]).flatten(2).all(-1)
        if prev:
            same &= (prev[1][:, :-1] == prev[0][:, 1:]).flatten(2).all(-1)
        b, t = torch.cat([~same, same.new_ones(same.shape[0], 1)], 1).nonzero(as_tuple=True)
        step = net.agent.encode(next_inputs[b, t], h[b, t], *(p[b, t] for p in prev[1:]))
        h_next = torch.cat([h[:, 1:], h[:, -1:]], 1).index_put((b, t), step)
        return h, h_next

    def td_loss(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """1-step double-Q TD loss on ``Q_tot``; returns the loss and the tensors other losses
        reuse (online and target states, utilities, ``Q_tot``, the messenger's output
        ``aux``, a ``MessageOutput``)."""
        h, h_next = self.recurrent_states(self.net, batch)
        q, aux = self.net.utilities(h)
        chosen = q.gather(-1, batch[ACTION].unsqueeze(-1)).squeeze(-1)
        q_tot = self.net.mix(chosen, batch[STATE])
        with torch.no_grad():
            h_target, h_target_next = self.recurrent_states(self.target, batch)
            q_next = self.next_utilities(h_target_next, h_next, batch[NEXT, *MASK], h, q, aux)
            q_tot_next = self.target.mix(q_next, batch[NEXT, STATE])
            target = self.bootstrap(batch[NEXT, "reward"], batch[NEXT, "terminated"], q_tot_next)
        # padded steps do not exist: every stored step is a real transition
        loss = (q_tot - target).pow(2).mean()
        cache = {"h": h, "h_next": h_next, "h_target": h_target, "q": q, "q_tot": q_tot,
                 "aux": aux, "target": target}
        return loss, cache

    def online_next_utilities(self, h: torch.Tensor, h_next: torch.Tensor, q: torch.Tensor,
                              aux: MessageOutput | None = None) -> torch.Tensor:
        """Online utilities at the next states ``[B, T, n, A]`` (no graph). Where
        ``h_next[:, t]`` equals ``h[:, t + 1]`` (the episode goes on), they are ``q[:, t + 1]``
        already; one messenger and head pass runs on the other steps only. A messenger whose
        only draw is its context's dropout (``Communication.redraws``) reuses the chunk's
        undropped contexts (``aux``) the same way and draws the dropout afresh over every step
        before one head pass: the draws are not shared, and they are the very numbers a fresh
        pass would draw. Any other sampling messenger gets a fresh pass everywhere."""
        comm = getattr(self.net, "comm", None)
        if comm is None or comm.samples() and not (comm.redraws() and aux is not None):
            return self.net.utilities(h_next)[0]
        same = (h_next[:, :-1] == h[:, 1:]).flatten(2).all(-1)
        b, t = torch.cat([~same, same.new_ones(same.shape[0], 1)], 1).nonzero(as_tuple=True)

        def shifted(chunk: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            return torch.cat([chunk[:, 1:], chunk[:, -1:]], 1).index_put((b, t), fresh)

        if not comm.samples():
            return shifted(q.detach(), self.net.utilities(h_next[b, t])[0])
        ctx = shifted(aux.undropped_ctx.detach(), comm(h_next[b, t], draw=False)[0])
        return self.net.agent.q(h_next, comm.redraw(ctx))

    def next_utilities(self, h_target_next: torch.Tensor, h_online_next: torch.Tensor | None,
                       next_mask: torch.Tensor, h_online: torch.Tensor | None = None,
                       q_online: torch.Tensor | None = None,
                       aux: MessageOutput | None = None) -> torch.Tensor:
        """Target utilities of the bootstrap action ``[*B, n]``: the online argmax under
        ``double_q`` (when online next states are given), else the target's own argmax.
        With the chunk's online states, utilities and messenger output (``h_online``,
        ``q_online``, ``aux``), the next states' utilities reuse them
        (``online_next_utilities``)."""
        q_next_t, _ = self.target.utilities(h_target_next)
        if self.hparams.double_q and h_online_next is not None:
            q_on = (self.net.utilities(h_online_next)[0] if q_online is None
                    else self.online_next_utilities(h_online, h_online_next, q_online, aux))
            a_next = masked_argmax(q_on, next_mask)
        else:
            a_next = masked_argmax(q_next_t, next_mask)
        return q_next_t.gather(-1, a_next.unsqueeze(-1)).squeeze(-1)

    def bootstrap(self, reward: torch.Tensor, terminated: torch.Tensor,
                  q_tot_next: torch.Tensor) -> torch.Tensor:
        """``r + gamma (1 - terminated) Q_tot^-(s', a')``; ``terminated`` may be a probability."""
        not_term = 1.0 - terminated.to(q_tot_next.dtype)
        return reward + self.hparams.gamma * not_term * q_tot_next

    # -- optimisation -------------------------------------------------------------------
    def configure_optimizers(self):
        # foreach (one multi-tensor kernel per step; torch's default only on CUDA): every
        # optimiser and gradient clip of the package, 1-2 CPU-ms per update (issue 9)
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, foreach=True)

    def step_optimizer(self, opt, loss: torch.Tensor, params) -> torch.Tensor:
        """zero_grad, backward, clip, step; returns the pre-clip gradient norm."""
        opt.zero_grad()
        self.manual_backward(loss)
        norm = torch.nn.utils.clip_grad_norm_(params, self.hparams.grad_clip, foreach=True)
        opt.step()
        return norm

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak averaging, or a hard copy every ``target_update_interval`` updates."""
        tau = self.hparams.target_tau
        for target, online in self.target_pairs():
            if tau > 0:
                polyak(target, online, tau)
            elif self.global_step % self.hparams.target_update_interval == 0:
                target.load_state_dict(online.state_dict())

    def target_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """``(target, online)`` networks that ``update_targets`` keeps in step."""
        return [(self.target, self.net)]

    def training_step(self, dataloader_iter) -> None:
        batch, _, _ = next(dataloader_iter)  # no prefetch: collection stays in step with updates
        loss, _ = self.td_loss(batch)
        grad_norm = self.step_optimizer(self.optimizers(), loss, self.net.parameters())
        self.update_targets()
        self.log_training({"loss/td": loss, "train/grad_norm": grad_norm})

    # -- logging, evaluation ------------------------------------------------------------
    def log_training(self, values: dict[str, torch.Tensor | float]) -> None:
        """Losses and the messages' bits per step (docs/method.md §8 names), every
        ``trainer.log_every_n_steps`` updates (the loggers write no more often than that);
        the collection statistics and throughput are callbacks' (``seqcomm.callbacks``).
        Every update, a non-finite loss or gradient norm stops the run (``check_finite``)."""
        self.check_finite(values)
        if self.global_step % self.trainer.log_every_n_steps:
            return
        self.log("comm/bits_per_step", self.net.comm.bits_per_step(), batch_size=1)
        for key, value in values.items():
            self.log(key, value, batch_size=1)

    def check_finite(self, values: dict[str, torch.Tensor | float]) -> None:
        """Raise ``NonFiniteError`` naming the update, the non-finite ``loss/*`` or
        ``train/grad_norm`` terms and the last good checkpoint (one sync per update). The
        run stops at this update: no later update, no checkpoint of these weights."""
        checked = {k: v for k, v in values.items()
                   if k.startswith("loss/") or k == "train/grad_norm"}
        tensors = [torch.as_tensor(v).detach().float().sum() for v in checked.values()]
        if not tensors:
            return
        finite = torch.stack([t.to(tensors[0].device) for t in tensors]).isfinite()
        if bool(finite.all()):
            return
        bad = [k for k, ok in zip(checked, finite.tolist(), strict=True) if not ok]
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "")
        raise NonFiniteError(
            f"non-finite {', '.join(bad)} at update {self.global_step}; the run stopped. Last "
            f"good checkpoint: {ckpt or 'none saved yet'}; resume from it with --ckpt_path "
            "and a lower --model.init_args.lr or grad_clip")

    @torch.no_grad()
    def evaluate(self, n_episodes: int) -> dict[str, float]:
        """Greedy return and task metrics on the evaluation copies, in eval mode (no
        sampled labels), whatever mode the caller left the module in (e.g. after ``fit``)."""
        data = self.trainer.datamodule
        mode, home = self.training, self.device
        self.policy.greedy = True
        self.eval()
        self.to(data.eval_env.device)  # after fit, Lightning has moved the module to the CPU
        try:
            result = evaluate_policy(data.eval_env, self.policy, n_episodes)
        finally:
            self.policy.greedy = False
            self.train(mode)
            self.to(home)
        return {metric_name(k): v for k, v in result.items()}

    def validation_step(self, batch, batch_idx: int) -> None:
        for key, value in self.evaluate(self.trainer.datamodule.eval_episodes).items():
            self.log(f"eval/{key}", value, prog_bar=key == "return", batch_size=1)

    test_step = validation_step


@torch.no_grad()
def polyak(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau online``, every parameter in one multi-tensor op."""
    targets, onlines = list(target.parameters()), list(online.parameters())
    if len(targets) != len(onlines):
        raise ValueError(f"polyak: {len(targets)} target parameters, {len(onlines)} online")
    torch._foreach_lerp_(targets, onlines, tau)

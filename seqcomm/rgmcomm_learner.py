"""RGMComm on the QMIX backbone (RGMComm section 4.2, Algorithms 1-2; docs/method.md §5).

QMIX trains the agents by TD; a critic ``Q(o, a)`` on joint observations and actions is
regressed on the same TD targets; the label function of ``seqcomm.comm.rgmcomm.RGMComm`` is
trained only by the clustering loss of Eq. 13 on the Eq. 5 vectors of a replay sample
(``seqcomm.comm.q_vectors``). Two schedules:

- ``online`` (the paper's Algorithm 2): labels are delivered from the start and re-clustered
  every ``cluster_every`` updates while the policy trains (the label function warm-starts
  from its previous parameters, so labels keep their identity between re-clusterings), to
  the end or, with ``cluster_until``, until that share of the budget (the labels then stay).
- ``staged`` (the official code's stages 1-3): the policy and critic train with the empty
  message until ``stage_fraction`` of the run's env steps while the labels are clustered,
  undelivered, every ``cluster_every`` updates (the official stage 2 iterates its clustering
  over collected vectors); then the labels are frozen: the label function and the agents'
  recurrent encoder (which it reads) stop learning. With ``stage_restart`` (default) the
  receivers then start over, as the official stage 3 trains new actors beside the loaded
  message functions: utility head, label embeddings and mixer re-initialised, epsilon
  annealed again from ``eps_start`` (maze: docs/results.md section 11).
"""

from __future__ import annotations

import copy
import math
from typing import Literal, Protocol, get_args

import torch
from scipy.optimize import linear_sum_assignment
from tensordict import TensorDictBase
from torch.nn import functional as F

from seqcomm.comm.label_map import label_table, write_label_map
from seqcomm.comm.q_vectors import (
    QVectors,
    eq5_vectors,
    group_counts,
    group_representatives,
    local_group_ids,
    receiver_conditional,
)
from seqcomm.comm.return_gap import ReturnGapObjective
from seqcomm.comm.rgmcomm import (
    Eq13Objective,
    LabelHeads,
    RGMComm,
    average_cosine_distance,
    return_gap_bound,
)
from seqcomm.dfl.critic import CriticFactory, TeamCritic
from seqcomm.dfl.label_lookahead import pool_best_actions, sender_group_ids
from seqcomm.dfl.value_aware import action_spread, masked_log_softmax
from seqcomm.distributed import average_across_ranks, broadcast_module
from seqcomm.envs.base import ACTION, MASK, OBS, STATE
from seqcomm.learner import NEXT, QLearner, polyak

Schedule = Literal["online", "staged"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
CriticTarget = Literal["policy", "optimal"]
CRITIC_TARGETS: tuple[str, ...] = get_args(CriticTarget)
InformationGiven = Literal["nothing", "receivers"]
INFORMATION_GIVEN: tuple[str, ...] = get_args(InformationGiven)
Activation = Literal["product", "weighted"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
Objective = Literal["eq13", "return_gap"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
MAX_JOINT_ACTIONS = 4096  # critic_target optimal scores every joint action of a next state


class ClusteringObjective(Protocol):
    """What ``cluster_labels`` trains a label head on (``Eq13Objective``,
    ``ReturnGapObjective``): ``loss`` of label distributions ``[n, G, M]`` per sender ``[n]``,
    a local search ``refine`` of hard labels ``[n, G]``, and the inputs' ``weight [n, G]``."""

    weight: torch.Tensor

    def loss(self, probs: torch.Tensor) -> torch.Tensor: ...

    def refine(self, labels: torch.Tensor, n_labels: int) -> torch.Tensor: ...


class RGMCommLearner(QLearner):
    """QMIX + RGMComm labels (``comm`` must be ``seqcomm.comm.rgmcomm.RGMComm``).

    Takes ``QLearner``'s arguments too.

    Args:
        schedule: ``online`` or ``staged`` (see the module docstring).
        cluster_every: updates between re-clusterings (``staged``: until the stage).
        cluster_start: first update that clusters.
        stage_fraction: share of the env-step budget trained before clustering (``staged``).
        stage_restart: at the stage, re-initialise the receivers (utility head, label
            embeddings, mixer; online and target) and restart epsilon's anneal (``staged``).
        cluster_until: ``online``: the share of the env-step budget after which the labels
            are no longer re-clustered; ``None``: to the end (the paper). Receivers that hear
            labels in flux read them on fewer seeds (docs/results.md section 62).
        settle: ``online``: the labels are no longer re-clustered once ``settle_rounds``
            clusterings in a row each changed at most this share of their sample's labels
            (``comm/label_change``, averaged over DDP ranks); ``None``: never. Unlike
            ``cluster_until`` it waits for labels still in flux at a fixed share of the run
            (a 5x5 maze's at 30%, docs/results.md section 63).
        settle_rounds: how many such clusterings in a row.
        cluster_steps: Adam steps of the label function per clustering.
        cluster_restarts: fresh initialisations tried beside the warm start per clustering
            (Eq. 13 has local minima, and a saturated label function cannot leave one).
        cluster_lr: their learning rate.
        cluster_samples: ``K1``, replay steps per clustering.
        top_pairs: ``K2``, receivers' (observation, action) pairs per Eq. 5 vector.
        pair_prior: pseudo-count of the marginal in ``d(o_-i | o_i)``.
        activation: ``product``: the paper's ``f`` of each Eq. 5 vector, ``f(Q d)``.
            ``weighted``: ``d f(Q)``, the activated values weighted by ``d(o_-i | o_i)``
            (``QVectors.activated``; docs/results.md section 60).
        objective: what the label function minimises. ``eq13``: the paper's clustering loss
            (its Eq. 13, a bound on the return gap; ``activation``, ``mi_weight`` and
            ``mi_given`` below). ``return_gap``: the value the labelling loses under the
            critic (``seqcomm.comm.return_gap``): receivers play their best response to each
            (observation, label) pool; no information term. Eq. 13's minimiser is not the
            best message on 15 of 40 random matrix tables (docs/results.md section 31).
        mi_weight: ``lambda`` of Eq. 13 (see ``clustering_loss``).
        mi_given: ``nothing``: the paper's information term ``I(o; m)``. ``receivers``:
            ``I(o; m | o_-i)``, the information the labels add to what the receivers observe
            (``label_information``; ``pair_prior`` pseudo-samples of the pooled marginal): a
            label that repeats what receivers see (the maze's step counter) earns nothing
            (docs/results.md section 19).
        refine: after the gradient steps, Hartigan's local search on the hard labels (the
            same Eq. 13, exact moves of one group of identical sender states at a time): soft
            labels stall at saddles, e.g. two clusters where four labels score lower.
        critic: the critic ``Q(o, a)`` on joint observations (``class_path`` of
            ``seqcomm.dfl.critic.TeamCritic`` with its ``hidden_dim``, ``normalize``,
            ``norm_rate``; the Eq. 5 vectors are scored through its MLP's first layer, so no
            other critic); the learner passes the joint observation's size as its state size.
        critic_lr: its Adam rate.
        critic_steps: the critic's regression steps per update: on the update's batch, then
            on fresh replay batches (``critic_target=optimal`` only: its targets need no team
            pass). The labels are only as good as its values (docs/results.md section 61).
        critic_tau: Polyak rate of the ``optimal`` critic's target network after each of its
            steps; ``None``: it moves with the team's target networks (``target_tau``). Each
            of ``Q*``'s bootstraps waits on the target, about ``1 / tau`` updates.
        critic_target: what the critic's values are of. ``policy``: the team's own policy
            (regressed on ``Q_tot``'s TD targets). ``optimal``: the ideal policy with full
            observability that Eq. 5 names, ``Q*`` (centralised Q-learning on joint
            observations, ``r + gamma max_a' Q_c^-(o', a')`` over every available joint
            action, with a Polyak target critic); a team that has settled without messages
            makes ``Q_policy``'s vectors blind to what a message could change
            (docs/results.md section 19). It scores every joint action (at most 4096; an
            update costs 19x QMIX's on hospital, docs/results.md section 63).
        receiver_weight: weight of ``receiver_loss``, the paper's actor trained against its
            centralised critic, on the QMIX backbone (0: TD alone trains the receivers).
        label_map: write ``labels.json`` / ``labels.png`` into the run directory at the end.
    """

    ddp_unused_parameters = True  # its critic trains by its own loss

    def __init__(
        self,
        *args,
        schedule: Schedule = "online",
        cluster_every: int = 50,
        cluster_start: int = 0,
        stage_fraction: float = 0.5,
        stage_restart: bool = True,
        cluster_until: float | None = None,
        settle: float | None = None,
        settle_rounds: int = 3,
        cluster_steps: int = 50,
        cluster_restarts: int = 8,
        cluster_lr: float = 1e-2,
        cluster_samples: int = 512,
        top_pairs: int = 16,
        pair_prior: float = 1.0,
        activation: Activation = "product",
        objective: Objective = "eq13",
        mi_weight: float = 1.0,
        mi_given: InformationGiven = "nothing",
        refine: bool = True,
        critic: CriticFactory = TeamCritic,
        critic_lr: float = 1e-3,
        critic_steps: int = 1,
        critic_tau: float | None = None,
        critic_target: CriticTarget = "policy",
        receiver_weight: float = 0.0,
        label_map: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.net.comm, RGMComm):
            raise ValueError("RGMCommLearner needs model.comm: seqcomm.comm.rgmcomm.RGMComm")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}; choose one of {SCHEDULES}")
        if cluster_until is not None and not (0 < cluster_until <= 1 and schedule == "online"):
            raise ValueError(f"cluster_until={cluster_until}: in (0, 1], with schedule=online")
        if settle is not None and not (0 <= settle < 1 and schedule == "online"):
            raise ValueError(f"settle={settle}: in [0, 1), with schedule=online")
        if settle_rounds < 1:
            raise ValueError(f"settle_rounds={settle_rounds}: at least 1")
        if min(cluster_every, cluster_steps, cluster_samples, top_pairs) < 1:
            raise ValueError("cluster_every, cluster_steps, cluster_samples, top_pairs >= 1")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {ACTIVATIONS}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; choose one of {OBJECTIVES}")
        if mi_given not in INFORMATION_GIVEN:
            raise ValueError(f"mi_given={mi_given!r}; choose one of {INFORMATION_GIVEN}")
        if critic_target not in CRITIC_TARGETS:
            raise ValueError(f"critic_target={critic_target!r}; choose one of {CRITIC_TARGETS}")
        if critic_steps < 1 or (critic_steps > 1 and critic_target != "optimal"):
            raise ValueError(f"critic_steps={critic_steps}: >= 1, and above 1 only with "
                             "critic_target=optimal")
        if critic_tau is not None and not (0 < critic_tau <= 1 and critic_target == "optimal"):
            raise ValueError(f"critic_tau={critic_tau}: in (0, 1], with critic_target=optimal")
        self.save_hyperparameters(ignore=["comm", "critic"])
        info = self.info
        self.critic = critic(info.n_agents * info.obs_dim, info.n_agents, info.n_actions)
        net = getattr(self.critic, "net", None)
        if not (isinstance(net, torch.nn.Sequential) and isinstance(net[0], torch.nn.Linear)):
            # eq5_vectors scores the Eq. 5 pairs through the MLP's first layer
            raise ValueError(f"RGMComm's critic must be the MLP critic "
                             f"(seqcomm.dfl.critic.TeamCritic), got {type(self.critic).__name__}")
        self.target_critic = None
        if critic_target == "optimal":
            joints = info.n_actions ** info.n_agents
            if joints > MAX_JOINT_ACTIONS:
                raise ValueError(
                    f"critic_target=optimal scores all {info.n_actions}^{info.n_agents} joint "
                    f"actions per next state, more than {MAX_JOINT_ACTIONS}; use "
                    "critic_target=policy")
            self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # staged: 1 once the labels are clustered and frozen (a buffer, so it resumes)
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))
        # staged: this rank's env steps when it clustered (where epsilon's anneal restarts)
        self.register_buffer("stage_frames", torch.zeros((), dtype=torch.long))
        # settle: clusterings in a row that changed at most `settle` of the labels
        self.register_buffer("calm_rounds", torch.zeros((), dtype=torch.long))
        self.set_delivery(schedule == "online")
        self.cluster_logs: dict[str, float] = {}

    # -- schedule -----------------------------------------------------------------------
    def set_delivery(self, on: bool) -> None:
        """Deliver labels (or the empty message) in the online and target networks."""
        for net in (self.net, self.target):
            net.comm.active.fill_(on)

    def freeze_labels(self) -> None:
        """Staged schedule: the label function stops (and the recurrent encoder it reads,
        ``into="head"``)."""
        comm = self.net.comm
        reads = self.net.agent.encoder if comm.into == "head" else ()
        for module in (comm.label_head, *reads):
            module.requires_grad_(False)

    def restart_receivers(self) -> None:
        """Staged ``stage_restart``: new receivers for the frozen labels. The utility head,
        the label embeddings and the mixer are re-initialised (the target copies them), the
        value optimiser's moments are dropped and epsilon anneals again from this frame. With
        ``into="input"`` the labels enter the recurrent input: the whole agent restarts."""
        net = self.net
        agent = net.agent.head if net.comm.into == "head" else net.agent
        for module in (*agent.modules(), *net.mixer.modules()):
            if isinstance(module, torch.nn.Linear | torch.nn.GRUCell):
                module.reset_parameters()
        net.comm.reset_embedding()
        for module in (agent, net.mixer, net.comm):
            broadcast_module(module)  # every DDP rank starts from rank 0's draw
        self.target.load_state_dict(net.state_dict())
        self.optimizers()[0].optimizer.state.clear()
        self.stage_frames.fill_(self.trainer.datamodule.frames)
        self.policy.anneal_start = int(self.stage_frames)

    def due(self) -> bool:
        """Cluster now? Every ``cluster_every`` updates from ``cluster_start``; ``staged``
        also at the stage, and never after it; ``online`` not after ``cluster_until`` nor once
        the labels have settled."""
        hp, data = self.hparams, self.trainer.datamodule
        if hp.schedule == "staged" and bool(self.clustered):
            return False
        if hp.settle is not None and int(self.calm_rounds) >= hp.settle_rounds:
            return False
        if hp.cluster_until is not None and data.frames >= hp.cluster_until * data.total_frames:
            return False
        step = self.global_step - hp.cluster_start
        return (step >= 0 and step % hp.cluster_every == 0) or self.stage_reached()

    def count_calm(self, changed: float) -> None:
        """``settle``: one more calm clustering in a row, or none (one count on all ranks)."""
        if self.hparams.settle is None:
            return
        changed = average_across_ranks(torch.tensor(changed, dtype=torch.float64,
                                                   device=self.device)).item()
        calm = changed <= self.hparams.settle
        self.calm_rounds.fill_(int(self.calm_rounds) + 1 if calm else 0)
        self.cluster_logs["comm/calm_rounds"] = float(self.calm_rounds)

    def stage_reached(self) -> bool:
        """``staged``: this update freezes the labels (``stage_fraction`` of the budget)."""
        hp, data = self.hparams, self.trainer.datamodule
        return (hp.schedule == "staged" and not bool(self.clustered)
                and data.frames >= hp.stage_fraction * data.total_frames)

    # -- clustering ---------------------------------------------------------------------
    @torch.no_grad()
    def cluster_sample(self, buffer=None) -> TensorDictBase:
        """``K1`` replay steps (whole chunks sampled from ``buffer``, default the run's,
        flattened, cut), with what the label functions read (``RGMComm.sender_inputs``) under
        ``"sender"``."""
        buffer = self.trainer.datamodule.buffer if buffer is None else buffer
        K1 = self.hparams.cluster_samples
        # on the module's device: after fit Lightning has moved the module to the CPU
        chunks = buffer.sample(max(1, math.ceil(K1 / self.info.episode_limit))).to(self.device)
        comm = self.net.comm
        h = (self.net.agent.unroll(self.net.inputs(chunks[OBS], chunks[STATE]),
                                   chunks["is_init"].squeeze(-1)) if comm.into == "head" else None)
        sender = comm.sender_inputs(h, chunks[OBS])
        flat = chunks.select(OBS, ACTION, MASK).reshape(-1)
        flat.set("sender", sender.reshape(-1, *sender.shape[2:]))
        return flat[:K1]

    @torch.no_grad()
    def cluster_vectors(self, sample: TensorDictBase) -> tuple[QVectors, torch.Tensor]:
        """The Eq. 5 vectors of a ``cluster_sample`` and their activation ``[n, N, D]``."""
        hp = self.hparams
        qv = eq5_vectors(self.critic, sample[OBS], sample[ACTION], sample[MASK],
                         hp.top_pairs, hp.pair_prior)
        return qv, qv.activated(hp.activation)

    def cluster(self) -> dict[str, float]:
        """Eq. 5 vectors of a replay sample, then ``cluster_steps`` Adam steps of the label
        functions on the clustering objective (all senders at once; ``objective_of``),
        warm-started and from ``cluster_restarts`` fresh initialisations; per sender the
        lowest loss of the hard labels wins, its labels renamed to agree most with the labels
        in use. Returns the return-gap quantities and ``comm/label_change``, the share of the
        sample whose label this clustering changed."""
        hp = self.hparams
        sample = self.cluster_sample()
        qv, x = self.cluster_vectors(sample)
        objective, inputs = self.objective_of(sample, qv, x)
        head = self.net.comm.label_head
        opt = self.optimizers()[2].optimizer  # raw: Lightning counts one step per update
        with torch.no_grad():
            before = head(inputs).argmax(-1)  # [G, n]
        best = cluster_labels(head, opt, inputs, objective, hp.cluster_steps, hp.cluster_lr,
                              hp.cluster_restarts, hp.refine)
        with torch.no_grad():
            labels = head(sample["sender"]).argmax(-1)
            changed = (objective.weight * (head(inputs).argmax(-1) != before).T).sum(-1)
        return {**self.gap_quantities(qv.values, x, labels.T, best.mean().item()),
                "comm/label_change": changed.mean().item()}

    @torch.no_grad()
    def objective_of(self, sample: TensorDictBase, qv: QVectors,
                     x: torch.Tensor) -> tuple[ClusteringObjective, torch.Tensor]:
        """The ``objective`` over the distinct inputs of the label functions in a
        ``cluster_sample`` (equal inputs have equal labels and equal Eq. 5 vectors), weighted
        by their counts, and those inputs ``[G, n, .]`` (``G`` the most distinct of any
        sender; rows past a sender's own count repeat its first input with weight 0)."""
        hp = self.hparams
        sender = sample["sender"].detach()  # [N, n, .]: what the label functions read
        group = local_group_ids(sender.transpose(0, 1))  # [n, N]
        reps = group_representatives(group)  # [n, G]
        weight = group_counts(group, reps.shape[-1]) / group.shape[-1]
        inputs = sender[reps.T, torch.arange(reps.shape[0], device=reps.device)]  # [G, n, .]
        if hp.objective == "return_gap":
            values, pair_group = qv.pair_values()
            values = values.gather(1, reps.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
            return ReturnGapObjective(values, weight, pair_group), inputs
        given = (receiver_conditional(group, qv.receiver_group, hp.pair_prior)
                 if hp.mi_given == "receivers" else None)
        x = x.gather(1, reps.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return Eq13Objective(x, weight, sender_group_ids(inputs), hp.mi_weight, given), inputs

    @torch.no_grad()
    def gap_quantities(self, values: torch.Tensor, activated: torch.Tensor,
                       labels: torch.Tensor, loss: float) -> dict[str, float]:
        """``epsilon`` (Eq. 6, on the Eq. 5 vectors; also on the activated ones), ``Q_max``
        (the largest vector norm) and Theorem 4.3's bound, averaged over senders."""
        onehot = F.one_hot(labels, self.net.comm.n_labels).to(values.dtype)
        eps = torch.vmap(average_cosine_distance)(values, onehot).mean().item()
        eps_act = torch.vmap(average_cosine_distance)(activated, onehot).mean().item()
        q_max = values.norm(dim=-1).max().item()
        return {"loss/cluster": loss, "comm/epsilon": eps, "comm/epsilon_activated": eps_act,
                "comm/q_max": q_max,
                "comm/return_gap_bound": return_gap_bound(eps, self.info.n_agents, q_max)}

    # -- optimisation -------------------------------------------------------------------
    def value_parameters(self) -> list[torch.nn.Parameter]:
        label = {id(p) for p in self.net.comm.label_head.parameters()}
        return [p for p in self.net.parameters() if id(p) not in label]

    def configure_optimizers(self):
        hp = self.hparams
        return [torch.optim.Adam(self.value_parameters(), lr=hp.lr, foreach=True),
                torch.optim.Adam(self.critic.parameters(), lr=hp.critic_lr, foreach=True),
                torch.optim.Adam(self.net.comm.label_head.parameters(), lr=hp.cluster_lr,
                                 foreach=True)]

    def training_step(self, dataloader_iter) -> None:
        batch, _, _ = next(dataloader_iter)
        opt, critic_opt, _ = self.optimizers()
        if self.due():
            self.cluster_logs = self.cluster()
            # each DDP rank clustered its own replay sample: all take rank 0's labels
            broadcast_module(self.net.comm.label_head)
            self.count_calm(self.cluster_logs["comm/label_change"])
            if self.stage_reached():
                self.clustered.fill_(True)
                self.freeze_labels()
                self.set_delivery(True)
                if self.hparams.stage_restart:
                    self.restart_receivers()
        td, cache = self.td_loss(batch)
        receiver = self.receiver_loss(batch, cache)
        loss = td + self.hparams.receiver_weight * receiver
        grad_norm = self.step_optimizer(opt, loss, self.value_parameters())
        critic_loss = self.critic_update(critic_opt, batch, cache)
        self.update_targets()
        self.log_training({"loss/td": td, "loss/receiver": receiver, "loss/critic": critic_loss,
                           "train/grad_norm": grad_norm, **self.cluster_logs})

    def critic_update(self, opt, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """``critic_steps`` regression steps of the critic (``critic_regression_target``);
        returns the first step's loss."""
        hp = self.hparams
        for step in range(hp.critic_steps):
            if step:
                batch = self.trainer.datamodule.buffer.sample().to(self.device)
            joint = F.one_hot(batch[ACTION], self.info.n_actions).to(cache["target"].dtype)
            loss = self.critic.loss(batch[OBS].flatten(-2), joint,
                                    self.critic_regression_target(batch, cache))
            opt.zero_grad()
            self.manual_backward(loss)
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), hp.grad_clip, foreach=True)
            opt.optimizer.step()  # raw: Lightning counts one step per update
            if hp.critic_tau is not None:
                polyak(self.target_critic, self.critic, hp.critic_tau)
            if step == 0:
                first = loss
        return first

    @torch.no_grad()
    def critic_regression_target(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """``critic_target``: ``Q_tot``'s TD target (``policy``) or ``r + gamma (1 - term)
        max_a' Q_c^-(o', a')`` over the available joint actions (``optimal``)."""
        if self.target_critic is None:
            return cache["target"]
        best = self.target_critic.best_joint_score(batch[NEXT, *OBS].flatten(-2),
                                                   batch[NEXT, *MASK])
        return self.bootstrap(batch[NEXT, "reward"], batch[NEXT, "terminated"],
                              self.critic.unscale(best))

    def target_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        pairs = super().target_pairs()
        if self.target_critic is None or self.hparams.critic_tau is not None:
            return pairs  # a critic_tau target moves in critic_update
        return [*pairs, (self.target_critic, self.critic)]

    def receiver_loss(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """Each receiver's cross-entropy of ``softmax(Q_j)`` against the best action of its
        pool (the batch's samples with its observation and the labels it heard; the mean of
        the critic's values when j switches action), weighted by those values' spread.

        RGMComm's receivers are actors trained against a centralised critic: they learn the
        action that is best on average over what they cannot see. QMIX's TD loss fits each
        state's ``Q_tot`` through a state-dependent mixer and can rank another action first
        for a (observation, label) pool (docs/results.md section 9), so on this backbone the
        actor's target is given explicitly; the spread puts it in the TD loss's reward units.
        """
        if self.hparams.receiver_weight == 0:
            return cache["q"].new_zeros(())
        with torch.no_grad():
            obs, mask = batch[OBS].flatten(0, -3), batch[MASK].flatten(0, -3)  # [N, n, .]
            values = self.critic.switch_values(obs.flatten(-2), batch[ACTION].flatten(0, -2))
            N, n = obs.shape[:2]
            eye = torch.eye(n, dtype=obs.dtype, device=obs.device)
            labels = self.heard_labels(batch, cache).flatten(0, -3)
            # [N, j, i, M]: what j heard from i (nothing from itself)
            heard = labels.unsqueeze(1).expand(N, n, n, -1) * (1 - eye).view(1, n, n, 1)
            ids = eye.expand(N, n, n)
            keys = torch.cat([ids, obs, heard.flatten(-2)], -1).flatten(0, 1)
            best, decided = pool_best_actions(values.flatten(0, 1), keys, mask.flatten(0, 1))
            spread = action_spread(values, mask)
        logq = masked_log_softmax(cache["q"].flatten(0, -3), 1.0, mask).flatten(0, 1)
        ce = -logq.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        return spread * (ce * decided).mean()

    def heard_labels(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """The labels the batch's receivers heard ``[B, T, n, M]`` (zero while undelivered)."""
        comm = self.net.comm
        labels = cache["aux"].labels if comm.into == "head" else comm.heard(batch[OBS])[1].labels
        return labels * comm.active.to(labels.dtype)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.hparams.schedule == "staged":
            self.set_delivery(bool(self.clustered))
            if bool(self.clustered):  # a resumed staged run: requires_grad is not saved
                self.freeze_labels()
                if self.hparams.stage_restart:
                    self.policy.anneal_start = int(self.stage_frames)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints from before ``stage_frames`` existed resume with 0 there."""
        checkpoint["state_dict"].setdefault("stage_frames", torch.zeros((), dtype=torch.long))

    def on_fit_end(self) -> None:
        """The message-label map of the final label function, in the run directory."""
        if not self.hparams.label_map:
            return
        run_dir = self.trainer.log_dir or self.trainer.default_root_dir  # all ranks: a broadcast
        if not self.trainer.is_global_zero or len(self.trainer.datamodule.buffer) == 0:
            return
        sample = self.cluster_sample()
        with torch.no_grad():
            labels = self.net.comm.label_logits(sample["sender"]).argmax(-1)  # [N, n]
        tables = label_table(sample[OBS].transpose(0, 1), labels.T)
        write_label_map(run_dir, tables, self.net.comm.n_labels)


def fit_labels(head: LabelHeads, opt: torch.optim.Optimizer, h: torch.Tensor,
               objective: ClusteringObjective, steps: int) -> torch.Tensor:
    """``steps`` Adam steps of ``objective.loss`` on ``head`` (inputs ``h [N, n, H]``);
    returns the loss of its hard labels per sender ``[n]``."""
    with torch.enable_grad():
        for _ in range(steps):
            loss = objective.loss(torch.softmax(head(h), -1).transpose(0, 1))
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
    with torch.no_grad():
        return objective.loss(hard_labels(head, h).transpose(0, 1))


def hard_labels(head: LabelHeads, h: torch.Tensor) -> torch.Tensor:
    """``[N, n, M]`` one-hots of the head's labels of ``h``."""
    return F.one_hot(head(h).argmax(-1), head.b2.shape[-1]).to(h.dtype)


def cluster_labels(head: LabelHeads, opt: torch.optim.Optimizer, h: torch.Tensor,
                   objective: ClusteringObjective, steps: int, lr: float, restarts: int,
                   refine: bool = False) -> torch.Tensor:
    """Fit ``head`` on ``objective`` (``Eq13Objective`` or ``ReturnGapObjective`` over the
    inputs ``h [N, n, .]``) warm-started and from ``restarts`` fresh initialisations; per
    sender the lowest hard-label loss wins (Eq. 13 has local minima, e.g. a 3-1 split of the
    matrix game's four observations); with ``refine``, the objective's local search on the
    hard labels follows (``refine_head``); labels are then renamed to agree with those in
    use (inputs weighted by ``objective.weight``). Returns the winning losses ``[n]``."""
    with torch.no_grad():
        old = head(h).argmax(-1)
    best = fit_labels(head, opt, h, objective, steps)
    for _ in range(restarts):
        fresh = copy.deepcopy(head)
        fresh.reset_parameters()
        loss = fit_labels(fresh, torch.optim.Adam(fresh.parameters(), lr), h, objective, steps)
        better = loss < best - 1e-6
        if better.any():
            head.take(fresh, better)
            opt.state.clear()
            best = torch.where(better, loss, best)
    if refine:
        best = refine_head(head, opt, h, objective, best, steps)
    with torch.no_grad():
        head.permute_labels(label_renaming(old, head(h).argmax(-1), head.b2.shape[-1],
                                           objective.weight.T))
    return best


def refine_head(head: LabelHeads, opt: torch.optim.Optimizer, h: torch.Tensor,
                objective: ClusteringObjective, best: torch.Tensor, steps: int) -> torch.Tensor:
    """The objective's local search from the head's hard labels (``refine``), then ``steps``
    cross-entropy steps of the head towards the refined labels (inputs weighted by
    ``objective.weight``); a sender keeps them only where its hard-label loss falls."""
    n_labels = head.b2.shape[-1]
    with torch.no_grad():
        target = objective.refine(head(h).argmax(-1).T, n_labels)
    weight = objective.weight.T.flatten()
    trial = copy.deepcopy(head)
    trial_opt = torch.optim.Adam(trial.parameters(), opt.param_groups[0]["lr"])
    with torch.enable_grad():
        for _ in range(steps):
            loss = (F.cross_entropy(trial(h).flatten(0, 1), target.T.flatten(), reduction="none")
                    * weight).sum()
            trial_opt.zero_grad()
            loss.backward()
            trial_opt.step()
    with torch.no_grad():
        loss = objective.loss(hard_labels(trial, h).transpose(0, 1))
    better = loss < best - 1e-6
    if better.any():
        head.take(trial, better)
        opt.state.clear()
    return torch.where(better, loss, best)


def label_renaming(old: torch.Tensor, new: torch.Tensor, n_labels: int,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """``perm [n, M]`` for ``LabelHeads.permute_labels``: per sender, the renaming of the
    labels ``new [N, n]`` that agrees most with ``old [N, n]`` (samples weighted by
    ``weight [N, n]``, default 1), so labels keep their meaning for the receivers across
    re-clusterings."""
    n = old.shape[-1]
    weight = torch.ones(old.shape) if weight is None else weight
    agree = torch.zeros(n, n_labels, n_labels).index_put_(
        (torch.arange(n).expand_as(old).flatten(), old.flatten().cpu(), new.flatten().cpu()),
        weight.flatten().cpu().float(), accumulate=True)
    perm = torch.empty(n, n_labels, dtype=torch.long)
    for i in range(n):  # once per clustering, on M x M tables
        rows, cols = linear_sum_assignment(agree[i].numpy(), maximize=True)
        perm[i, torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm.to(old.device)

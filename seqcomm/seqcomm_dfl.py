"""SeqComm-DFL: value-aware sequential communication with a decision-focused world model
(docs/method.md §2-4), as a configuration of the QMIX learner.

Parameter split. ``w`` = the value parameters (agents, messenger, mixer: ``self.net``);
``theta`` = the world model. The message losses (``L_VA``, ``L_inf``, the guidance-potential
regression) do not depend on ``theta``, so they join ``w``'s objective; docs/method.md §3.2
lists them in the outer update, where they would act on the same message parameters.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from tensordict import TensorDictBase
from torch.func import functional_call

from seqcomm.comm.base import MessageOutput
from seqcomm.comm.messages import entropy
from seqcomm.comm.ordering import guidance_potential, order_entropy
from seqcomm.dfl.critic import CriticFactory, TeamCritic
from seqcomm.dfl.gradient_projection import add_gradients, project_conflicting
from seqcomm.dfl.implicit_gradient import ImplicitSolver, ImplicitSolverFactory, unrolled_inner
from seqcomm.dfl.label_lookahead import lookahead_label_scores, sender_group_ids
from seqcomm.dfl.receiver_state import ReceiverStateHead
from seqcomm.dfl.value_aware import (
    ReconstructionHead,
    action_spread,
    awareness_loss,
    blended_gain,
    decision_value,
    influence_loss,
    masked_log_softmax,
    mc_gain,
    normalised_advantage,
    value_aware_loss,
    warmup_beta,
)
from seqcomm.dfl.world_model import WorldModel, WorldModelFactory
from seqcomm.distributed import average_gradients
from seqcomm.envs.base import ACTION, MASK, OBS, STATE
from seqcomm.learner import NEXT, QLearner
from seqcomm.team_q import masked_argmax

WorldModelGradient = Literal["implicit", "unrolled", "mle", "none"]
Evaluator = Literal["critic", "target"]
LabelScoring = Literal["current", "lookahead"]
ImplicitParams = Literal["head", "all"]
VaReceiver = Literal["frozen", "online", "soft"]
MessageGradient = Literal["sum", "project"]
VaMessages = Literal["all", "refined"]
ImaginedActions = Literal["taken", "greedy", "uniform"]
TD_LOSSES = ("td", "model_td")
GRADIENTS: tuple[str, ...] = get_args(WorldModelGradient)
EVALUATORS: tuple[str, ...] = get_args(Evaluator)
LABEL_SCORINGS: tuple[str, ...] = get_args(LabelScoring)
IMPLICIT_PARAMS: tuple[str, ...] = get_args(ImplicitParams)
VA_RECEIVERS: tuple[str, ...] = get_args(VaReceiver)
MESSAGE_GRADIENTS: tuple[str, ...] = get_args(MessageGradient)
VA_MESSAGES: tuple[str, ...] = get_args(VaMessages)
IMAGINED_ACTIONS: tuple[str, ...] = get_args(ImaginedActions)
MESSAGE_LOSSES: tuple[str, ...] = ("va", "inf", "aware", "gp", "recon", "state", "mi", "entropy",
                                   "critic")


class Counterfactual(NamedTuple):
    """One update's counterfactual pass: row r of ``ctx``/``q`` ``[k + 1, *B, n, .]`` masks
    sender ``senders[r]`` (``None``: all n), the last row delivers all; ``receivers`` are the
    scored ones (``None``: all). The slices are taken once and shared by the losses."""

    senders: torch.Tensor | None
    receivers: torch.Tensor | None
    ctx: torch.Tensor
    q: torch.Tensor
    q_masked: torch.Tensor  # q[:k]
    q_all: torch.Tensor  # q[k]
    ctx_all: torch.Tensor  # ctx[k]


def label_information(probs: torch.Tensor) -> torch.Tensor:
    """``H(mean_b p) - mean_b H(p)`` per sender for label distributions ``[N, n, |M|]``."""
    return entropy(probs.mean(0)) - entropy(probs).mean(0)


class SeqCommDFL(QLearner):
    """QMIX + sequential messages + value-aware losses + an OMD-trained world model.

    ``comm`` should be a ``SeqCommMessenger``; ``QLearner``'s arguments apply too.

    Args:
        world_model_gradient: ``implicit`` (implicit differentiation, OMD), ``unrolled``
            (backprop through ``k_inner`` SGD steps), ``mle`` (prediction loss) or ``none``
            (model-free).
        world_model: the world model (``class_path`` of ``seqcomm.dfl.world_model.WorldModel``
            with its ``hidden_dim``, ``pooling``); the learner passes the task's sizes and
            the message size. Unused when ``world_model_gradient`` is ``none``.
        implicit: the implicit gradient's linear solver (``class_path`` of
            ``seqcomm.dfl.implicit_gradient.ImplicitSolver`` with its ``solver``, ``iters``,
            ``curvature``, ``damping``, ``neumann_lr``); read when ``world_model_gradient``
            is ``implicit``.
        k_inner: inner SGD steps of the ``unrolled`` ablation.
        inner_lr: their step size.
        model_lr: Adam rate ``eta`` of the world model.
        real_td_weight: weight of the real-data TD loss ``L_true`` in the value parameters'
            step (0 = pure OMD: the values learn only from imagined transitions). It is an
            outer term: the implicit gradient's Hessian is that of the inner objective
            ``L_model + lambda_aware L_aware`` alone (docs/method.md §3.2).
        model_td_weight: weight of the imagined-transition TD loss ``L_model`` in the value
            parameters' step.
        imagined_actions: the joint actions the world model imagines from at the replay's
            ``(s, o, M)``: ``taken`` (the replay's, DESIGN.md §3: the real target already
            exists there, so the imagined one adds only the model's error), ``greedy`` (the
            online greedy joint action) or ``uniform`` (each agent's uniform draw among its
            available actions): joint actions the replay may not hold. Their bootstrap uses
            the real next step's action masks.
        mle_weight: weight of the prediction loss added to the world model's hypergradient
            (``implicit``, ``unrolled``): an anchor that keeps imagined states in the range
            the value networks were trained on (without it ``L_model`` diverged on hospital).
        target_radius: when > 0, a trust region on the imagined targets: each is replaced by
            ``y + r tanh((y_img - y) / r)`` around the real target ``y`` of the same
            ``(s, a)``, with ``r = target_radius x`` the RMS of the real TD residual
            (detached). The values then never chase an imagined target further than the
            real data's own noise, and the hypergradient vanishes where the model strays
            (scale-free: the same setting for 3 and 4 hospital specialists). 0 = off.
        hypergradient_ratio: when > 0, the hypergradient's norm is capped at this fraction
            of the (weighted) anchor's instead of at ``grad_clip``, so the decision-focused
            term cannot outgrow the prediction loss as the model fits (0 = the clip).
        hypergradient_per_tensor: apply ``hypergradient_ratio`` to each world-model tensor
            against the same tensor's anchor, not to the global norms: on 3m and 4m sight
            the hypergradient is about a tenth of the anchor in most tensors but 0.6-10x it
            in the next-state and next-observation heads, the ones the imagined targets read
            (docs/results.md, 55). Needs ``hypergradient_ratio`` > 0.
        implicit_params: the inner parameters ``w`` the implicit/unrolled gradient
            differentiates through: ``head`` (the agents' utility head and the mixer, the
            last-layer approximation: no Hessian-vector product through the GRU unroll) or
            ``all`` (every value parameter: agents, messenger, mixer).
        value_aware: ``true`` = L_VA + L_inf; ``false`` = messages trained to reconstruct
            the sender's observation (the intermediate objective).
        lambda_va: weight of ``L_VA``.
        lambda_inf: weight of ``L_inf``.
        lambda_aware: weight of ``L_aware``.
        lambda_gp: weight of the guidance-potential regression of the ordering head; 0 skips
            it (its greedy passes, critic calls and, unless the order sorts by it, the head's
            forward pass). Under ``ordering: fixed`` or
            ``random`` nothing reads the head it trains, so 0 only saves time there (but for
            the global gradient-norm clip, which no longer counts the head's gradient); under
            ``prosocial`` the order then follows the untrained head.
        lambda_recon: weight of the reconstruction loss (``value_aware: false``).
        lambda_state: weight of the receivers' state loss (``ReceiverStateHead``: the global
            state decoded from each receiver's detached state and its context, so that messages
            carry what the receiver lacks; 0 = off).
        lambda_mi: weight of the label mutual-information bonus ``H(E[p]) - E[H(p)]`` of
            discrete messages (RGMComm's L_MI): keeps every label in use, against the
            collapse of straight-through labels onto one that acts as a constant bias.
        lambda_entropy: weight of the label-entropy bonus ``E[H(p)]`` of discrete senders:
            the sender becomes a Boltzmann policy over its labels' gains (temperature
            ``lambda_entropy / lambda_va``), stochastic until a label's gain differs across
            its observations, instead of collapsing onto one label before the critic knows.
        lambda_entropy_final: when set, ``lambda_entropy`` decays geometrically to this value
            over the first ``entropy_anneal_fraction`` of the run's env steps (then stays),
            so the sender's temperature falls as the critic's scores firm up and late label
            gains far below the values' spread still decide (``None``: constant).
        entropy_anneal_fraction: that fraction.
        label_scoring: how a discrete sender's labels are scored in the one-way setting
            (two agents, no base round): ``current`` (each label by the value of the
            receiver's current decision under it: a best-response step) or ``lookahead``
            (each observation's label by the team value after the receivers best-respond to
            the new pools: ``seqcomm.dfl.label_lookahead``, ``lookahead_gain``: there the
            receiver regresses on its pools' values instead of the current-decision gain).
        aware_margin: ``eps_margin`` of the awareness hinge.
        influence_tau: temperature of ``pi_j = softmax(Q_j / tau)``.
        va_evaluator: what scores a receiver's decision (and the guidance potential).
            ``critic``: the full-information team critic ``Q_c(s, a)`` (per receiver: its
            value when j switches action, the others keeping theirs); ``target``: the target
            network on target states with every target message delivered (per receiver: its
            target utilities; the joint value: the target ``Q_tot``).
        critic: the full-information team critic (``class_path`` of
            ``seqcomm.dfl.critic.TeamCritic`` with its ``hidden_dim``, ``normalize``,
            ``norm_rate``); the learner passes the task's sizes.
        va_normalize: score gains in units of the evaluator values' spread between the
            available actions of a state (over the batch), so the weights of L_VA / L_inf
            mean the same on tasks with different reward scales.
        va_receiver: whose utility head turns a message into the receiver's decision in the
            value-aware losses: ``frozen`` (the online head with its parameters detached:
            only the messages learn from L_VA), ``online`` (the receiver's head learns from
            L_VA too) or ``soft`` (``online`` plus ``influence_tau`` times the entropy of the
            receiver's decision, for its head only: the optimum of ``E_pi Q_c + tau H(pi)``,
            ``pi ~ exp(Q_c / tau)``, keeps its utilities bounded; needs the critic).
        va_warmup_fraction: ``T_w`` as a fraction of the run's env steps: the receiver gain
            moves from the (centred, normalised) Monte-Carlo estimate to the evaluator's.
        va_start_fraction: ``L_VA`` and ``L_inf`` are zero (and not computed) before this
            fraction of the run's env steps. Until the TD targets stop bootstrapping from the
            initial network the critic fits them easily, so ``va_confidence`` reads it as
            sure (0.4-0.6 on 3m sight before the first target copy) while its switch values
            are the initial network's (docs/results.md, section 26); 0 = from the start.
        va_confidence: weigh ``L_VA`` and ``L_inf`` by the critic's resolution of one agent's
            actions, ``spread^2 / (spread^2 + RMS^2)`` (``evaluator_confidence``): about 1 where
            its error is small against the values' spread between actions, near 0 where a
            switch's value is below its error and the critic decides worse than the
            receivers (microcombat 3m sight: docs/results.md, section 12).
        va_body: the counterfactual message pass behind ``L_VA`` and ``L_inf`` reads the
            senders' recurrent states as they are (``true``: the losses train the senders'
            bodies through their messages) or detached (``false``: the messenger's own
            parameters only). Early on 3m sight ``L_VA``'s gradient on the bodies outweighed
            TD's and opposed it (docs/results.md, section 24).
        va_messages: what ``L_VA`` and ``L_inf`` train in a ``SeqCommMessenger`` with both
            rounds: ``all`` (the base round and the ordered refinement) or ``refined`` (the
            base round's part of the counterfactual contexts is detached: TD alone trains the
            base round, the value-aware losses the refinement; docs/results.md, section 34).
        message_gradient: how the w step adds the message losses' gradient (every term but
            the real and imagined TD losses) to the TD losses': ``sum`` (as weighted), or
            ``project`` (one-sided PCGrad per parameter tensor: in each tensor where the two
            conflict, the message part loses its component along TD's, whose own part is kept;
            docs/method.md §2.4); it logs their cosine over all tensors before the projection
            as ``grad/message_td_cosine``.
        counterfactual_senders: senders masked per update (0 = all n, exact). k < n: k drawn
            uniformly without replacement; ``L_VA``, ``L_inf`` and the guidance-potential
            regression average over them (unbiased, but for the regression's normaliser,
            taken from the subset), at k + 1 messenger passes, not n + 1.
        counterfactual_receivers: receivers scored in ``L_VA`` per update (0 = all; used with
            more than two agents). r < n: r drawn uniformly, independently of the senders, so
            the critic's switch values run for r receivers, not n; unbiased (the gains' sum over
            its expected pair count; ``va_normalize``'s spread comes from those receivers).
        dfl_every: the decision-focused update (message losses, world model, the w step on
            every term) runs on every k-th update; the k - 1 between are plain TD steps of
            the value networks and messenger (and the critic's regression); one of those costs
            about a quarter of a full update on hospital (1 = every update, exact).
    """

    def __init__(
        self,
        *args,
        world_model_gradient: WorldModelGradient = "implicit",
        world_model: WorldModelFactory = WorldModel,
        implicit: ImplicitSolverFactory = ImplicitSolver,
        k_inner: int = 5,
        inner_lr: float = 0.01,
        model_lr: float = 1e-3,
        real_td_weight: float = 1.0,
        model_td_weight: float = 0.5,
        imagined_actions: ImaginedActions = "taken",
        mle_weight: float = 1.0,
        hypergradient_ratio: float = 0.0,
        hypergradient_per_tensor: bool = False,
        target_radius: float = 0.0,
        implicit_params: ImplicitParams = "head",
        value_aware: bool = True,
        lambda_va: float = 0.1,
        lambda_inf: float = 0.01,
        lambda_aware: float = 0.1,
        lambda_gp: float = 1.0,
        lambda_recon: float = 1.0,
        lambda_state: float = 0.0,
        lambda_mi: float = 0.0,
        lambda_entropy: float = 0.0,
        lambda_entropy_final: float | None = None,
        entropy_anneal_fraction: float = 1.0,
        label_scoring: LabelScoring = "current",
        aware_margin: float = 0.1,
        influence_tau: float = 1.0,
        va_evaluator: Evaluator = "critic",
        critic: CriticFactory = TeamCritic,
        va_normalize: bool = True,
        va_receiver: VaReceiver = "frozen",
        va_warmup_fraction: float = 0.1,
        va_start_fraction: float = 0.0,
        va_confidence: bool = False,
        va_body: bool = True,
        va_messages: VaMessages = "all",
        message_gradient: MessageGradient = "sum",
        counterfactual_senders: int = 0,
        counterfactual_receivers: int = 0,
        dfl_every: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        choices = {"world_model_gradient": (world_model_gradient, GRADIENTS),
                   "label_scoring": (label_scoring, LABEL_SCORINGS),
                   "va_evaluator": (va_evaluator, EVALUATORS),
                   "implicit_params": (implicit_params, IMPLICIT_PARAMS),
                   "va_receiver": (va_receiver, VA_RECEIVERS),
                   "message_gradient": (message_gradient, MESSAGE_GRADIENTS),
                   "va_messages": (va_messages, VA_MESSAGES),
                   "imagined_actions": (imagined_actions, IMAGINED_ACTIONS)}
        for name, (value, allowed) in choices.items():  # LightningCLI checks the Literals too
            if value not in allowed:
                raise ValueError(f"model.{name}={value!r}; choose one of {allowed}")
        for name, fraction in (("va_warmup_fraction", va_warmup_fraction),
                               ("va_start_fraction", va_start_fraction)):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"model.{name}={fraction} must lie in [0, 1]")
        if not 0.0 <= entropy_anneal_fraction <= 1.0:
            raise ValueError(f"model.entropy_anneal_fraction={entropy_anneal_fraction} must lie "
                             "in [0, 1]")
        if lambda_entropy_final is not None and (lambda_entropy_final <= 0
                                                 or lambda_entropy <= 0):
            raise ValueError(f"model.lambda_entropy_final={lambda_entropy_final} anneals "
                             f"model.lambda_entropy={lambda_entropy}: both must be > 0")
        if va_receiver == "soft" and va_evaluator != "critic":
            raise ValueError("model.va_receiver='soft' scores the receiver with the critic; "
                             "set model.va_evaluator='critic' or pick another va_receiver")
        if hypergradient_ratio < 0 or target_radius < 0:
            raise ValueError(f"model.hypergradient_ratio={hypergradient_ratio} and "
                             f"model.target_radius={target_radius} must be >= 0")
        if hypergradient_per_tensor and (hypergradient_ratio <= 0 or mle_weight <= 0):
            raise ValueError("model.hypergradient_per_tensor=true caps each tensor at "
                             "model.hypergradient_ratio x its anchor: set hypergradient_ratio "
                             f"> 0 (got {hypergradient_ratio}) and mle_weight > 0 "
                             f"(got {mle_weight})")
        if counterfactual_senders < 0 or counterfactual_receivers < 0:
            raise ValueError(f"model.counterfactual_senders={counterfactual_senders} and "
                             f"model.counterfactual_receivers={counterfactual_receivers} must "
                             "be >= 0 (0 = all)")
        if k_inner < 1 or dfl_every < 1:
            raise ValueError(f"model.k_inner={k_inner} and model.dfl_every={dfl_every} must "
                             "be >= 1")
        if va_messages == "refined" and not (getattr(self.net.comm, "base_ctx_dim", 0)
                                             and getattr(self.net.comm, "refinement", False)):
            raise ValueError("model.va_messages='refined' needs a SeqCommMessenger with "
                             "base_round: true and refinement: true; set va_messages: all")
        self.save_hyperparameters(ignore=["comm", "world_model", "implicit", "critic"])
        info = self.info
        self.implicit = implicit()
        self.world_model = None
        if world_model_gradient != "none":
            self.world_model = world_model(info.state_dim, info.obs_dim, info.n_agents,
                                           info.n_actions, self.net.comm.ctx_dim)
        self.critic = critic(info.state_dim, info.n_agents, info.n_actions)
        if getattr(self.net.comm, "ordering", None) is not None:  # psi only where it is read
            self.net.comm.ordering.predict = lambda_gp > 0
        self.decoder = None
        if not value_aware and self.net.comm.ctx_dim > 0:
            # decodes the sent message
            self.decoder = ReconstructionHead(self.net.comm.message_dim, info.obs_dim)
        self.receiver_state = None
        if lambda_state > 0 and self.net.comm.ctx_dim > 0:
            self.receiver_state = ReceiverStateHead(self.net.agent.hidden_dim,
                                                    self.net.comm.ctx_dim, info.state_dim)

    # -- the algorithm box --------------------------------------------------------------
    def training_step(self, dataloader_iter) -> None:
        batch, _, _ = next(dataloader_iter)
        opt_w, opt_critic, *opt_theta = self.optimizers()
        opt_theta = opt_theta[0] if opt_theta else None
        if self.global_step % self.hparams.dfl_every:  # between decision-focused updates
            return self.td_step(batch, opt_w, opt_critic)
        # 1. Stackelberg messages and the real-data QMIX TD loss (docs/method.md §2.1-2.3)
        td, cache = self.td_loss(batch)
        # 2. value-aware message objectives and the order's guidance potential (2.2, 2.4)
        msg = self.message_losses(batch, cache)
        # 3. world model imagines transitions from the real (s, o, a, M) (3)
        pred = self.imagine(batch, cache)
        model_td, logs = td * 0, {}
        if pred is not None:
            model_td, imagined = self.imagined_td_loss(batch, cache, pred)
            logs = self.imagination_errors(batch, cache, pred, imagined)
        # 4. inner objective L_model + lambda_aware L_aware (docs/method.md §3.2); the w step
        #    weighs every named loss: the real TD loss and the message losses as outer terms
        inner = model_td + self.hparams.lambda_aware * msg["aware"]
        losses = {"td": td, "model_td": model_td, **msg}
        weights = self.loss_weights(imagined=pred is not None)
        # 5. outer: the world model follows dL_true/dtheta (implicit, unrolled) or fits (mle)
        logs.update(self.update_world_model(opt_theta, batch, cache, td, inner, pred))
        # 6. the w step, target networks by Polyak averaging / hard copies
        w = [p for p in self.net.parameters() if p.requires_grad] + self.auxiliary_parameters()
        grads, grad_logs = self.w_gradients(losses, weights, w)
        self.hand_step(opt_w, w, grads, counted=True)
        self.update_targets()
        # 7. the team critic, in its own step: its loss reaches only its own parameters
        self.step_critic(opt_critic, msg["critic"])
        logs.update({f"loss/{name}": losses[name] for name in (*weights, "critic")}, **grad_logs)
        logs.update({"train/decision_focused": 1.0, "comm/va_beta": msg["va_beta"],
                     "comm/va_confidence": msg["va_confidence"],
                     "comm/guidance_potential": msg["gp_mean"],
                     "comm/order_entropy": msg["order_entropy"],
                     "comm/messages_at_bound": msg["at_bound"]})
        self.log_training(logs)

    def td_step(self, batch: TensorDictBase, opt_w, opt_critic) -> None:
        """An update between decision-focused ones (``dfl_every``): the real TD loss on the
        value networks and messenger, and the team critic's regression."""
        td, cache = self.td_loss(batch)
        weight = self.loss_weights(imagined=self.world_model is not None)["td"]
        self.step_w(opt_w, weight * td, [p for p in self.net.parameters() if p.requires_grad])
        self.update_targets()
        critic = self.critic_loss(batch, cache)
        self.step_critic(opt_critic, critic)
        self.log_training({"loss/td": td, "loss/critic": critic, "train/decision_focused": 0.0})

    def loss_weights(self, imagined: bool = True) -> dict[str, float]:
        """The w step's weight of each named loss (logged as ``loss/<name>``), in the order
        they are summed; ``imagined``: a world model supplies ``model_td``."""
        hp = self.hparams
        return {"td": hp.real_td_weight if imagined else 1.0, "model_td": hp.model_td_weight,
                "aware": hp.lambda_aware, "va": hp.lambda_va, "inf": hp.lambda_inf,
                "gp": hp.lambda_gp, "recon": hp.lambda_recon, "state": hp.lambda_state,
                "mi": hp.lambda_mi, "entropy": self.label_entropy_weight()}

    # -- messages -----------------------------------------------------------------------
    def message_losses(self, batch: TensorDictBase, cache: dict) -> dict[str, torch.Tensor]:
        """The message losses by name (``MESSAGE_LOSSES``, zero where off) and the logged
        ``va_beta``, ``gp_mean``, ``order_entropy`` and ``at_bound`` (the share of base
        messages at their bound, ``MessageEncoder.at_bound``). ``L_VA``, ``L_inf`` and the
        guidance potential share ONE counterfactual pass (``counterfactual_utilities``)."""
        aux, n, hp = cache["aux"], self.info.n_agents, self.hparams
        zero = cache["q"].new_zeros(())
        out = dict.fromkeys(MESSAGE_LOSSES + ("va_beta", "va_confidence", "gp_mean",
                                              "order_entropy", "at_bound"), zero)
        if self.net.comm.ctx_dim == 0:
            return out
        if aux.base_messages is not None and not self.net.comm.discrete:
            out["at_bound"] = self.net.comm.encoder.at_bound(aux.base_messages)
        out["critic"] = self.critic_loss(batch, cache)
        if aux.label_probs is not None:
            out["mi"], out["entropy"] = self.label_losses(aux.label_probs)
        cf = self.counterfactual_utilities(batch, cache)
        if aux.order is not None:
            out["order_entropy"] = order_entropy(aux.order.reshape(-1, n))
        if self.regresses_order(aux):
            out["gp"], out["gp_mean"] = self.guidance_potential_loss(batch, cache, cf)
        out["aware"] = self.awareness_loss(batch, cache)
        out["state"] = self.receiver_state_loss(batch, cache)
        if not hp.value_aware:
            out["recon"] = self.reconstruction_loss(batch, cache)
            return out
        if self.progress() < hp.va_start_fraction:
            return out
        out["va_confidence"] = self.evaluator_confidence(batch, cache, out["critic"], cf)
        out["va"] = out["va_confidence"] * self.value_aware_loss(batch, cache, cf)
        out["va_beta"] = zero.new_tensor(self.va_beta())
        out["inf"] = out["va_confidence"] * self.influence_loss(batch, cache, cf)
        return out

    @torch.no_grad()
    def evaluator_confidence(self, batch: TensorDictBase, cache: dict,
                             critic_loss: torch.Tensor, cf: Counterfactual) -> torch.Tensor:
        """``spread^2 / (spread^2 + RMS^2)`` under ``va_confidence`` (else 1): the spread of
        the critic's switch values between a state's available actions against the critic's
        RMS error on this batch's TD targets, both in reward units. A gain is a difference
        between two switches' values, so where the error outgrows the spread the gain is
        mostly the critic's error (a signal-to-noise weight)."""
        one = critic_loss.new_ones(())
        if not self.hparams.va_confidence or self.hparams.va_evaluator != "critic":
            return one
        _, spread = self.evaluator_values(batch, cache, cf.receivers)
        scale = self.critic.target_std.pow(2) if getattr(self.critic, "normalize", False) else one
        noise = critic_loss.detach() * scale
        return spread.pow(2) / (spread.pow(2) + noise)

    def critic_loss(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """The full-information critic's regression on the same TD targets as ``Q_tot``
        (zero when nothing reads the critic)."""
        if not (self.hparams.value_aware or self.regresses_order(cache["aux"])):
            return cache["q"].new_zeros(())
        joint = torch.nn.functional.one_hot(batch[ACTION], self.info.n_actions)
        return self.critic.loss(batch[STATE], joint.to(cache["h"].dtype), cache["target"])

    def regresses_order(self, aux: MessageOutput) -> bool:
        """Whether the ordering head's guidance-potential regression runs (``lambda_gp > 0``
        and a messenger with an ordering head)."""
        return aux.gp_pred is not None and self.hparams.lambda_gp > 0

    def label_losses(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-I(labels), -E[H(p)])`` of discrete senders' label probabilities (the entropy
        term is zero under ``label_scoring: lookahead``, whose regression holds it)."""
        mi = -label_information(probs.reshape(-1, self.info.n_agents, probs.shape[-1])).mean()
        if self.hparams.label_scoring == "lookahead":
            return mi, probs.new_zeros(())
        return mi, -entropy(probs).mean()

    def counterfactual_utilities(self, batch: TensorDictBase,
                                 cache: dict) -> Counterfactual:
        """The shared pass over k + 1 masks (docs/method.md §2.2): row r masks sender r (all
        others delivered), the last row delivers all; utilities through ``va_receiver``'s
        head on detached states."""
        senders, receivers = self.counterfactual_rows()  # None: all, row i masks sender i
        h = cache["h"] if self.hparams.va_body else cache["h"].detach()
        ctx = self.counterfactual_contexts(h, senders)
        q = self.receiver_q(cache["h"].detach(), ctx)
        k = ctx.shape[0] - 1
        return Counterfactual(senders, receivers, ctx, q, q[:k], q[k], ctx[k])

    def guidance_potential_loss(self, batch: TensorDictBase, cache: dict,
                                cf: Counterfactual) -> tuple[torch.Tensor, torch.Tensor]:
        """The ordering head's regression on GP in units of GP's batch spread (the order needs
        only its ranking), and GP's mean."""
        gp = self.guidance_potential_target(batch, cache, cf.q_masked, cf.q_all)
        gp_pred = cache["aux"].gp_pred
        gp_pred = gp_pred if cf.senders is None else gp_pred[..., cf.senders]
        scale = gp.std().clamp_min(1e-6) if gp.numel() > 1 else gp.new_ones(())
        return (gp_pred - gp / scale).pow(2).mean(), gp.mean()

    def awareness_loss(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """``L_aware``: the online ``Q_tot`` with the messages against with none."""
        chosen0 = self.silent_utilities(cache["h"]).gather(
            -1, batch[ACTION].unsqueeze(-1)).squeeze(-1)
        return awareness_loss(cache["q_tot"], self.net.mix(chosen0, batch[STATE]),
                              self.hparams.aware_margin)

    def reconstruction_loss(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """The decoder's reconstruction of the sender's observation (``value_aware: false``)."""
        if self.decoder is None or cache["aux"].messages is None:
            return cache["q"].new_zeros(())
        return self.decoder.loss(cache["aux"].messages, batch[OBS])

    def receiver_state_loss(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """The receivers' unexplained share of the state's variance given their detached
        states and contexts (``lambda_state``; zero when off)."""
        if self.receiver_state is None:
            return cache["q"].new_zeros(())
        return self.receiver_state.loss(cache["h"], cache["aux"].ctx, batch[STATE])

    def value_aware_loss(self, batch: TensorDictBase, cache: dict,
                         cf: Counterfactual) -> torch.Tensor:
        """``L_VA`` on the evaluator's receiver gain, blended with the Monte-Carlo gain during
        the warm-up. Receivers decide through ``va_receiver``'s head and ``va_evaluator``
        scores them, so messages cannot win by inflating Q (docs/method.md §2.4)."""
        gain = self.evaluator_gain(batch, cache, cf.q_masked, cf.q_all, cache["h"],
                                   cache["aux"], cf.ctx_all, cf.senders, cf.receivers)
        beta = self.va_beta()
        if beta < 1.0:
            gain = blended_gain(self.monte_carlo_gain(batch, cf.q_all, cf.q_masked, gain, cache,
                                                      cf.receivers), gain, beta)
        return value_aware_loss(gain, cf.senders, cf.receivers, self.info.n_agents)

    def influence_loss(self, batch: TensorDictBase, cache: dict,
                       cf: Counterfactual) -> torch.Tensor:
        """``L_inf`` through the frozen receiver head: it trains the messages only (through a
        moving head, "differ from the masked decision" would train the receivers value-blind;
        docs/results.md section 7)."""
        k = cf.q_masked.shape[0]
        q = cf.q if self.hparams.va_receiver == "frozen" else self.frozen_q(
            cache["h"].detach(), cf.ctx)
        return influence_loss(q[k], q[:k], self.hparams.influence_tau, batch[MASK], cf.senders)

    def va_beta(self) -> float:
        """The warm-up's weight of the evaluator's gain (1 after ``va_warmup_fraction``)."""
        return warmup_beta(self.progress(), self.hparams.va_warmup_fraction)

    def progress(self) -> float:
        """The fraction of the run's env steps collected so far (1 outside a trainer)."""
        data = self.trainer.datamodule if self._trainer is not None else None
        return data.frames / max(data.total_frames, 1) if data is not None else 1.0

    def label_entropy_weight(self) -> float:
        """``lambda_entropy`` now: constant, or annealed toward ``lambda_entropy_final``."""
        hp = self.hparams
        if hp.lambda_entropy_final is None:
            return hp.lambda_entropy
        frac = warmup_beta(self.progress(), hp.entropy_anneal_fraction)
        return hp.lambda_entropy * (hp.lambda_entropy_final / hp.lambda_entropy) ** frac

    def silent_utilities(self, h: torch.Tensor) -> torch.Tensor:
        """Online utilities ``[*B, n, A]`` with no message delivered. Where the context is
        then exactly zero (``Communication.zero_when_silent``, e.g. ``SeqCommMessenger``),
        the messenger's pass is skipped when it draws nothing (``Communication.samples``)."""
        comm = self.net.comm
        if comm.zero_when_silent and not comm.samples():
            return self.net.agent.q(h, h.new_zeros(*h.shape[:-1], comm.ctx_dim))
        return self.net.utilities(h, h.new_zeros(self.info.n_agents))[0]

    def monte_carlo_gain(self, batch: TensorDictBase, q_all: torch.Tensor,
                         q_masked: torch.Tensor, critic_gain: torch.Tensor,
                         cache: dict | None = None,
                         receivers: torch.Tensor | None = None) -> torch.Tensor:
        """The warm-up's score-function gain ``[n_send, *B, n_recv]``: a centred, normalised
        Monte-Carlo advantage times the log-likelihood ratio of the taken action, scaled to
        ``critic_gain``'s spread. The baseline is the critic's value of each receiver's current
        (softened) decision, so it does not depend on the action being scored."""
        mask, tau = batch[MASK], self.hparams.influence_tau
        action = batch[ACTION].unsqueeze(-1)
        if receivers is not None:  # the sampled receivers' columns only
            mask, action = mask[..., receivers, :], action[..., receivers, :]
            q_all, q_masked = q_all[..., receivers, :], q_masked[..., receivers, :]
        logp_all = masked_log_softmax(q_all, tau, mask).gather(-1, action).squeeze(-1)
        logp_masked = masked_log_softmax(q_masked, tau, mask).gather(
            -1, action.expand(q_masked.shape[0], *action.shape)).squeeze(-1)
        with torch.no_grad():
            values = self.switch_values(batch, cache, receivers)
            baseline = decision_value(q_all, values, tau, mask)  # [*B, n]
        advantage = normalised_advantage(self.mc_returns(batch), baseline)
        mc = mc_gain(logp_all, logp_masked, advantage)
        return mc * (critic_gain.detach().std() / mc.detach().std().clamp_min(1e-6))

    def counterfactual_rows(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This update's masked senders and scored receivers (sorted indices): ``None`` = all
        n, or ``counterfactual_senders`` / ``counterfactual_receivers`` of them drawn
        uniformly without replacement (receivers only with more than two agents)."""
        n, hp = self.info.n_agents, self.hparams

        def draw(k: int) -> torch.Tensor | None:
            if k == 0 or k >= n:
                return None
            return torch.randperm(n)[:k].sort().values.to(self.device)

        return draw(hp.counterfactual_senders), draw(
            hp.counterfactual_receivers if n > 2 else 0)

    def counterfactual_contexts(self, h: torch.Tensor,
                                senders: torch.Tensor | None = None) -> torch.Tensor:
        """Receivers' contexts ``[k + 1, *B, n, C]`` from one batched messenger pass: row r
        masks sender ``senders[r]`` (default: all n, row i masks sender i; all others
        delivered), the last row delivers all. The messenger runs as at execution
        (deterministic labels, so the rows differ only by the masked sender); the order is
        psi's in every row. The gradient reaches the senders' messages and, through them,
        ``h`` (``counterfactual_utilities`` passes detached states under ``va_body: false``)."""
        n = self.info.n_agents
        eye = torch.eye(n, device=h.device, dtype=h.dtype)
        masked = 1 - (eye if senders is None else eye[senders.to(h.device)])
        k = masked.shape[0]
        deliver = torch.cat([masked, eye.new_ones(1, n)]).view(k + 1, *[1] * (h.dim() - 2), n)
        mode = self.net.comm.training
        self.net.comm.train(False)
        try:
            ctx = self.net.comm(h.expand(k + 1, *h.shape), deliver)[0]
        finally:
            self.net.comm.train(mode)
        if self.hparams.va_messages == "refined":  # the base round learns from TD alone
            base = self.net.comm.base_ctx_dim
            ctx = torch.cat([ctx[..., :base].detach(), ctx[..., base:]], dim=-1)
        return ctx

    def receiver_q(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Utilities through ``va_receiver``'s head: ``frozen`` detaches its parameters."""
        if self.hparams.va_receiver != "frozen":
            return self.net.agent.q(h, ctx)
        return self.frozen_q(h, ctx)

    def frozen_q(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Utilities through the online head with detached parameters."""
        agent = self.net.agent
        return agent.q(h, ctx, {k: p.detach() for k, p in agent.head.named_parameters()})

    @torch.no_grad()
    def evaluator_values(self, batch: TensorDictBase, cache: dict,
                         receivers: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``([*B, n, A], spread)``: the evaluator's value of receiver j playing a (the others
        keeping the taken actions), in units of ``spread`` under ``va_normalize``; ``spread``:
        the values' standard deviation between the available actions of a state (reward
        units, over the batch). ``receivers`` restricts j (and the spread) to those."""
        if self.hparams.va_evaluator == "critic":
            values = self.switch_values(batch, cache, receivers)
        else:
            values = self.target_utilities(cache)
            values = values if receivers is None else values[..., receivers, :]
        mask = batch[MASK] if receivers is None else batch[MASK][..., receivers, :]
        spread = action_spread(values, mask)  # between actions, not between states
        return (values / spread if self.hparams.va_normalize else values), spread

    @torch.no_grad()
    def target_utilities(self, cache: dict) -> torch.Tensor:
        """The target network's utilities on ``cache["h_target"]`` (``va_evaluator:
        target``), computed once per update and kept in ``cache``."""
        if "target_utilities" not in cache:
            cache["target_utilities"] = self.target.utilities(cache["h_target"])[0]
        return cache["target_utilities"]

    @torch.no_grad()
    def switch_values(self, batch: TensorDictBase, cache: dict | None = None,
                      receivers: torch.Tensor | None = None) -> torch.Tensor:
        """The critic's ``switch_values`` on the batch (no graph; for ``receivers`` only when
        given: the same ones all update), computed once per update and kept in ``cache`` (the
        evaluator and the warm-up's baseline both read it)."""
        if cache is not None and "switch_values" in cache:
            return cache["switch_values"]
        args = (batch[STATE], batch[ACTION]) + (() if receivers is None else (receivers,))
        values = self.critic.switch_values(*args)
        if cache is not None:
            cache["switch_values"] = values
        return values

    @torch.no_grad()
    def guidance_potential_target(self, batch: TensorDictBase, cache: dict,
                                  q_masked: torch.Tensor, q_all: torch.Tensor) -> torch.Tensor:
        """``GP_i = V(s, a*(all)) - V(s, a*(i masked))`` ``[*B, n]`` (docs/method.md §2.2): the
        receivers' greedy joint action under each condition, scored by the evaluator's joint
        value (the team critic, or the target ``Q_tot`` on target states)."""
        mask = batch[MASK]
        greedy = masked_argmax(torch.cat([q_masked, q_all.unsqueeze(0)]), mask)  # [n+1,*B,n]
        state = batch[STATE].expand(*greedy.shape[:-1], -1)
        if self.hparams.va_evaluator == "critic":
            joint = torch.nn.functional.one_hot(greedy, self.info.n_actions).to(state.dtype)
            value = self.critic(state, joint).squeeze(-1)
        else:
            q_t = self.target_utilities(cache)
            chosen = q_t.expand(*greedy.shape, -1).gather(-1, greedy.unsqueeze(-1)).squeeze(-1)
            value = self.target.mix(chosen, state).squeeze(-1)
        return guidance_potential(value[-1], value[:-1])

    def evaluator_gain(self, batch: TensorDictBase, cache: dict, q_masked: torch.Tensor,
                       q_all: torch.Tensor, h: torch.Tensor, aux: MessageOutput,
                       ctx: torch.Tensor, senders: torch.Tensor | None = None,
                       receivers: torch.Tensor | None = None) -> torch.Tensor:
        """Receiver gain ``[n_send, *B, n_recv]``: the change in ``E_{a ~ pi_j} V_j(a)`` (the
        evaluator's values) that sender i's message causes; the masked value is a baseline.
        With subsets, row r is sender ``senders[r]``, column c receiver ``receivers[c]``
        (receiver subsets never reach the two-agent label scoring: ``counterfactual_rows``).

        For discrete labels between two agents without the base round
        (``Communication.scores_labels``: each receiver hears exactly the other agent),
        every label is scored exactly and weighted by the sender's label probabilities (an
        exact expectation over labels, no straight-through sample).
        ``va_receiver: soft`` adds the receiver's entropy bonus, on detached contexts and
        label probabilities: it reaches the receiver's head only.
        """
        mask, hp = batch[MASK], self.hparams
        tau = hp.influence_tau
        if receivers is not None:  # the sampled receivers' columns only
            mask = mask[..., receivers, :]
            q_all, q_masked = q_all[..., receivers, :], q_masked[..., receivers, :]
            h, ctx = h[..., receivers, :], ctx[..., receivers, :]
        values, spread = self.evaluator_values(batch, cache, receivers)
        base = decision_value(q_masked, values, tau, mask).detach()

        def policy_entropy(q: torch.Tensor) -> torch.Tensor:
            logp = masked_log_softmax(q, tau, mask)
            # where, not a product: unavailable actions' huge negative logp must get no gradient
            return -torch.where(mask, logp.exp() * logp, torch.zeros_like(logp)).sum(-1)

        comm = self.net.comm
        one_sender = self.info.n_agents == 2  # each receiver hears exactly the other agent
        if aux.label_probs is not None and comm.scores_labels and one_sender:
            label_ctx = comm.label_contexts()  # [M, C]
            hk = h.detach().unsqueeze(0).expand(label_ctx.shape[0], *h.shape)
            ck = label_ctx.view(-1, *[1] * (h.dim() - 1), label_ctx.shape[-1]).expand(
                *hk.shape[:-1], -1)
            if hp.label_scoring == "lookahead":  # its receiver term shapes the states too
                hl = h.unsqueeze(0).expand_as(hk)
                gain = self.lookahead_gain(batch, values, aux.label_probs,
                                           self.receiver_q(hl, ck), spread)
                return gain if senders is None else gain[senders]
            value_k = decision_value(self.receiver_q(hk, ck), values, tau, mask)  # [M,*B,n]
            probs = aux.label_probs.movedim(-2, 0).movedim(-1, 1)  # [n_send, M, *B]
            if senders is not None:
                probs = probs[senders]
            gain = (probs.unsqueeze(-1) * value_k.unsqueeze(0)).sum(1) - base
            if hp.va_receiver == "soft":
                ent_k = policy_entropy(self.receiver_q(hk, ck.detach()))
                gain = gain + tau * (probs.detach().unsqueeze(-1) * ent_k.unsqueeze(0)).sum(1)
            return gain
        gain = decision_value(q_all, values, tau, mask) - base
        if hp.va_receiver == "soft":
            gain = gain + tau * policy_entropy(self.receiver_q(h.detach(), ctx.detach()))
        return gain

    def lookahead_gain(self, batch: TensorDictBase, values: torch.Tensor,
                       probs: torch.Tensor, q_labels: torch.Tensor,
                       spread: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Two agents, each hearing the other: the gain ``[n_send, *B, n_recv]`` (in the
        listening receiver's column) of ``label_scoring: lookahead``.

        Sender: its centred label log-probabilities regress on its centred look-ahead scores
        (``lookahead_label_scores``; samples grouped by identical observations) over the
        temperature ``lambda_entropy / lambda_va`` (annealed under ``lambda_entropy_final``);
        targets clipped to +-10; the squared logit error weighted by the unannealed
        temperature, so that in the total loss (times ``lambda_va``) it weighs
        ``lambda_entropy``, the curvature of the entropy-regularised objective
        ``lambda_va E_p[score] + lambda_entropy H(p)`` at its Boltzmann optimum. Enough to
        shape the shared recurrent encoder, which nothing else makes separate a sender's
        observations where its own utilities do not depend on them (the squared score error,
        ``lambda_va`` times smaller, left the sender's states at most 0.41 apart on matrix
        table 8 and its labels at 0.49 / 0.51: docs/results.md section 9). A Boltzmann sender
        over the scores averaged across batches, whose gradient, unlike that of
        ``sum_k p(k) score(k)``, does not vanish when a label it was sure of stops being best.

        Receiver: its utilities under each label ``q_labels [M, *B, n, A]`` (on its
        recurrent states with their gradient: with QMIX's state-fed mixer absorbing the
        values, nothing else made a receiver's states tell its observations apart, 0.12 apart
        on a failed 3x2x6 table; docs/results.md section 9) get the
        cross-entropy of ``softmax(Q)`` against its pool's best action (by the pool's mean
        values), the re-best-response the scores assume, weighted by the values' ``spread``
        (reward units): through QMIX's state-dependent mixer the TD loss, whose gradient on
        the utilities is in reward units, can prefer another action for a pool than the pool's
        mean values do, and the weight meets it on equal terms on any reward scale. Not the
        softened decision's value (its gradient vanishes where a confident receiver is wrong)
        nor a regression on pooled values (it fixes the utilities' scale against the mixer's;
        docs/results.md sections 7 and 8)."""
        n = self.info.n_agents
        obs = batch[OBS].flatten(0, -3)  # [N, n, D]; sender i's receiver is 1 - i

        def per_sender(x: torch.Tensor) -> torch.Tensor:  # [*B, n, ...] -> [n, N, ...]
            return x.flatten(0, probs.dim() - 3).transpose(0, 1)

        mask = per_sender(batch[MASK].flip(-2))
        look = lookahead_label_scores(per_sender(probs), per_sender(values.flip(-2)),
                                      sender_group_ids(obs), sender_group_ids(obs.flip(-2)),
                                      mask)
        p = per_sender(probs)
        q = per_sender(q_labels.movedim(0, -2).flip(-3))  # [n, N, M, A]
        avail = mask.unsqueeze(-2).expand_as(q)
        best = look.pooled.argmax(-1, keepdim=True)
        top2 = look.pooled.topk(2, dim=-1).values
        decided = (top2[..., 0] - top2[..., 1]) > 1e-6  # a pool that prefers one action
        logq = masked_log_softmax(q, 1.0, avail)  # a margin of one utility unit
        best_response = torch.where(decided, -logq.gather(-1, best).squeeze(-1),
                                    torch.zeros_like(decided, dtype=q.dtype))
        hp = self.hparams
        temperature = max(self.label_entropy_weight() / hp.lambda_va, 1e-6)
        unit = max(hp.lambda_entropy / hp.lambda_va, 1e-6)  # not annealed: the loss's scale
        logp = p.clamp_min(1e-12).log()
        target = (look.scores - look.scores.mean(-1, keepdim=True)) / temperature
        sender_loss = unit * (logp - logp.mean(-1, keepdim=True)
                              - target.clamp(-10, 10)).pow(2).sum(-1)
        gain = -sender_loss - spread * (p.detach() * best_response).sum(-1)
        gain = gain.view(n, *probs.shape[:-2], 1)
        off = 1 - torch.eye(n, dtype=gain.dtype, device=gain.device)
        return gain * off.view(n, *[1] * (gain.dim() - 2), n)

    def mc_returns(self, batch: TensorDictBase) -> torch.Tensor:
        """Discounted returns-to-go ``[B, T, 1]`` inside each chunk (cut at episode ends)."""
        reward = batch[NEXT, "reward"]
        done = batch[NEXT, "done"].to(reward.dtype)
        ret = torch.zeros_like(reward[:, 0])
        out = torch.empty_like(reward)
        for t in range(reward.shape[1] - 1, -1, -1):  # a loop over time only
            ret = reward[:, t] + self.hparams.gamma * (1 - done[:, t]) * ret
            out[:, t] = ret
        return out

    # -- world model ----------------------------------------------------------------------
    def imagine(self, batch: TensorDictBase, cache: dict):
        """``W_theta(s, o, a', M)`` on the real batch (messages detached) at the joint actions
        ``a'`` of ``imagined_actions`` (kept in ``cache``), or ``None``."""
        if self.world_model is None:
            return None
        aux, comm = cache["aux"], self.net.comm
        if aux.ctx is not None and not comm.samples():  # td_loss's, same h
            ctx = aux.ctx
        elif aux.undropped_ctx is not None and comm.redraws():  # a fresh pass's draws
            ctx = comm.redraw(aux.undropped_ctx.detach())
        else:
            ctx = comm(cache["h"].detach())[0]
        cache["imagined_action"] = self.imagined_joint_actions(batch, cache)
        return self.world_model(batch[STATE], batch[OBS], cache["imagined_action"],
                                ctx.detach())

    def imagined_joint_actions(self, batch: TensorDictBase, cache: dict) -> torch.Tensor:
        """``a' [B, T, n]``: the replay's joint actions, the online greedy ones, or uniform
        draws among each agent's available actions (``imagined_actions``)."""
        mode = self.hparams.imagined_actions
        if mode == "taken":
            return batch[ACTION]
        mask = batch[MASK]
        score = cache["q"].detach() if mode == "greedy" else torch.rand(mask.shape,
                                                                         device=mask.device)
        return masked_argmax(score, mask)

    def imagined_td_loss(self, batch: TensorDictBase, cache: dict,
                         pred) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_model(w; theta)``: the QMIX TD loss of the online ``Q_tot(s, a')`` against
        targets bootstrapped (target networks) from the imagined ``(s', o', r, terminated)``;
        returns the loss and those targets."""
        inputs = self.target.inputs(pred.next_obs, pred.next_state)
        h_next = self.target.agent.encode(inputs, cache["h_target"])
        q_next = self.next_utilities(h_next, None, batch[NEXT, *MASK])
        q_tot_next = self.target.mix(q_next, pred.next_state)
        target = self.bootstrap(pred.reward, torch.sigmoid(pred.terminated_logit), q_tot_next)
        q_tot, center = cache["q_tot"], cache["target"].detach()
        action = cache.get("imagined_action", batch[ACTION])
        if self.hparams.imagined_actions != "taken":  # no real target off the replay's a
            chosen = cache["q"].gather(-1, action.unsqueeze(-1)).squeeze(-1)
            q_tot = self.net.mix(chosen, batch[STATE])
            center = torch.where(self.taken_rows(batch, action), center, q_tot.detach())
        return (q_tot - self.trust_region(target, cache, center)).pow(2).mean(), target

    @staticmethod
    def taken_rows(batch: TensorDictBase, action: torch.Tensor) -> torch.Tensor:
        """``[B, T, 1]``: where the imagined joint action is the replay's."""
        return (action == batch[ACTION]).all(-1, keepdim=True)

    def trust_region(self, imagined: torch.Tensor, cache: dict,
                     center: torch.Tensor | None = None) -> torch.Tensor:
        """Imagined targets softly clipped to ``target_radius`` x RMS(real TD residual)
        around ``center``: the real targets (default), or, at joint actions the replay did
        not take, the online ``Q_tot`` there (identity when ``target_radius`` is 0)."""
        if self.hparams.target_radius <= 0:
            return imagined
        real = cache["target"].detach()
        center = real if center is None else center
        radius = self.hparams.target_radius * (cache["q_tot"] - real).detach().pow(2).mean(
        ).sqrt().clamp_min(1e-6)
        return center + radius * torch.tanh((imagined - center) / radius)

    @torch.no_grad()
    def imagination_errors(self, batch: TensorDictBase, cache: dict, pred,
                           target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Where the imagined transitions part from the real ones, on the rows whose imagined
        joint action is the replay's (all of them under ``imagined_actions: taken``)."""
        taken = self.taken_rows(batch, cache.get("imagined_action", batch[ACTION])).float()
        count = taken.sum().clamp_min(1.0)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return (x * taken).sum() / count

        return {"dfl/target_error": mean((target - cache["target"]).abs()),
                "dfl/reward_error": mean((pred.reward - batch[NEXT, "reward"]).abs()),
                "dfl/imagined_taken": taken.mean(),
                "dfl/obs_range": pred.next_obs.abs().max()}

    def inner_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The ``w`` of the bilevel problem, by name (see ``implicit_params``)."""
        named = dict(self.net.named_parameters())
        if self.hparams.implicit_params == "head":
            named = {k: p for k, p in named.items() if k.startswith(("agent.head.", "mixer."))}
        return {k: p for k, p in named.items() if p.requires_grad}

    def update_world_model(self, opt, batch, cache, td, inner, pred) -> dict[str, torch.Tensor]:
        """The outer step on ``theta`` (docs/method.md §3.3); returns its logs."""
        if self.world_model is None:
            return {}
        grads, logs = self.world_model_gradients(batch, cache, td, inner, pred)
        self.hand_step(opt, list(self.world_model.parameters()), grads)
        return logs

    def world_model_gradients(self, batch, cache, td, inner,
                              pred) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """``theta``'s gradient by ``world_model_gradient`` (the hypergradient clipped and
        anchored by ``mle_weight`` x the prediction loss's) and its logs."""
        hp = self.hparams
        theta = list(self.world_model.parameters())
        w = list(self.inner_parameters().values())
        mle = self.world_model.prediction_loss(
            pred, batch[NEXT, STATE], batch[NEXT, *OBS], batch[NEXT, "reward"],
            batch[NEXT, "terminated"])
        logs: dict[str, torch.Tensor | float] = {"loss/model_mle": mle}
        if hp.world_model_gradient == "mle":
            grads = torch.autograd.grad(mle, theta, retain_graph=True)
        elif hp.world_model_gradient == "implicit":
            # dL_true/dw at the current (warm-started) inner solution, then (H + lambda I) v
            outer_grad = torch.autograd.grad(td, w, retain_graph=True, allow_unused=True)
            inner_grad = torch.autograd.grad(inner, w, create_graph=True, allow_unused=True)
            grads, info = self.implicit(inner_grad, outer_grad, w, theta, q_tot=cache["q_tot"],
                                        retain_graph=True)
            logs["dfl/cg_residual"] = info["residual"]
            logs["dfl/cg_iters"] = float(info["iters"])
        else:  # unrolled
            grads = self.unrolled_hypergradient(batch, theta)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        logs["dfl/outer_grad_norm"] = norm
        if hp.world_model_gradient != "mle" and hp.mle_weight > 0:
            # clip the hypergradient on its own first, so the anchor keeps its say; with
            # hypergradient_ratio, to that fraction of the anchor's norm (scale-free)
            anchor = torch.autograd.grad(mle, theta, retain_graph=True)
            if hp.hypergradient_per_tensor:  # each tensor against its own anchor
                scales = [torch.clamp(hp.hypergradient_ratio * hp.mle_weight * a.norm()
                                      / (g.norm() + 1e-12), max=1.0)
                          for g, a in zip(grads, anchor, strict=True)]
            else:
                limit = hp.grad_clip
                if hp.hypergradient_ratio > 0:
                    limit = hp.hypergradient_ratio * hp.mle_weight * torch.linalg.vector_norm(
                        torch.stack([a.norm() for a in anchor]))
                scales = [torch.clamp(limit / (norm + 1e-12), max=1.0)] * len(grads)
            kept = torch.linalg.vector_norm(  # ||c g|| = c ||g||: no gradient-sized copies
                torch.stack([c * g.norm() for c, g in zip(scales, grads, strict=True)]))
            logs["dfl/hypergradient_kept"] = kept / (norm + 1e-12)  # 1: the cap did not bind
            grads = [c * g + hp.mle_weight * a
                     for c, g, a in zip(scales, grads, anchor, strict=True)]
        return list(grads), logs

    def unrolled_hypergradient(self, batch: TensorDictBase, theta) -> tuple[torch.Tensor, ...]:
        """Backpropagate the real TD loss through ``k_inner`` differentiable SGD steps."""
        start = {k: p.detach().requires_grad_() for k, p in self.inner_parameters().items()}

        def losses(params):
            # tie_weights=False: policy.net is net, and tying would leave swapped tensors in it
            return functional_call(self, {f"net.{k}": v for k, v in params.items()},
                                   (batch,), {}, strict=False, tie_weights=False)

        def inner_loss(params):  # L_model, as for the implicit gradient (docs/method.md §3.2)
            return losses(params)[1]

        final = unrolled_inner(start, inner_loss, self.hparams.k_inner, self.hparams.inner_lr)
        outer = losses(final)[0]
        return torch.autograd.grad(outer, theta, allow_unused=True, materialize_grads=True)

    def forward(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imagined TD losses at the current parameters (used functionally by the
        ``unrolled`` ablation)."""
        td, cache = self.td_loss(batch)
        return td, self.imagined_td_loss(batch, cache, self.imagine(batch, cache))[0]

    # -- optimisation -------------------------------------------------------------------
    def hand_step(self, opt, params: list, grads, counted: bool = False) -> None:
        """Set ``grads`` on ``params`` (averaged across DDP ranks: hand-set gradients are not
        all-reduced), clip them to ``grad_clip`` and step ``opt``; ``counted``: through
        Lightning's optimiser, which counts one step per update (w's), else the raw one."""
        opt.zero_grad()
        for p, g in zip(params, average_gradients(grads, params), strict=True):
            p.grad = None if g is None else g.detach()
        torch.nn.utils.clip_grad_norm_(params, self.hparams.grad_clip, foreach=True)
        (opt if counted else opt.optimizer).step()

    def step_w(self, opt, inner: torch.Tensor, w) -> None:
        self.hand_step(opt, w, torch.autograd.grad(inner, w, allow_unused=True), counted=True)

    def w_gradients(self, losses: dict[str, torch.Tensor], weights: dict[str, float],
                    w: list) -> tuple[list, dict[str, float]]:
        """The w step's gradient of the weighted losses. Under ``message_gradient: project``
        the message losses' part loses its component against the TD losses' (real and
        imagined) in each parameter tensor where they conflict (``project_conflicting``; two
        backward passes, not one), and their global cosine before the projection is logged."""
        def grad(names, retain: bool = False) -> list:
            loss = sum(weights[n] * losses[n] for n in names)
            if not loss.requires_grad:
                return [None] * len(w)
            return list(torch.autograd.grad(loss, w, allow_unused=True, retain_graph=retain))
        if self.hparams.message_gradient == "sum":
            return grad(weights), {}
        td = grad([n for n in weights if n in TD_LOSSES], retain=True)
        message, cosine = project_conflicting(grad([n for n in weights if n not in TD_LOSSES]), td)
        return add_gradients(td, message), {"grad/message_td_cosine": cosine}

    def step_critic(self, opt, loss: torch.Tensor) -> None:
        """The team critic's regression step (its own Adam and gradient clip; a zero loss,
        when nothing reads the critic, leaves it untouched)."""
        if not loss.requires_grad:
            return
        params = list(self.critic.parameters())
        self.hand_step(opt, params, torch.autograd.grad(loss, params))

    def auxiliary_parameters(self) -> list[torch.nn.Parameter]:
        """Trained with ``w`` but outside the bilevel problem: the message and state decoders."""
        return [p for m in (self.decoder, self.receiver_state) if m is not None
                for p in m.parameters()]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints written before the critic had its own step hold one Adam over
        ``net``, critic and decoder (in that order): split its state into w's and the
        critic's, so that such runs resume exactly where they were."""
        states = checkpoint.get("optimizer_states") or []
        sizes = [len(list(m.parameters())) for m in (self.net, self.critic)]
        n_aux = len(self.auxiliary_parameters())
        if not states or len(states[0]["param_groups"][0]["params"]) != sum(sizes) + n_aux:
            return
        old, group = states[0], states[0]["param_groups"][0]
        ids = group["params"]

        def part(keep: list[int]) -> dict:
            state = {i: old["state"][k] for i, k in enumerate(keep) if k in old["state"]}
            return {"state": state, "param_groups": [{**group, "params": list(range(len(keep)))}]}

        critic = ids[sizes[0]: sum(sizes)]
        checkpoint["optimizer_states"] = [part(ids[: sizes[0]] + ids[sum(sizes):]),
                                          part(critic), *states[1:]]

    def configure_optimizers(self):
        """Adam for ``w`` (+ the decoder), for the team critic and for the world model."""
        params = list(self.net.parameters()) + self.auxiliary_parameters()
        opts = [torch.optim.Adam(params, lr=self.hparams.lr, foreach=True),
                torch.optim.Adam(self.critic.parameters(), lr=self.hparams.lr, foreach=True)]
        if self.world_model is not None:
            opts.append(torch.optim.Adam(self.world_model.parameters(), lr=self.hparams.model_lr,
                                         foreach=True))
        return opts

"""The SeqComm baseline (Ding et al., "Multi-Agent Sequential Decision-Making via
Communication") on the QMIX backbone (docs/method.md §5).

Acting (``seqcomm.sequential_policy``): negotiation (hidden-state messages; intention values
from ``F`` orders x ``H`` imagined steps of a world model; higher intention decides first),
then launching (followers read their leaders' actions). Learning:

- the QMIX TD loss with teacher forcing: each step's utilities under the order it was acted
  in (stored in the batch) and the *taken* actions of the agents above each follower, one
  masked pass for all agents;
- the bootstrap at the next state negotiates its order with the current networks and world
  model, then decides greedily in it (the online network under ``double_q``), which is what
  the policy would now do there; the target network evaluates that joint action;
- the world model by its prediction loss (MLE) on the real batch.

The paper's policy is an actor-critic (MAPPO); here the agents are QMIX utilities, as for
every other method of the comparison. Its world model reads the shared hidden states; ours
also reads the global state, which the mixer's bootstrap value needs, so at execution the
order (not the actions) may depend on what the state holds beyond the joint observation.
"""

from __future__ import annotations

import copy
import importlib
from functools import partial

import torch
from tensordict import TensorDictBase

from seqcomm.comm.intention import negotiate
from seqcomm.comm.launching import LaunchingMessenger, launch
from seqcomm.comm.ordering import order_entropy
from seqcomm.dfl.world_model import WorldModelFactory
from seqcomm.envs.base import ACTION, MASK, OBS, STATE
from seqcomm.learner import NEXT, QLearner
from seqcomm.sequential_policy import ORDER, SequentialPolicy
from seqcomm.team_q import TeamQ

#: SeqComm's world model by default: ``WorldModel`` with ``hidden_dim`` 64 (a ``class_path``
#: spec, so that the CLI prints, saves and overrides it like any other component).
WORLD_MODEL: dict = {"class_path": "seqcomm.dfl.world_model.WorldModel",
                     "init_args": {"hidden_dim": 64}}


def component(spec: dict | WorldModelFactory) -> WorldModelFactory:
    """The factory of a ``class_path`` spec (a default given in Python, where jsonargparse
    does not resolve it); a factory unchanged."""
    if not isinstance(spec, dict):
        return spec
    module, _, name = spec["class_path"].rpartition(".")
    return partial(getattr(importlib.import_module(module), name), **spec.get("init_args", {}))


class SeqCommLearner(QLearner):
    """QMIX + SeqComm's negotiation and launching phases (``comm``: ``LaunchingMessenger``).

    Takes ``QLearner``'s arguments too.

    Args:
        orders: ``F``, random orders sampled per candidate leader for its intention value.
        horizon: ``H``, imagined steps of each rollout before the value bootstraps.
        world_model: the world model (``class_path`` of ``seqcomm.dfl.world_model.WorldModel``
            with its ``hidden_dim``, ``pooling``; default: ``hidden_dim`` 64); the learner
            passes the task's sizes and no messages (``msg_dim`` 0).
        model_lr: its Adam rate.
    """

    ddp_unused_parameters = True  # its world model trains by its own loss

    def __init__(self, *args, orders: int = 2, horizon: int = 2,
                 world_model: WorldModelFactory = WORLD_MODEL, model_lr: float = 1e-3,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.net.comm, LaunchingMessenger):
            raise ValueError("SeqCommLearner needs model.comm: "
                             "seqcomm.comm.launching.LaunchingMessenger")
        if orders < 1 or horizon < 0:
            raise ValueError(f"SeqCommLearner: orders ({orders}) must be >= 1 and horizon "
                             f"({horizon}) >= 0")
        self.save_hyperparameters(ignore=["comm", "world_model"])
        info = self.info
        self.net.comm.bind_actions(info.n_actions)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.world_model = component(world_model)(info.state_dim, info.obs_dim, info.n_agents,
                                                  info.n_actions, 0)
        hp = self.hparams
        self.policy = SequentialPolicy(self.net, self.world_model, orders, horizon, hp.gamma,
                                       hp.eps_start, hp.eps_end, hp.eps_anneal_frames)

    # -- the two phases on stored or recomputed orders -------------------------------------
    def utilities(self, net: TeamQ, h: torch.Tensor, order: torch.Tensor,
                  actions: torch.Tensor) -> torch.Tensor:
        """``q [*B, n, A]`` of every agent given the actions of the agents above it."""
        ctx, _ = net.comm(h, order=order, actions=actions)
        return net.agent.q(h, ctx)

    @torch.no_grad()
    def negotiate(self, h: torch.Tensor, state: torch.Tensor, obs: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The negotiation phase with the online network: ``(order, intention values)``."""
        hp = self.hparams
        return negotiate(self.net, self.world_model, h, state, obs, mask, hp.orders,
                         hp.horizon, hp.gamma)

    # -- losses ----------------------------------------------------------------------------
    def td_loss(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """QMIX TD loss, teacher-forced on the stored order and taken actions."""
        h, h_next = self.recurrent_states(self.net, batch)
        q = self.utilities(self.net, h, batch[ORDER], batch[ACTION])
        chosen = q.gather(-1, batch[ACTION].unsqueeze(-1)).squeeze(-1)
        q_tot = self.net.mix(chosen, batch[STATE])
        with torch.no_grad():
            _, h_target_next = self.recurrent_states(self.target, batch)
            next_mask = batch[NEXT, *MASK]
            order, intention = self.negotiate(h_next, batch[NEXT, STATE], batch[NEXT, *OBS],
                                              next_mask)
            decider, h_decider = ((self.net, h_next) if self.hparams.double_q
                                  else (self.target, h_target_next))
            heard = decider.comm.negotiation(h_decider)
            a_next, _ = launch(
                lambda a: decider.agent.q(h_decider, decider.comm.launching(heard, order, a)),
                next_mask, self.info.n_agents)
            q_next = self.utilities(self.target, h_target_next, order, a_next)
            q_tot_next = self.target.mix(q_next.gather(-1, a_next.unsqueeze(-1)).squeeze(-1),
                                         batch[NEXT, STATE])
            target = self.bootstrap(batch[NEXT, "reward"], batch[NEXT, "terminated"], q_tot_next)
        loss = (q_tot - target).pow(2).mean()
        return loss, {"q_tot": q_tot, "target": target, "intention": intention}

    def model_loss(self, batch: TensorDictBase) -> torch.Tensor:
        """The world model's prediction loss (MLE) on the real transitions."""
        pred = self.world_model(batch[STATE], batch[OBS], batch[ACTION])
        return self.world_model.prediction_loss(pred, batch[NEXT, STATE], batch[NEXT, *OBS],
                                                batch[NEXT, "reward"], batch[NEXT, "terminated"])

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        return [torch.optim.Adam(self.net.parameters(), lr=hp.lr, foreach=True),
                torch.optim.Adam(self.world_model.parameters(), lr=hp.model_lr, foreach=True)]

    def training_step(self, dataloader_iter) -> None:
        batch, _, _ = next(dataloader_iter)
        opt, model_opt = self.optimizers()
        loss, cache = self.td_loss(batch)
        grad_norm = self.step_optimizer(opt, loss, self.net.parameters())
        model_loss = self.model_loss(batch)
        model_opt.zero_grad()
        self.manual_backward(model_loss)
        torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), self.hparams.grad_clip,
                                       foreach=True)
        model_opt.optimizer.step()  # raw: Lightning counts one step per update
        self.update_targets()
        spread = cache["intention"].amax(-1) - cache["intention"].amin(-1)
        self.log_training({"loss/td": loss, "loss/model_mle": model_loss,
                           "train/grad_norm": grad_norm,
                           "comm/order_entropy": order_entropy(batch[ORDER]),
                           "comm/intention_spread": spread.mean()})

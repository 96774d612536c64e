"""``smacv2``: real StarCraft II through ``torchrl.envs.SMACv2Env`` (docs/method.md §6.5).

TorchRL's ``SMACv2Env`` wraps one ``smacv2`` game (batch size ``[]``) and emits
``("agents", "observation" | "action_mask")``, ``"state"``, ``"reward"``, ``"done"``,
``"terminated"`` and ``("info", "battle_won" | "dead_allies" | "dead_enemies" |
"episode_limit")`` (bool / int64). ``SMACv2Task`` batches ``num_envs`` games with
``SerialEnv`` / ``ParallelEnv`` and maps them onto the project's key contract
(``seqcomm.envs.base``) with TorchRL transforms, so that it matches ``MicroCombat`` key for
key, dtype for dtype and shape for shape:

- ``("info", "battle_won")`` is renamed ``("info", "won")``; all info metrics become float32;
- SMAC ends a time-out like a defeat (``terminated``); ``TimeLimitTruncation`` turns SMAC's
  ``episode_limit`` flag (emitted because we pass ``continuing_episode=True``) into
  ``truncated`` and clears ``terminated`` there, so time-outs are bootstrapped;
- ``see_allies=False`` zeroes the ally block of every observation (``HideAllies``), as
  ``MicroCombat(see_allies=False)`` does;
- ``ActionMask`` keeps random actions (``rand_action``, ``check_env_specs``) available, since
  SMAC rejects unavailable actions.

StarCraft II needs the ``smacv2`` package and a StarCraft II install; see docs/smacv2.md.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite
from torchrl.envs import (
    ActionMask,
    Compose,
    DTypeCastTransform,
    EnvBase,
    ParallelEnv,
    RenameTransform,
    SerialEnv,
    Transform,
    TransformedEnv,
)

from seqcomm.envs.base import ACTION, INFO, MASK, OBS, ConfigurableEnv

SMACV2_GIT = "git+https://github.com/oxwhirl/smacv2.git"
SC2_ZIP = "https://blzdistsc2-a.akamaihd.net/Linux/SC2.4.10.zip"
SMAC_MAPS_ZIP = "https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip"
SMACV2_MAPS_ZIP = "https://github.com/oxwhirl/smacv2/releases/download/maps/SMAC_Maps.zip"


def sc2_path() -> Path:
    """Where pysc2 looks for StarCraft II: ``$SC2PATH``, else ``~/StarCraftII``."""
    return Path(os.environ.get("SC2PATH", "~/StarCraftII")).expanduser()


def missing_requirements() -> list[str]:
    """What the real StarCraft II path lacks on this machine (empty when all is installed).

    Only looks at the file system and the import machinery: nothing is imported or launched.
    """
    missing = []
    if importlib.util.find_spec("smacv2") is None:
        missing.append(
            f"the `smacv2` Python package: `pip install {SMACV2_GIT}` (it pins protobuf<3.21, "
            "which wandb needs newer: add --no-deps and install pysc2, s2clientprotocol, "
            "absl-py and pygame yourself, see docs/smacv2.md)"
        )
    root = sc2_path()
    where = f"$SC2PATH={root}" if "SC2PATH" in os.environ else f"{root} (SC2PATH is not set)"
    maps = (f"unzip {SMAC_MAPS_ZIP} and then {SMACV2_MAPS_ZIP} and put their .SC2Map files in "
            "$SC2PATH/Maps/SMAC_Maps")
    if not (root / "Versions").is_dir():
        missing.append(
            f"StarCraft II: no `Versions/` folder under {where}; unzip the 4.10 Linux package "
            f"({SC2_ZIP}, password 'iagreetotheeula'), point SC2PATH at its StarCraftII "
            f"folder, then {maps}"
        )
    elif not (root / "Maps" / "SMAC_Maps").is_dir():
        missing.append(f"the SMAC maps: no `Maps/SMAC_Maps/` folder under {where}; {maps}")
    return missing


def check_requirements() -> None:
    """Raise one ``ValueError`` naming everything the StarCraft II path lacks, and the fixes."""
    missing = missing_requirements()
    if missing:
        items = "\n".join(f"  - {m}" for m in missing)
        raise ValueError(
            "SMACv2Task needs StarCraft II, and this machine lacks:\n"
            f"{items}\n"
            "Or build the project's Docker image, which has both: "
            "`docker build --target sc2 -t seqcomm:sc2 .` (see docs/smacv2.md).\n"
            "Without StarCraft II, run the pure-torch SMAC-like simulator instead: "
            "`seqcomm fit --config conf/microcombat_3m.yaml`."
        )


class TimeLimitTruncation(Transform):
    """SMAC's time-out flag ``("info", "episode_limit")`` -> ``truncated``; time-outs are not
    terminations. Drops the flag from ``info``.

    No stock TorchRL transform maps an info flag to ``truncated`` (``StepCounter`` counts steps
    itself and would also mark a battle that ends on the last step as truncated).
    """

    FLAG = (INFO, "episode_limit")

    def __init__(self) -> None:
        super().__init__(in_keys=[self.FLAG], out_keys=["truncated"])

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        limit = next_tensordict.pop(self.FLAG).reshape(next_tensordict["done"].shape)
        next_tensordict.set("truncated", limit.clone())
        next_tensordict.set("terminated", next_tensordict["terminated"] & ~limit)
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase):
        tensordict_reset.pop(self.FLAG, None)
        tensordict_reset.set("truncated", torch.zeros_like(tensordict_reset["done"]))
        return tensordict_reset

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        del observation_spec[self.FLAG]
        return observation_spec

    def transform_done_spec(self, done_spec: Composite) -> Composite:
        done_spec["truncated"] = done_spec["terminated"].clone()
        return done_spec


class HideAllies(Transform):
    """Zero the ally features of ``("agents", "observation")`` (SMAC layout: move, enemy,
    ally, own features), as ``MicroCombat(see_allies=False)`` does.

    Args:
        start: index of the first ally feature.
        stop: index one past the last ally feature.
    """

    def __init__(self, start: int, stop: int) -> None:
        super().__init__(in_keys=[OBS], out_keys=[OBS])
        self.start, self.stop = start, stop

    def _apply_transform(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.clone()
        obs[..., self.start: self.stop] = 0.0
        return obs

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase):
        return self._call(tensordict_reset)


def check_protobuf() -> None:
    """Make StarCraft II's protocol modules importable, or raise a ``ValueError`` saying how.

    ``s2clientprotocol`` ships code generated by an old protoc, which protobuf >= 4 (needed by
    wandb and tensorboard) loads only with its pure-Python backend. The variable below picks
    the backend when ``google.protobuf`` is first imported, here or in a spawned worker.
    """
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    if importlib.util.find_spec("s2clientprotocol") is None:
        return  # smacv2 will say so itself
    try:
        from s2clientprotocol import common_pb2  # noqa: F401
    except TypeError as err:  # "Descriptors cannot be created directly"
        raise ValueError(
            "smacv2: protobuf was imported with its C backend before SMACv2Task was built, and "
            "StarCraft II's protocol code (s2clientprotocol) cannot load under it. Start Python "
            "with `export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python` (the project's Docker "
            "image sets it)."
        ) from err


def _parse_absl_flags() -> None:
    """pysc2 reads absl flags (``--sc2_run_config``) and fails when no ``absl.app`` parsed
    them (oxwhirl/smac#126); mark them parsed with their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_smacv2_env(
    map_name: str,
    capability_config: dict | None,
    seed: int,
    see_allies: bool,
    env_kwargs: dict[str, Any],
) -> EnvBase:
    """One StarCraft II game as TorchRL's ``SMACv2Env`` (batch size ``[]``), categorical
    actions, time-outs flagged (``continuing_episode=True``) and, unless ``see_allies``,
    the ally block of the observations zeroed. Runs inside ``SerialEnv`` / ``ParallelEnv``
    workers."""
    from torchrl.envs import SMACv2Env

    if importlib.util.find_spec("absl") is not None:
        _parse_absl_flags()
    env = SMACv2Env(
        map_name=map_name,
        capability_config=copy.deepcopy(capability_config),  # smacv2 edits it in place
        seed=seed,
        categorical_actions=True,
        continuing_episode=True,
        **env_kwargs,
    )
    if see_allies:
        return env
    n_enemies, nf_enemy = env.get_obs_enemy_feats_size()
    n_allies, nf_ally = env.get_obs_ally_feats_size()
    start = env.get_obs_move_feats_size() + n_enemies * nf_enemy
    stop = start + n_allies * nf_ally
    return TransformedEnv(env, HideAllies(start, stop))


class SMACv2Task(ConfigurableEnv, TransformedEnv):
    """``num_envs`` StarCraft II games (SMAC / SMACv2) with the project's key contract.

    Args:
        num_envs: number of games, each its own StarCraft II process.
        seed: StarCraft II's game seed of game 0; game ``i`` gets ``seed + i``. smacv2's
            procedural unit and position draws use unseeded generators (not reproducible).
        device: torch device of the batched output.
        map_name: a SMAC map (``3m``, ``8m``, ``2s3z``, ...) or a SMACv2 map (``10gen_protoss``,
            ``10gen_terran``, ``10gen_zerg``, which need ``capability_config``).
        capability_config: SMACv2's procedural-generation config (``n_units``, ``n_enemies``,
            ``team_gen``, ``start_positions``), as in smacv2's ``sc2_gen_*.yaml``; None for
            the fixed SMAC maps.
        see_allies: False zeroes the ally features of the observations (as SeqComm on SMACv2).
        parallel: run the games in ``ParallelEnv`` worker processes (else ``SerialEnv``, one
            process); ignored when ``num_envs == 1``.
        env_kwargs: further keyword arguments of smacv2's ``StarCraft2Env`` (e.g.
            ``use_unit_ranges``, ``obs_own_pos``, ``conic_fov``, ``difficulty``).
    """

    #: no torch generator to checkpoint: each StarCraft II game keeps its own random state
    rng = None

    def __init__(
        self,
        num_envs: int = 1,
        seed: int = 0,
        device: str = "cpu",
        map_name: str = "3m",
        capability_config: dict | None = None,
        see_allies: bool = True,
        parallel: bool = True,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"smacv2: num_envs must be >= 1, got {num_envs}")
        check_requirements()  # before importing smacv2 (pysc2, absl, protobuf)
        check_protobuf()
        from smacv2.env.starcraft2.maps import smac_maps

        registry = smac_maps.get_smac_map_registry()
        if map_name not in registry:
            raise ValueError(f"smacv2: unknown map {map_name!r}; smacv2 knows {sorted(registry)}")
        env_kwargs = dict(env_kwargs or {})
        reserved = {"map_name", "capability_config", "seed", "continuing_episode",
                    "categorical_actions"} & set(env_kwargs)
        if reserved:
            raise ValueError(f"smacv2: set {sorted(reserved)} through SMACv2Task's own arguments, "
                             "not env_kwargs")
        make = functools.partial(make_smacv2_env, map_name=map_name,
                                 capability_config=capability_config, see_allies=see_allies,
                                 env_kwargs=env_kwargs)
        seeds = [{"seed": seed + i} for i in range(num_envs)]
        if parallel and num_envs > 1:
            # metadata from the workers: no extra StarCraft II launch in this process
            games = ParallelEnv(num_envs, make, create_env_kwargs=seeds, device=device,
                                metadata_from_workers=True)
        else:
            games = SerialEnv(num_envs, make, create_env_kwargs=seeds, device=device)
        super().__init__(games, Compose(
            TimeLimitTruncation(),
            RenameTransform([(INFO, "battle_won")], [(INFO, "won")]),
            DTypeCastTransform(torch.bool, torch.float32, in_keys=[(INFO, "won")]),
            DTypeCastTransform(torch.int64, torch.float32,
                               in_keys=[(INFO, "dead_allies"), (INFO, "dead_enemies")]),
            # random actions (rand_action, check_env_specs) must respect SMAC's availability
            ActionMask(action_key=ACTION, mask_key=MASK),
        ))
        self.num_envs, self.seed = num_envs, seed
        self.episode_limit = int(registry[map_name]["limit"])

    def set_seed(self, seed: int | None = None, static_seed: bool = False) -> int | None:
        """StarCraft II fixes its seed when the game launches: pass ``seed`` to the constructor."""
        if seed is not None and seed != self.seed:
            raise ValueError(f"smacv2: StarCraft II games are seeded when they launch (seed="
                             f"{self.seed}); build SMACv2Task(seed={seed}) instead of set_seed")
        return seed

"""The ``seqcomm`` command (docs/method.md §7): LightningCLI in OmegaConf mode, plus the
``env-info``, ``config-reference``, ``sweep``, ``study`` and ``report`` commands. Bad input
ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import logging
import os
import pickle
import re
import signal
import sys
import warnings

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seqcomm.callbacks import (
    CollectionStatistics,
    RandomGenerators,
    RunCheckpoint,
    RunSummary,
    SaveOnInterrupt,
    Throughput,
)
from seqcomm.data import EpisodeData
from seqcomm.errors import ConfigError, NonFiniteError
from seqcomm.learner import QLearner


def wandb_key_configured() -> bool:
    """Whether W&B can log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


class SeqcommCLI(LightningCLI):
    """LightningCLI with env sizes linked into the model and seqcomm's loggers."""

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.link_arguments("data.info", "model.init_args.env_info", apply_on="instantiate")
        parser.add_argument("--run_name", type=str, default="run",
                            help="runs go to <trainer.default_root_dir>/<run_name>/version_<k>")
        parser.add_argument("--wandb", type=bool, default=True,
                            help="log to Weights & Biases (offline unless an API key is set)")
        parser.add_argument("--wandb_project", type=str, default="seqcomm")
        parser.add_argument("--tensorboard", type=bool, default=False,
                            help="also write TensorBoard event files")
        parser.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads (small MARL nets run fastest on one)")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a --ckpt_path file's hyperparameters right after parsing: check
        # that the file is a checkpoint first ('last' is resolved and checked below)
        # and holds the configured model's class and messenger (LightningCLI then merges its
        # hyperparameters over the config; they leave ``comm`` out, so it is kept from the
        # config, which the checkpoint was just checked against)
        sub = self.config.get("subcommand") or ""
        cfg = self.config.get(sub, self.config)
        ckpt = cfg.get("ckpt_path") if hasattr(cfg, "get") else None
        if not (ckpt and os.path.isfile(ckpt)):
            super()._parse_ckpt_path()
            return
        loaded = check_checkpoint(ckpt)
        check_model_matches(ckpt, loaded, cfg.model)
        check_hparams_known(ckpt, loaded)  # LightningCLI would pass each to the model
        comm = cfg.model.init_args.get("comm")
        super()._parse_ckpt_path()
        self.config.get(sub, self.config).model.init_args.comm = comm

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last":
            root = cfg.trainer.default_root_dir or "."
            found = sorted(glob.glob(os.path.join(root, cfg.run_name, "version_*",
                                                  "checkpoints", "last.ckpt")),
                           key=lambda p: int(p.split("version_")[1].split(os.sep)[0]))
            if not found:
                raise ConfigError(f"--ckpt_path last: no {cfg.run_name}/version_*/checkpoints/"
                                  f"last.ckpt under {root!r}; check --run_name and "
                                  "--trainer.default_root_dir, or pass a checkpoint file")
            cfg.ckpt_path = found[-1]
        elif ckpt is not None and not os.path.isfile(ckpt):
            raise ConfigError(f"--ckpt_path {ckpt!r} is not a file; pass an existing .ckpt "
                              "or 'last'")
        if ckpt == "last":  # an explicit file was checked in _parse_ckpt_path
            check_model_matches(cfg.ckpt_path, check_checkpoint(cfg.ckpt_path), cfg.model)
        accelerator = cfg.trainer.get("accelerator")
        if isinstance(accelerator, str):
            check_accelerator(accelerator)
        data = cfg.get("data")
        if data is not None and isinstance(data.get("device"), str):
            check_data_device(data.device, accelerator)

    def instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if cfg.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
        try:
            super().instantiate_classes()
        except (ValueError, ImportError) as err:
            text = " ".join(str(err).split())
            # a constructor's ValueError inside the model's class_path Union: its own message
            found = re.search(r"Union subtypes .*? Errors: - (.*?) - Expected a <class 'NoneType'>",
                              text)
            raise ConfigError(found.group(1) if found else text) from err

    def instantiate_trainer(self, **kwargs):
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if cfg.get("ckpt_path") is not None:  # the model is built; nothing is written yet
            check_state_matches(cfg.ckpt_path, self.model)
        if cfg.trainer.get("logger") in (None, True):
            kwargs["logger"] = self.loggers(cfg)
        if cfg.trainer.get("strategy") == "ddp" and self.model.ddp_unused_parameters:
            kwargs["strategy"] = "ddp_find_unused_parameters_true"  # what this learner needs
        return super().instantiate_trainer(**kwargs)

    def loggers(self, cfg) -> list[Logger]:
        """CSV always; W&B (offline without a key) and TensorBoard on request."""
        root = cfg.trainer.default_root_dir or "runs"
        csv = CSVLogger(save_dir=root, name=cfg.run_name)
        loggers: list[Logger] = [csv]
        if cfg.wandb:
            from lightning.pytorch.loggers import WandbLogger

            if not wandb_key_configured():
                os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            loggers.append(WandbLogger(project=cfg.wandb_project, save_dir=csv.log_dir,
                                       name=f"{cfg.run_name}-v{csv.version}"))
        if cfg.tensorboard:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=csv.log_dir, name="", version="tb"))
        return loggers


def check_checkpoint(path: str) -> dict:
    """A ``--ckpt_path`` file must load as a Lightning checkpoint (memory-mapped: cheap), with
    ``weights_only=True`` as LightningCLI then loads it (no code runs from the file)."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise ConfigError(f"--ckpt_path {path!r} is not a readable checkpoint (corrupt or "
                              "another format); pass a .ckpt written by seqcomm fit") from err
        raise ConfigError(f"--ckpt_path {path!r} holds objects that torch.load(weights_only="
                          "True) refuses; pass a .ckpt written by seqcomm fit") from err
    except Exception as err:  # text, truncated or foreign files fail in many ways
        raise ConfigError(f"--ckpt_path {path!r} is not a readable checkpoint (corrupt, "
                          f"truncated or another format: {type(err).__name__}); pass a .ckpt "
                          "written by seqcomm fit, e.g. an earlier one in its checkpoints/ "
                          "folder") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"--ckpt_path {path!r} is not a Lightning checkpoint (no "
                          "state_dict); pass a .ckpt written by seqcomm fit")
    return ckpt


def _class(path: str) -> object:
    """The class a ``class_path`` names (re-exports compare equal); the path if it does not
    import."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return path


def _short(path: str | None) -> str:
    return "null (no communication)" if path is None else path.rpartition(".")[2]


def _fix_hint(path: str) -> str:
    """How to fix a checkpoint/config mismatch, naming the checkpoint's run config if any."""
    run_config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                              "config.yaml")
    which = (f"its run's config ({run_config})" if os.path.isfile(run_config)
             else "the config it was trained with")
    return (f"resume with {which}, or drop --ckpt_path to start afresh with this config")


def check_model_matches(path: str, ckpt: dict, model_cfg) -> None:
    """The checkpoint must hold the configured model class (its ``hyper_parameters``'
    ``_class_path``, when saved) and a messenger exactly when the config sets ``comm``
    (``net.comm.*`` weights; ``comm`` is not among the saved hyperparameters)."""
    saved = (ckpt.get("hyper_parameters") or {}).get("_class_path")
    wanted = model_cfg.get("class_path")
    if saved and wanted and _class(saved) != _class(wanted):
        raise ConfigError(f"--ckpt_path {path!r} holds a {_short(saved)} model but the config "
                          f"builds {_short(wanted)}; {_fix_hint(path)}")
    comm = (model_cfg.get("init_args") or {}).get("comm")
    comm_path = None if comm is None else comm.get("class_path", str(comm))
    has_comm = any(k.startswith("net.comm.") for k in ckpt["state_dict"])
    if has_comm != (comm_path is not None):
        held = "a messenger" if has_comm else "no messenger (communication off)"
        raise ConfigError(f"--ckpt_path {path!r} holds a model with {held} but the config's "
                          f"model.init_args.comm is {_short(comm_path)}; {_fix_hint(path)}")


def init_parameters(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` takes: its ``__init__``'s, and its bases' while they
    forward ``**kwargs``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def check_hparams_known(path: str, ckpt: dict) -> None:
    """Every saved hyperparameter must still be an argument of the checkpoint's model class
    (checkpoints from before a refactor hold e.g. ``model_hidden`` / ``critic_hidden``, now the
    ``world_model`` / ``critic`` components)."""
    hparams = ckpt.get("hyper_parameters") or {}
    cls = _class(hparams.get("_class_path") or "")
    if not isinstance(cls, type):
        return
    obsolete = sorted(k for k in hparams if not k.startswith("_") and k not in
                      init_parameters(cls))
    if obsolete:
        raise ConfigError(f"--ckpt_path {path!r} holds hyperparameters {cls.__name__} no longer "
                          f"takes ({', '.join(obsolete)}; written before a refactor) and cannot "
                          "be resumed; start a new run (drop --ckpt_path)")


def check_state_matches(path: str, model: torch.nn.Module) -> None:
    """The checkpoint's weights must have the configured model's names and shapes (the
    messenger's settings, e.g. its class and sizes, are not in the checkpoint's
    hyperparameters)."""
    saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    shapes = [k for k in own if k in saved and tuple(own[k].shape) != tuple(saved[k].shape)]
    if not (missing or extra or shapes):
        return
    if shapes:
        k = shapes[0]
        example = f"{k} is {list(saved[k].shape)} there, {list(own[k].shape)} here"
    else:
        example = f"{(missing or extra)[0]} is {'missing there' if missing else 'extra there'}"
    comm = getattr(getattr(model, "net", None), "comm", None)
    raise ConfigError(
        f"--ckpt_path {path!r} does not fit the configured {type(model).__name__} "
        f"({type(comm).__name__ if comm is not None else 'no'} messenger): "
        f"{len(missing) + len(extra) + len(shapes)} weights differ in name or shape, e.g. "
        f"{example}; {_fix_hint(path)}")


def check_accelerator(accelerator: str) -> None:
    """``--trainer.accelerator`` gpu/cuda/mps needs that device on this machine."""
    name = accelerator.lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--trainer.accelerator={accelerator}: no CUDA GPU is visible on this "
                          "machine; use --trainer.accelerator=cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--trainer.accelerator={accelerator}: MPS is not available on this "
                          "machine; use --trainer.accelerator=cpu (or auto)")


def check_data_device(device: str, accelerator: str | None) -> None:
    """``--data.device`` names a device this machine has and the trainer's accelerator uses
    (the policy acts where the model lives; ``auto`` follows the trainer)."""
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"--data.device={device}: not a torch device; use auto, cpu or "
                          "cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--data.device={device}: no CUDA GPU is visible on this machine; "
                          "use --data.device=auto (the trainer's device) or cpu")
    trainer_kind = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}.get(str(accelerator).lower())
    if trainer_kind is not None and trainer_kind != kind:
        raise ConfigError(f"--data.device={device} but --trainer.accelerator={accelerator}: the "
                          "environments must run where the model does; use --data.device=auto")


class _DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip:" advertisements (litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


def quiet_library_notices() -> None:
    """Filter the known-harmless library warnings and tips at their source, by message (other
    warnings still show)."""
    for message in (
        r"You are using the `dataloader_iter` step flavor",
        r"Found `dataloader_iter` argument in the `training_step`",
        r"Using ModelCheckpoint with manual optimization",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    ):
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in logger.filters):
        logger.addFilter(_DropTips())


def lightning_main(args: list[str] | None) -> None:
    # "Seed set to" would precede an error line on stderr; config.yaml and summary.json
    # record the seed
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    SeqcommCLI(
        QLearner,
        EpisodeData,
        subclass_mode_model=True,
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults={
            "default_root_dir": "runs",
            "max_epochs": 1,
            "val_check_interval": 200,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 10,
            "enable_model_summary": False,
            "callbacks": [RunCheckpoint(save_last=True, every_n_train_steps=200),
                          RandomGenerators(), CollectionStatistics(), Throughput(),
                          RunSummary(), SaveOnInterrupt()],
        },
        args=args,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``seqcomm`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    quiet_library_notices()
    try:
        if args and args[0] == "env-info":
            from seqcomm.commands import env_info_main

            env_info_main(args[1:])
        elif args and args[0] == "sweep":
            from seqcomm.commands import sweep_main

            sweep_main(args[1:])
        elif args and args[0] == "config-reference":
            from seqcomm.config_reference import main as config_reference_main

            config_reference_main(args[1:])
        elif args and args[0] in ("study", "report"):
            from seqcomm.study.commands import report_main, study_main

            (study_main if args[0] == "study" else report_main)(args[1:])
        else:
            lightning_main(None if argv is None else args)
    except ConfigError as err:
        print(f"seqcomm: error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as err:
        print(f"seqcomm: error: {err}", file=sys.stderr)
        sys.exit(1)
    except SIGTERMException:  # SaveOnInterrupt has saved and said where
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:  # jsonargparse's ArgumentError when exit_on_error is off
        if type(err).__name__ != "ArgumentError":
            raise
        print(f"seqcomm: error: {_first_line(str(err))}", file=sys.stderr)
        sys.exit(2)


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "invalid arguments (see seqcomm --help)"
    # a class_path (Union) error names the real problem only under "Errors:"
    for i, line in enumerate(lines):
        if line.startswith("- Problem with given class_path"):
            detail = []
            for more in lines[i + 1:]:
                if more.startswith(("- ", "Given value")):
                    break
                detail.append(more)
            return _tidy(" ".join([lines[0], line[2:], *detail]))
    taken, rest = lines[:2], lines[2:]
    while taken[-1].endswith(":") and rest:  # a nested key (data.env's init_args): its problem
        taken.append(rest.pop(0))
    return _tidy(" ".join(taken))


def _tidy(text: str) -> str:
    """Drop the noise of a component's error: the factory's type and the whole class_path
    namespace (the key path and the problem remain)."""
    text = re.sub(r"Type .+? expects a function or a callable class: ", "", text)
    cut = text.find(". Got value: Namespace(")
    return text[:cut + 1] if cut >= 0 else text


if __name__ == "__main__":
    main()

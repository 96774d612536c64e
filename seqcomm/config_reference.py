"""Config reference generated from the constructor signatures (``seqcomm config-reference``).

Walks the data module, the learners, the messengers, the world model, the team critic, the
implicit solver and the environments, and prints one markdown table per class: key, type,
default and meaning (from the "Args:" section of the class or ``__init__`` docstring).
``docs/config.md`` is this output; ``tests/test_config_reference.py`` checks that it is up to
date.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from typing import Literal, NamedTuple, get_args, get_origin

# docstring_parser is what jsonargparse (and so ``seqcomm fit --model.help``) reads
# docstrings with; it is installed with jsonargparse, so the two print the same meanings.
import docstring_parser

SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Data module", "Keys are written as `data.<key>`.", ("seqcomm.data.EpisodeData",)),
    ("Learners", "Keys are written as `model.init_args.<key>`; `model.class_path` picks the "
     "learner.", (
        "seqcomm.learner.QLearner",
        "seqcomm.seqcomm_dfl.SeqCommDFL",
        "seqcomm.rgmcomm_learner.RGMCommLearner",
        "seqcomm.seqcomm_learner.SeqCommLearner",
    )),
    ("Messengers", "Keys are written as `model.init_args.comm.init_args.<key>`; "
     "`model.init_args.comm.class_path` picks the messenger. `hidden_dim` and `n_agents` are "
     "passed by the learner (its `hidden_dim`, the task's agent count).", (
        "seqcomm.comm.commnet.CommNet",
        "seqcomm.comm.tarmac.TarMAC",
        "seqcomm.comm.rgmcomm.RGMComm",
        "seqcomm.comm.stackelberg.SeqCommMessenger",
        "seqcomm.comm.launching.LaunchingMessenger",
    )),
    ("World model, team critic and implicit solver", "`SeqCommDFL`'s components: keys are "
     "written as `model.init_args.world_model.init_args.<key>`, "
     "`model.init_args.critic.init_args.<key>` and `model.init_args.implicit.init_args.<key>` "
     "(each with its `class_path`). The learner passes the task's sizes (`state_dim`, "
     "`obs_dim`, `n_agents`, `n_actions`) and the message size (`msg_dim`). `SeqCommLearner` "
     "takes a `world_model` the same way (no messages; default `hidden_dim` 64) and "
     "`RGMCommLearner` a `critic` (its state: the joint observation).", (
        "seqcomm.dfl.world_model.WorldModel",
        "seqcomm.dfl.critic.TeamCritic",
        "seqcomm.dfl.factored_critic.FactoredCritic",
        "seqcomm.dfl.implicit_gradient.ImplicitSolver",
    )),
    ("Environments", "Keys are written as `data.env.init_args.<key>`; `data.env.class_path` "
     "picks the task. `num_envs`, `seed` and `device` are passed by the data module.", (
        "seqcomm.envs.matrix.MatrixGame",
        "seqcomm.envs.maze.Maze",
        "seqcomm.envs.hospital.Hospital",
        "seqcomm.envs.microcombat.MicroCombat",
        "seqcomm.envs.smacv2.SMACv2Task",
        "seqcomm.envs.vmas.VmasTask",
    )),
)

HEADER = """# Configuration reference

Generated from the constructor signatures and docstrings; do not edit by hand. Regenerate with

    seqcomm config-reference > docs/config.md

(`python -m seqcomm.config_reference` prints the same); `tests/test_config_reference.py` fails
when a signature changes without regenerating. `seqcomm fit --model.help <class>` (e.g.
`seqcomm fit --model.help seqcomm.seqcomm_dfl.SeqCommDFL`) prints the same keys for one
class. The method behind the keys: [method.md](method.md).
"""

class Key(NamedTuple):
    """One constructor parameter."""

    name: str
    type: str
    default: str
    meaning: str


def load(path: str) -> type:
    """The class at a dotted ``path``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def meanings(cls: type) -> dict[str, str]:
    """Parameter descriptions from the "Args:" section of the class and ``__init__``."""
    out: dict[str, str] = {}
    for doc in (cls.__init__.__doc__, cls.__doc__):
        # "Args (besides QLearner's):" -> "Args:", which the parser recognises
        text = re.sub(r"^(\s*)Args \([^\n]*\):", r"\1Args:", inspect.cleandoc(doc or ""),
                      flags=re.M)
        for param in docstring_parser.parse(text, docstring_parser.DocstringStyle.GOOGLE).params:
            out.setdefault(param.arg_name, " ".join((param.description or "").split()))
    return out


def keys(cls: type) -> list[Key]:
    """The named parameters of ``cls.__init__`` (not ``self``, ``*args``, ``**kwargs``)."""
    described = meanings(cls)
    out = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(
            p.annotation)
        alias = getattr(sys.modules[cls.__init__.__module__], kind, None)
        if get_origin(alias) is Literal:  # a named choice type: print the choices
            kind = f"Literal[{', '.join(map(repr, get_args(alias)))}]"
        default = ("required" if p.default is p.empty
                   else f"{p.default.__module__}.{p.default.__qualname__}"
                   if inspect.isclass(p.default) else repr(p.default))  # a component's class
        out.append(Key(p.name, "" if p.annotation is p.empty else kind, default,
                       described.get(p.name, "")))
    return out


def _cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text else text


def table(path: str) -> str:
    """The markdown section of one class."""
    cls = load(path)
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    lines = [f"### `{path}`", "", " ".join(summary.split()), ""]
    parents = [base for base in cls.__bases__ if "seqcomm" in base.__module__
               and "*args" in str(inspect.signature(cls.__init__))]
    for base in parents:
        lines += [f"Also takes every key of `{base.__module__}.{base.__name__}`.", ""]
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key in keys(cls):
        default = key.default if key.default == "required" else _cell(key.default, True)
        lines.append(f"| `{key.name}` | {_cell(key.type, True)} | {default} "
                     f"| {_cell(key.meaning)} |")
    return "\n".join(lines) + "\n"


def reference() -> str:
    """The whole of ``docs/config.md``."""
    parts = [HEADER]
    for title, note, paths in SECTIONS:
        parts += [f"## {title}\n", f"{note}\n"]
        parts.extend(table(path) for path in paths)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Print the reference (``seqcomm config-reference``)."""
    parser = argparse.ArgumentParser(prog="seqcomm config-reference",
                                     description="Print docs/config.md to stdout.")
    parser.parse_args(argv)
    sys.stdout.write(reference())


if __name__ == "__main__":
    main()

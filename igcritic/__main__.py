"""The ``igcritic`` command: one table of commands, each a typed function over its dataclass config.

    igcritic collect --config configs/collect/embedded.yaml     # rollouts + latents + labels -> Zarr
    igcritic inspect runs/embedded/store.zarr                   # summary + integrity check
    igcritic fit --config configs/fit/embedded.yaml             # LightningCLI (also validate, test)
    igcritic export runs/fit/embedded/version_0/checkpoints/last.ckpt --out runs/embedded/critic
    igcritic generate checkpoints/embedded --prompts.texts '["How do I bake bread?"]' --search.mode latent
    igcritic serve checkpoints/embedded --port 8000                        # OpenAI-compatible chat API
    igcritic eval --config configs/eval/embedded.yaml

:data:`COMMANDS` maps a name to ``module:function`` (imported only when the command runs, so ``--help`` stays
fast) and its one-line help, like litgpt's ``PARSER_DATA``. Every function but ``fit``'s takes ONE dataclass
config: :func:`parse_config` turns its fields into flags (nested dataclasses into groups such as
``--prompts.source`` or ``--search.num_candidates``, types checked at parse time), its fields without a
default into positional arguments, its attribute docstrings into ``--help``, and adds ``--config FILE.yaml``.
``fit``/``validate``/``test`` go to the LightningCLI of :func:`igcritic.fit.main`. Any
:class:`~igcritic.IgcriticError` is printed as one line and exits 2; Ctrl-C or SIGTERM
(:class:`~igcritic.Interrupted`) as one line saying what was kept and the command that resumes, exit
``128 + signum`` (130, 143).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shlex
import signal
import sys
import typing
from typing import Any, NamedTuple

from rich.console import Console

from igcritic import IgcriticError, __version__, interruptible, usage_error


class Command(NamedTuple):
    target: str
    """``module:function``, imported when the command runs."""
    help: str


COMMANDS: dict[str, Command] = {
    "collect": Command(
        "igcritic.collect:main", "sample rollouts, capture latents, label costs/rewards, write a Zarr store"
    ),
    "inspect": Command(
        "igcritic.store.inspect:main", "summarise a store and validate its integrity (exit 1 if broken)"
    ),
    "relabel": Command(
        "igcritic.relabel:main", "recompute a store's cost/reward labels from its latents into a new store"
    ),
    "fit": Command("igcritic.fit:main", "train the critic (LightningCLI; also: validate, test)"),
    "validate": Command("igcritic.fit:main", "LightningCLI validate"),
    "test": Command("igcritic.fit:main", "LightningCLI test"),
    "export": Command(
        "igcritic.export:main", "turn a Lightning checkpoint into a slim checkpoints/<name>/ artifact"
    ),
    "generate": Command("igcritic.guard:main", "guarded generation with an exported critic"),
    "serve": Command("igcritic.serve:main", "serve a guard on an OpenAI-compatible chat API (LitServe)"),
    "eval": Command(
        "igcritic.eval.run:main", "compare decoding methods: reward, cost, safety rate, latency; table, plots"
    ),
}
LIGHTNING = ("fit", "validate", "test")
"""Commands parsed by the LightningCLI (its own subcommands), not by :func:`parse_config`."""


def _usage() -> str:
    lines = ["usage: igcritic <command> [--help] ...  |  igcritic --version", "", "commands:"]
    lines += [f"  {name:<9} {cmd.help}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def resolve(name: str):
    """The function of command ``name`` (imports its module)."""
    module, _, func = COMMANDS[name].target.partition(":")
    return getattr(importlib.import_module(module), func)


def config_type(func) -> type:
    """The dataclass a command function takes (its one parameter's annotation)."""
    hints = typing.get_type_hints(func)
    params = [p for p in hints if p != "return"]
    cls = hints[params[0]] if len(params) == 1 else None
    if cls is None or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{func.__qualname__} must take one dataclass config")
    return cls


def parse_config(cls: type, args: list[str], prog: str | None = None) -> Any:
    """An instance of the dataclass ``cls`` from command-line ``args`` (and ``--config`` files)."""
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    class Parser(ArgumentParser):
        def error(self, message, ex=None):
            if not self.exit_on_error:
                return super().error(message, ex)
            usage_error(self, message, ex)

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = Parser(prog=prog, description=(cls.__doc__ or "").strip(), exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these flags (configs/*/)")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    positional = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    args = negative_values(args)
    docs = _attribute_docs(cls)
    for name in positional:
        parser.add_argument(name, type=hints[name], help=docs.get(name))
    parser.add_class_arguments(cls, nested_key=None, skip=set(positional))
    items = _dataclass_lists(cls)
    for name, item in items.items():  # as plain dicts, so --print_config writes them (and reads them back)
        parser.set_defaults({name: [dataclasses.asdict(v) for v in _default(cls, name)]})
    init = parser.instantiate(parser.parse_args(_repeated_lists(cls, _bare_bools(cls, args))))
    values = {f.name: getattr(init, f.name) for f in fields}
    for name, item in items.items():
        values[name] = [item(**v) if isinstance(v, dict) else v for v in values[name] or []]
    return cls(**values)


def _dataclass_lists(cls: type) -> dict[str, type]:
    """Fields typed ``list[SomeDataclass]``: their item type."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
            out[name] = args[0]
    return out


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _bare_bools(cls: type, args: list[str]) -> list[str]:
    """``--overwrite`` alone means ``--overwrite true`` for the config's bool fields (the way flags read)."""
    hints = typing.get_type_hints(cls)
    flags = {f"--{f.name}" for f in dataclasses.fields(cls) if hints[f.name] is bool}
    out = []
    for i, a in enumerate(args):
        out.append(a)
        if a in flags and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out.append("true")
    return out


def _repeated_lists(cls: type, args: list[str]) -> list[str]:
    """A flag of a ``list[str] | str`` field given again appends (``--run A --run B`` as jsonargparse's
    ``--run A --run+ B``); otherwise the last one would silently win."""
    hints = typing.get_type_hints(cls)
    flags = {
        f"--{f.name}"
        for f in dataclasses.fields(cls)
        if str in typing.get_args(hints[f.name]) and list[str] in typing.get_args(hints[f.name])
    }
    seen: set[str] = set()
    out = []
    for a in args:
        flag, eq, value = a.partition("=")
        if flag in flags:
            if flag in seen:
                a = f"{flag}+{eq}{value}"
            seen.add(flag)
        out.append(a)
    return out


def negative_values(args: list[str]) -> list[str]:
    """``--flag -1e9`` as ``--flag=-1e9``: argparse reads a value like ``-1e9`` or ``-inf`` as an option (it
    knows only ``-1`` and ``-0.5`` as numbers), so a negative budget would not parse."""
    out: list[str] = []
    for a in args:
        if out and out[-1].startswith("--") and "=" not in out[-1] and a.startswith("-"):
            try:
                float(a)
            except ValueError:
                pass
            else:
                out[-1] = f"{out[-1]}={a}"
                continue
        out.append(a)
    return out


def _attribute_docs(cls: type) -> dict[str, str]:
    try:
        from docstring_parser import parse_from_object

        return {p.arg_name: p.description for p in parse_from_object(cls).params if p.description}
    except Exception:  # noqa: BLE001 - help text only
        return {}


def run_command(name: str, args: list[str]) -> int:
    """Parse ``args`` for command ``name`` and run it; its exit status."""
    func = resolve(name)
    if name in LIGHTNING:  # the command line itself goes as None (LightningCLI warns when given it twice)
        func(None if sys.argv[1:] == [name, *args] else [name, *args])
        return 0
    result = func(parse_config(config_type(func), args, prog=f"igcritic {name}"))
    return result if isinstance(result, int) else 0


def resume_command(name: str, args: list[str], flags: dict[str, str]) -> str:
    """``igcritic NAME ARGS`` with ``flags`` set (replacing any earlier value), ready to paste."""
    keep: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in flags:
            skip = "=" not in a
            continue
        keep.append(a)
    return shlex.join(["igcritic", name, *keep, *(x for kv in flags.items() for x in kv)])


def interrupted_line(name: str, args: list[str], e: KeyboardInterrupt) -> tuple[str, int]:
    """The one line printed for an interrupted command, and its exit status ``128 + signum``."""
    signum = getattr(e, "signum", signal.SIGINT)
    saved, flags = getattr(e, "saved", ""), getattr(e, "resume", {})
    line = f"interrupted by {signal.Signals(signum).name}"
    line += f"; {saved}" if saved else ""
    if flags:
        line += f"; resume with: {resume_command(name, args, flags)}"
    elif getattr(e, "rerun", False):
        line += f"; start again with the same command: {resume_command(name, args, {})}"
    return line, 128 + signum


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar per model load
    if not args or args[0] in ("-h", "--help", "help"):
        Console().print(_usage(), highlight=False)
        return 0
    if args[0] in ("--version", "-V"):
        Console().print(f"igcritic {__version__}", highlight=False)
        return 0
    if args[0] not in COMMANDS:
        Console(stderr=True).print(f"unknown command {args[0]!r}\n\n{_usage()}", highlight=False)
        return 2
    err = Console(stderr=True, soft_wrap=True)
    try:
        with interruptible(sigterm=args[0] not in LIGHTNING):  # Lightning has its own (igcritic.fit)
            return run_command(args[0], args[1:])
    except IgcriticError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)  # one line
        return 2
    except KeyboardInterrupt as e:
        line, status = interrupted_line(args[0], args[1:], e)
        err.print(line, highlight=False, markup=False)
        return status


if __name__ == "__main__":
    sys.exit(main())

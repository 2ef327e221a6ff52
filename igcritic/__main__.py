"""The ``igcritic`` command: one table of commands, each a typed function over its dataclass config.

    igcritic collect --config configs/collect/embedded.yaml     # rollouts + latents + labels -> Zarr
    igcritic inspect runs/embedded/store.zarr                   # summary + integrity check
    igcritic fit --config configs/fit/embedded.yaml             # LightningCLI (also validate, test)
    igcritic export runs/fit/.../last.ckpt --out checkpoints/embedded --search.num_candidates 8
    igcritic generate checkpoints/embedded --prompts.texts '["How do I bake bread?"]' --search.mode latent
    igcritic serve checkpoints/embedded --port 8000                        # OpenAI-compatible chat API
    igcritic eval --config configs/eval/embedded.yaml

:data:`COMMANDS` maps a name to ``module:function`` (imported only when the command runs, so ``--help`` stays
fast) and its one-line help, like litgpt's ``PARSER_DATA``. Every function but ``fit``'s takes ONE dataclass
config: :func:`parse_config` turns its fields into flags (nested dataclasses into groups such as
``--prompts.source`` or ``--search.num_candidates``, types checked at parse time), its fields without a
default into positional arguments, its attribute docstrings into ``--help``, and adds ``--config FILE.yaml``.
``fit``/``validate``/``test`` go to the LightningCLI of :func:`igcritic.fit.main`. Any
:class:`~igcritic.IgcriticError` is printed as one line and exits 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import typing
from typing import Any, NamedTuple

from rich.console import Console

from igcritic import IgcriticError


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
    "fit": Command("igcritic.fit:main", "train the critic (LightningCLI; also: validate, test)"),
    "validate": Command("igcritic.fit:main", "LightningCLI validate"),
    "test": Command("igcritic.fit:main", "LightningCLI test"),
    "export": Command(
        "igcritic.export:main", "turn a Lightning checkpoint into a slim checkpoints/<name>/ artifact"
    ),
    "generate": Command("igcritic.guard:main", "guarded generation with an exported critic"),
    "serve": Command("igcritic.serve:main", "serve a guard on an OpenAI-compatible chat API (LitServe)"),
    "eval": Command(
        "igcritic.evaluate:main", "compare decoding methods: reward, cost, safety rate, latency; table, plots"
    ),
}
LIGHTNING = ("fit", "validate", "test")
"""Commands parsed by the LightningCLI (its own subcommands), not by :func:`parse_config`."""


def _usage() -> str:
    lines = ["usage: igcritic <command> [--help] ...", "", "commands:"]
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

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip(), exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these flags (configs/*/)")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    positional = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    docs = _attribute_docs(cls)
    for name in positional:
        parser.add_argument(name, type=hints[name], help=docs.get(name))
    parser.add_class_arguments(cls, nested_key=None, skip=set(positional))
    init = parser.instantiate(parser.parse_args(args))
    return cls(**{f.name: getattr(init, f.name) for f in fields})


def _attribute_docs(cls: type) -> dict[str, str]:
    try:
        from docstring_parser import parse_from_object

        return {p.arg_name: p.description for p in parse_from_object(cls).params if p.description}
    except Exception:  # noqa: BLE001 - help text only
        return {}


def run_command(name: str, args: list[str]) -> int:
    """Parse ``args`` for command ``name`` and run it; its exit status."""
    func = resolve(name)
    if name in LIGHTNING:
        func([name, *args])
        return 0
    result = func(parse_config(config_type(func), args, prog=f"igcritic {name}"))
    return result if isinstance(result, int) else 0


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args or args[0] in ("-h", "--help", "help"):
        Console().print(_usage(), highlight=False)
        return 0
    if args[0] not in COMMANDS:
        Console(stderr=True).print(f"unknown command {args[0]!r}\n\n{_usage()}", highlight=False)
        return 2
    try:
        return run_command(args[0], args[1:])
    except IgcriticError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())

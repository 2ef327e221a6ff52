"""The ``igcritic`` command.

    igcritic collect --config configs/collect/embedded.yaml     # rollouts + latents + labels -> Zarr
    igcritic inspect runs/embedded/store.zarr                   # summary + integrity check
    igcritic fit --config configs/fit/embedded.yaml             # LightningCLI (also validate, test)
    igcritic export runs/fit/.../best.ckpt --out checkpoints/embedded
    igcritic generate checkpoints/embedded --prompts "How do I bake bread?"
    igcritic eval --config configs/eval/embedded.yaml

fit/validate/test go to LightningCLI; the other commands are typed functions or dataclasses parsed by
jsonargparse, so their signatures and docstrings are their flags and ``--help``.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console

COMMANDS = {
    "collect": "sample rollouts, capture latents, label costs/rewards, write a Zarr store",
    "inspect": "summarise a store and validate its integrity (exit 1 if broken)",
    "fit": "train the critic (LightningCLI; also: validate, test)",
    "validate": "LightningCLI validate",
    "test": "LightningCLI test",
    "export": "turn a Lightning checkpoint into a slim checkpoints/<name>/ artifact",
    "generate": "guarded generation with an exported critic",
    "eval": "compare decoding methods: reward, cost, safety rate, latency; table, CSV/JSON, plots",
}


def _usage() -> str:
    lines = ["usage: igcritic <command> [--help] ...", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def _collect(args: list[str]) -> int:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from igcritic.collect import CollectConfig, describe, run

    parser = ArgumentParser(prog="igcritic collect", description=CollectConfig.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (configs/collect/*.yaml)")
    parser.add_class_arguments(CollectConfig, nested_key=None)
    ns = parser.parse_args(args)
    init = parser.instantiate(ns)
    cfg = CollectConfig(**{k: v for k, v in vars(init).items() if k in CollectConfig.__dataclass_fields__})
    stats = run(cfg)
    if stats is not None:  # every rank reports its own shard
        Console(stderr=True).print(describe(stats, cfg), highlight=False)
    return 0


def _function_command(func, prog: str, args: list[str]) -> int:
    from jsonargparse import CLI

    result = CLI(func, args=args, prog=prog, as_positional=True)
    return int(result) if isinstance(result, int) else 0


def inspect(store: str, budget: float | None = None) -> int:
    """Summarise a store (trajectories, tokens, cost/reward, safe share, size, provenance) and validate it.

    Args:
        store: Store path or fsspec URL written by ``igcritic collect``.
        budget: Budget d for the safe share S_T <= d (default: the store's recorded budget).
    """
    from igcritic.store import inspect_store

    return inspect_store(store, budget=budget)


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args or args[0] in ("-h", "--help", "help"):
        Console().print(_usage(), highlight=False)
        return 0
    cmd, rest = args[0], args[1:]
    try:
        if cmd in ("fit", "validate", "test"):
            from igcritic.fit import cli_main

            cli_main([cmd, *rest])
            return 0
        if cmd == "collect":
            return _collect(rest)
        if cmd == "inspect":
            return _function_command(inspect, "igcritic inspect", rest)
        if cmd == "export":
            from igcritic.export import export_main

            return _function_command(export_main, "igcritic export", rest)
        if cmd == "generate":
            from igcritic.guard import generate_main

            return _function_command(generate_main, "igcritic generate", rest)
        if cmd == "eval":
            from igcritic.evaluate import eval_main

            return _function_command(eval_main, "igcritic eval", rest)
    except ValueError as e:  # every igcritic error is a one-line ValueError subclass
        if type(e).__module__.startswith("igcritic"):
            Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
            return 2
        raise
    Console(stderr=True).print(f"unknown command {cmd!r}\n\n{_usage()}", highlight=False)
    return 2


if __name__ == "__main__":
    sys.exit(main())

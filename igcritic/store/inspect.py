"""Checking a store: ``igcritic inspect STORE [--budget D]`` summarises it and lists every integrity problem.

    igcritic inspect runs/embedded/store.zarr

:func:`validate_store` reads every committed row once (latents chunk by chunk), so it also finds what a
killed disk or a hand edit left: lost chunks (they would read back as zeros), broken offsets, NaN/inf.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.core.sync import sync

from igcritic.store.layout import (
    EVERY_CHUNK,
    PROMPTS,
    SHARD,
    TOKEN_ARRAYS,
    TRAJ_ARRAYS,
    Shard,
    StoreError,
    filesystem,
    open_root,
    started_shards,
)
from igcritic.store.layout import read_rows as _read
from igcritic.store.lock import live_writers
from igcritic.store.reader import StoreReader
from igcritic.store.writer import TrajectoryBatch


def validate_store(path: str | os.PathLike, read_rows: bool = True) -> list[str]:
    """Every integrity problem of a store (empty list: valid). Scans all latents chunk by chunk for
    NaN/inf; ``read_rows=False`` checks only the metadata and that every committed chunk exists (what
    ``fit`` runs before training: no data is read)."""
    try:
        root = open_root(path, "r")
    except StoreError as e:
        return [str(e)]
    attrs = dict(root.attrs)
    if missing := [k for k in ("hidden_size", "chunk_tokens", "prompts_count") if k not in attrs]:
        return [f"root attrs lack {missing}"]
    n_prompts, count = (root[PROMPTS].shape[0] if PROMPTS in root else -1), attrs["prompts_count"]
    p = [] if n_prompts == count else [f"prompts array has {n_prompts} entries, attrs say {count}"]
    try:
        shards = started_shards(root)
    except StoreError as e:
        return [*p, str(e)]
    for shard in shards:  # a shard without a manifest holds nothing to check
        try:
            p += [f"{shard.name}: {msg}" for msg in _validate_shard(shard, n_prompts, attrs, read_rows)]
        except StoreError as e:  # an array's chunk cannot be decoded
            p.append(str(e))
        except (ValueError, TypeError, KeyError) as e:  # an array's zarr.json cannot be decoded
            p.append(
                f"{shard.name}: an array's metadata (zarr.json) cannot be read ({type(e).__name__}); restore "
                "the file or recollect the store with --overwrite"
            )
    return p


def _missing_chunks(a: zarr.Array, rows: int) -> list[int]:
    """Row-chunk indices below ``rows`` whose chunk object is absent (it would read back as fill values)."""
    aa, step = a.async_array, int(a.chunks[0])
    rest = (0,) * (a.ndim - 1)
    keys = [
        f"{aa.store_path.path}/{aa.metadata.encode_chunk_key((i, *rest))}".lstrip("/")
        for i in range(math.ceil(rows / step))
    ]

    async def probe() -> list[bool]:
        return list(await asyncio.gather(*(aa.store_path.store.exists(k) for k in keys)))

    return [i for i, ok in enumerate(sync(probe()) if keys else []) if not ok]


def _validate_shard(shard: Shard, n_prompts: int, attrs: dict, read_rows: bool) -> list:
    g, n_traj, n_tok = shard.group, shard.n_traj, shard.n_tok
    H, step, done = int(attrs["hidden_size"]), int(attrs["chunk_tokens"]), set(shard.batches_done)
    want = {k: (n_tok, d) for k, d in TOKEN_ARRAYS.items()} | {k: (n_traj, d) for k, d in TRAJ_ARRAYS.items()}
    want["traj_offsets"] = (n_traj + 1, "int64")
    p = [f"array {k} is missing" for k in want if k not in g]
    p += [
        f"{k} has shape {g[k].shape} dtype {g[k].dtype}; the manifest needs >= {n} rows of {d}"
        for k, (n, d) in want.items()
        if k in g and (g[k].shape[0] < n or str(g[k].dtype) != d)
    ]
    if "latents" in g and g["latents"].shape[1:] != (H,):
        p.append(f"latents width {g['latents'].shape[1:]} is not hidden_size {H}")
    if p:
        return p
    # A lost chunk reads back as zeros: every chunk holding committed rows must exist.
    for k in want if g.attrs.get(EVERY_CHUNK) else ("latents", "token_ids"):
        if k in g and (lost := _missing_chunks(g[k], want[k][0])):
            c = int(g[k].chunks[0])
            first = ", ".join(f"{i} (rows {i * c}-{min((i + 1) * c, want[k][0]) - 1})" for i in lost[:3])
            many = len(lost) > 1
            p.append(
                f"{k} chunk{'s' if many else ''} {first}{' ...' if len(lost) > 3 else ''} "
                f"{'are' if many else 'is'} missing ({len(lost)} of {math.ceil(want[k][0] / c)} chunks): "
                "those rows would read back as zeros; restore the files or recollect the store with "
                "--overwrite"
            )
    if p or not read_rows:
        return p
    # the invariants every appended batch was checked for (the latents are scanned below, chunk by chunk)
    rows = {k: _read(g, k, 0, n_tok) for k in ("token_ids", "cost_prefix")}
    traj = {k: _read(g, k, 0, n_traj) for k in ("traj_len", "traj_prompt", "traj_reward", "traj_finished")}
    shard = TrajectoryBatch(latents=np.zeros((n_tok, 0), np.float16), **rows, **traj)
    if p := shard.validate():
        return p
    if (_read(g, "traj_offsets", 0, n_traj + 1) != shard.offsets).any():
        return [
            "traj_offsets differ from the trajectories' lengths (trajectory i holds traj_len[i] + 1 rows)"
        ]
    if not np.allclose(_read(g, "traj_cost", 0, n_traj), shard.traj_cost, equal_nan=True):
        p.append("traj_cost differs from cost_prefix at the trajectories' last rows")
    if (shard.traj_prompt >= n_prompts).any():
        p.append(f"traj_prompt outside [0, {n_prompts})")
    batch_ids = _read(g, "traj_batch", 0, n_traj)
    seen = set(batch_ids.tolist())
    if not seen <= done:
        p.append("trajectories belong to batches missing from the manifest's batches_done")
    if lost := sorted(done - seen):
        p.append(
            f"batch {lost[0]}{f' and {len(lost) - 1} more' if len(lost) > 1 else ''} is in batches_done but "
            "has no trajectories"
        )
    if n_traj and (np.diff(batch_ids) != 0).sum() + 1 != len(seen):
        p.append("a batch's trajectories are not contiguous in traj_batch")
    per_batch = (attrs.get("generation") or {}).get("batch_size")
    if per_batch and n_traj and int(np.unique(batch_ids, return_counts=True)[1].max()) > int(per_batch):
        p.append(f"a batch holds more than the {per_batch} trajectories of generation.batch_size")
    vocab = (attrs.get("policy") or {}).get("vocab_size")
    if vocab and n_tok and int(rows["token_ids"].max()) >= int(vocab):
        p.append(f"token_ids hold ids >= the policy's vocab_size {vocab}")
    bad = 0
    for i in range(0, n_tok, step):
        try:
            bad += int((~np.isfinite(g["latents"][i : min(i + step, n_tok)])).sum())
        except Exception as e:  # noqa: BLE001 - a truncated or garbled chunk: any decoding error
            return p + [
                f"latents rows {i}-{min(i + step, n_tok) - 1} cannot be read ({type(e).__name__}); restore "
                "the files or recollect the store with --overwrite"
            ]
    return p + ([f"latents hold {bad} NaN/inf values"] if bad else [])


@dataclass
class InspectConfig:
    """Summarise a store (trajectories, tokens, cost/reward, safe share, size, provenance) and validate it."""

    store: str
    """Store path or fsspec URL written by ``igcritic collect``."""
    budget: float | None = None
    """Budget d for the safe share S_T <= d (default: the store's recorded budget)."""


def main(cfg: InspectConfig, console=None) -> int:
    """``igcritic inspect STORE``: print a summary of the store and its problems; exit status 0 if it is
    valid, else 1. ``console``: where to print (a rich Console; default stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    try:
        return _summarise(cfg, console, Table)
    except StoreError as e:  # unreadable metadata or a damaged array: the store is invalid
        console.print(f"[red]invalid:[/red] {e}", highlight=False, soft_wrap=True)
        return 1


def _summarise(cfg: InspectConfig, console, Table) -> int:
    r = StoreReader(cfg.store)
    attrs = r.attrs
    budget = attrs.get("budget") if cfg.budget is None else cfg.budget
    fs, root = filesystem(cfg.store)
    size = int(fs.du(root))
    rows = [
        ("trajectories", f"{r.n_traj}"),
        ("tokens", f"{r.n_tok}"),
        ("prompts", f"{r.n_prompts}"),
        ("hidden size", f"{r.hidden_size}"),
        ("shards", ", ".join(r.shards) or "none"),
        ("size on disk", f"{size:,} B" + (f" ({size / r.n_tok:,.0f} B/token)" if r.n_tok else "")),
    ]
    if r.n_traj:
        for label, x in (("cost S_T", r.traj_cost), ("reward", r.traj_reward)):
            q = np.quantile(x, [0.1, 0.5, 0.9])
            stats = f"min {x.min():.3g}  mean {x.mean():.3g}  p10 {q[0]:.3g}  p50 {q[1]:.3g}  p90 {q[2]:.3g}"
            rows.append((label, f"{stats}  max {x.max():.3g}"))
        if budget is not None:
            rows.append((f"safe share (S_T <= {budget:g})", f"{(r.traj_cost <= budget).mean():.1%}"))
        rows += [
            ("finished share", f"{r.traj_finished.mean():.1%}"),
            ("mean length", f"{r.traj_len.mean():.1f}"),
        ]
    for k, v in sorted(attrs.items()):
        s = json.dumps(v, default=str)
        rows.append((k, s if len(s) <= 100 else s[:97] + "..."))
    t = Table(title=f"igcritic store {cfg.store}", show_header=False)
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    problems = validate_store(cfg.store)
    writers = live_writers(cfg.store)
    for rank, holder in writers:
        h = holder or {}
        who = f"pid {h.get('pid')} on host {h.get('host')} since {h.get('since')}" if h else "another process"
        console.print(f"[yellow]writing:[/yellow] {SHARD.format(rank)} is being written by {who}")
    for msg in problems:
        console.print(f"[red]invalid:[/red] {msg}", soft_wrap=True)
    if not problems:
        ok = "valid so far (the committed snapshot; a writer is still adding to it)" if writers else "valid"
        console.print(f"[green]{ok}[/green]")
    return 1 if problems else 0

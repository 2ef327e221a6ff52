"""Relabel a store's cost and/or reward from the latents it already holds, into a NEW store: a changed latent
head refits the critic in minutes instead of a recollection of hours.

    igcritic relabel runs/embedded/store.zarr --out runs/embedded-new-reward/store.zarr --reward embedded
    igcritic relabel SRC --out DST --cost embedded --reward embedded --check

Only a head on the policy's own layers can relabel (a scorer whose ``decode_columns`` places its layers in
the store's latents: the embedded latent heads on a store that taps them); a text scorer, a head on another
policy or on layers the store does not tap is refused: recollect with it. The labels are the ones collect's
decode path computes (:func:`igcritic.collect.decoded_labels`): the features of the prefix of j answer
tokens are h_0, h_j and the mean of h_0..h_j at the head's layers; an EOS row is not part of the answer (its
prefix repeats the full answer's) and an answer is read to its first ``MAX_ANSWER_TOKENS`` tokens; cost
``S_t`` is the running max over prefixes (``S_0``: the empty answer), reward the full answer's value.

Where it differs from collect: collect labels the answer's text as it re-tokenises; here the store's own
rows are read, the sampled tokens' latents (the decode path's own view), stored as float16. An answer whose
text re-tokenises to other tokens (collect continued those on the rollout's cache), or whose prompt is
longer than the text path's ``MAX_PROMPT_TOKENS`` (collect cut it), gets the labels of the tokens the critic
trains on; ``--check`` measures the whole gap on a store.

Writing: ``SRC`` is only read (and refused while a collect writes it). It is copied into a hidden sibling of
``--out`` (``.NAME.relabel-XXXXXXXX``) held under its writer lock, the new labels and attributes are written
there, and the folder is renamed to ``--out`` in one step. So ``--out`` exists only complete; a failed run
removes its sibling, and one killed outright leaves only that sibling, which the next run names for you to
delete (the rerun itself starts over). ``--out`` gets a new store id, the new scorers' info and weights
fingerprints in its config (a new ``config_hash``: ``collect --resume`` on it needs the new scorers, on
``SRC`` the old ones) and a ``relabelled`` attribute saying where it came from.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from igcritic import IgcriticError, Interrupted, __version__
from igcritic.collect import prefix_rows, scorer_fingerprint
from igcritic.policy import PolicyIdentity
from igcritic.scorers import Scorer, load_scorer
from igcritic.scorers.latent import MAX_ANSWER_TOKENS
from igcritic.store.layout import (
    OWNER,
    Shard,
    config_hash,
    is_lock,
    local_path,
    open_root,
    read_rows,
    started_shards,
)
from igcritic.store.lock import WriterLock, live_writers

log = logging.getLogger(__name__)

ROLES = ("cost", "reward")
TEXT_KINDS = ("beaver", "seqcls", "guardlm")
"""Scorer spec kinds that read the answer's text (no latent head): refused before any model loads."""
SIBLING = ".{name}.relabel-{tag}"
"""The hidden sibling of ``--out`` a relabel writes into before renaming it to ``--out``."""


class RelabelError(IgcriticError):
    """A relabel cannot start or finish; the message says how to fix it."""


@dataclass
class RelabelConfig:
    """Recompute a store's cost and/or reward labels from its latents, into a new store (``--out``)."""

    src: str
    """The store to relabel (a local folder written by ``igcritic collect``; only read)."""
    out: str | None = None
    """The new store (a local path that must not exist)."""
    cost: str | None = None
    """New cost scorer spec (as collect takes it, e.g. ``embedded``): recomputes every ``cost_prefix`` row and
    ``traj_cost``. Unset: the costs are copied."""
    reward: str | None = None
    """New reward scorer spec: recomputes ``traj_reward``. Unset: the rewards are copied."""
    check: bool = False
    """First relabel with the store's OWN scorers and report how far that lands from the stored labels."""
    chunk_rows: int = 4096
    """Token rows read at a time (a trajectory longer than this is read whole)."""

    def validate(self) -> None:
        problems = []
        if not self.out:
            problems.append("--out is missing; give the path of the new store")
        if not (self.cost or self.reward):
            problems.append(
                "nothing to relabel; give --cost SPEC and/or --reward SPEC (e.g. --reward embedded)"
            )
        if self.chunk_rows < 1:
            problems.append(f"--chunk_rows {self.chunk_rows} must be >= 1")
        for flag, path in (("src", self.src), ("--out", self.out)):
            if path and local_path(path) is None:
                problems.append(
                    f"{flag} {path} is not a local path; relabel reads and writes local stores only"
                )
        if problems:
            raise RelabelError("; ".join(problems))
        out, src = Path(local_path(self.out)), Path(local_path(self.src))
        if out.exists() or out.is_symlink():
            raise RelabelError(
                f"--out {self.out} exists; relabel writes a new store and never over anything: pick another "
                "path (or remove that one yourself)"
            )
        if out.resolve().is_relative_to(src.resolve()):
            raise RelabelError(f"--out {self.out} is inside the store {self.src}; pick a path outside it")


@dataclass
class Labels:
    """One role's labels of one shard."""

    traj: np.ndarray
    """Per trajectory: S_T (cost) or the reward (N_traj,)."""
    prefix: np.ndarray | None = None
    """Cost only: S_t of every token row (N_tok,)."""


@dataclass
class Change:
    """A relabelled role: its mean over trajectories before and after."""

    role: str
    spec: str
    before: float
    after: float
    corr: float


@dataclass
class Gap:
    """``--check``: the store's own scorer relabelled against its stored labels (absolute differences)."""

    role: str
    rows: int
    """Values compared: every ``cost_prefix`` row for the cost, every trajectory for the reward."""
    median: float | None = None
    p99: float | None = None
    max: float | None = None
    skipped: str | None = None
    """Why the check of this role could not run (None: it ran)."""


@dataclass
class RelabelReport:
    """What ``igcritic relabel`` did (it prints this)."""

    out: str
    trajectories: int
    tokens: int
    changes: list[Change] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class StoredPolicy:
    """The store's policy as a scorer's ``decode_columns`` sees it: its identity (no weights are loaded)."""

    identity: PolicyIdentity


def run(cfg: RelabelConfig, load=None) -> RelabelReport:
    """Relabel ``cfg.src`` into ``cfg.out``. ``load(spec, role) -> Scorer`` builds a scorer (default
    :func:`~igcritic.scorers.load_scorer`; tests pass heads on a tiny policy)."""
    load = load or load_scorer
    cfg.validate()
    start = time.perf_counter()
    if busy := live_writers(cfg.src):
        raise RelabelError(
            f"{cfg.src} is being written (rank {busy[0][0]}, pid {(busy[0][1] or {}).get('pid')}); "
            "relabel it once that collect has finished"
        )
    root = open_root(cfg.src, "r")
    attrs = dict(root.attrs)
    policy = StoredPolicy(PolicyIdentity.from_dict(attrs["policy"]))
    new = {role: _latent_scorer(spec, role, policy, load) for role, spec in _given(cfg)}
    own = _own_scorers(attrs, policy, load) if cfg.check else {}
    shards = started_shards(root)
    for other in _leftovers(cfg.out):
        log.warning("%s is left from a relabel into %s that was killed; delete it", other, cfg.out)

    out = Path(local_path(cfg.out))
    tmp = out.parent / SIBLING.format(name=out.name, tag=uuid.uuid4().hex[:8])
    report = RelabelReport(cfg.out, sum(s.n_traj for s in shards), sum(s.n_tok for s in shards))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(
            Path(local_path(cfg.src)), tmp, ignore=lambda _, names: [n for n in names if is_lock(n)]
        )
        lock = WriterLock(tmp, 0)
        try:
            dst = open_root(tmp, "r+")
            if [(s.name, s.n_tok) for s in started_shards(dst)] != [(s.name, s.n_tok) for s in shards]:
                raise RelabelError(
                    f"{cfg.src} changed while it was copied (a collect wrote it); relabel again"
                )
            report.changes, report.gaps = _relabel(shards, dst, new, own, cfg.chunk_rows)
            dst.update_attributes(_attrs(cfg, attrs, new))  # one zarr.json write: the new provenance
        finally:
            lock.release()
        os.rename(tmp, out)  # --out appears complete, in one step (an --out made meanwhile: refused here)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # our own half-written copy, never anything else
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted.of(e, f"nothing was written to {cfg.out}", rerun=True) from None
        if isinstance(e, OSError) and out.exists():
            raise RelabelError(f"--out {cfg.out} was created while relabelling; pick another path") from None
        raise
    report.seconds = time.perf_counter() - start
    return report


def _given(cfg: RelabelConfig) -> list[tuple[str, str]]:
    return [(role, spec) for role, spec in (("cost", cfg.cost), ("reward", cfg.reward)) if spec]


def _latent_scorer(spec: str, role: str, policy: StoredPolicy, load) -> tuple[Scorer, list[slice]]:
    """The scorer of ``spec`` and where its layers sit in the store's latents; refused in one line when it
    cannot be computed from them."""
    fix = f"relabel reads only the store's latents; recollect with it (igcritic collect --{role} {spec})"
    if spec.partition(":")[0] in TEXT_KINDS:
        raise RelabelError(f"--{role} {spec} reads the answer's text, not the policy's layers; {fix}")
    scorer = load(spec, role)
    cols = getattr(scorer, "decode_columns", lambda _: None)(policy)
    if cols is None:
        raise RelabelError(f"--{role} {spec} {_why_not(scorer, policy.identity)}; {fix}")
    return scorer, cols


def _why_not(scorer, identity: PolicyIdentity) -> str:
    """Why a scorer's labels cannot come from a store's latents: it reads text, another policy (its own
    rule, asked as if the store tapped every layer it reads) or layers the store does not tap."""
    head = getattr(scorer, "head", None)
    if head is None or head.family != "latent":
        return "reads the answer's text, not the policy's layers"
    every_layer = StoredPolicy(replace(identity, norm="post", extra_layers=list(head.layers)))
    if scorer.decode_columns(every_layer) is None:
        return f"reads another policy than the store's ({identity.model_id}, {identity.dtype})"
    tapped = [t for t in (identity.layer if identity.norm == "pre" else None, *identity.extra_layers) if t]
    missing = [layer for layer in head.layers if layer not in tapped]
    return f"reads layers {list(head.layers)}; the store taps {tapped} (not {missing})"


def _own_scorers(attrs: dict, policy: StoredPolicy, load) -> dict[str, tuple[Scorer, list[slice]] | str]:
    """``--check``: the store's own scorer of each role with its columns, or why it cannot be checked."""
    out: dict = {}
    for role in ROLES:
        spec = (attrs.get(f"{role}_scorer") or {}).get("id")
        stored = ((attrs.get("config") or {}).get("fingerprints") or {}).get(role)
        try:
            scorer, cols = _latent_scorer(spec or "", role, policy, load)
        except IgcriticError as e:
            out[role] = f"its {role} scorer {spec!r} cannot be read from latents ({str(e).split(';')[0]})"
            continue
        now = scorer_fingerprint(scorer)
        if stored and now != stored:
            out[role] = (
                f"{spec!r} now loads other weights than labelled the store (fingerprint {now} != {stored})"
            )
        else:
            out[role] = (scorer, cols)
    return out


def _relabel(
    shards: list[Shard], dst, new: dict, own: dict, chunk_rows: int
) -> tuple[list[Change], list[Gap]]:
    """Compute the new (and ``--check``: the own) labels of every shard of the source, write the new ones into
    ``dst``; the before/after means and the check's gaps. A progress bar of trajectories on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    heads = {("new", role): v for role, v in new.items()}
    heads.update({("own", role): v for role, v in own.items() if not isinstance(v, str)})
    before: dict[str, list] = {role: [] for role in new}
    after: dict[str, list] = {role: [] for role in new}
    diffs: dict[str, list] = {role: [] for role in ROLES}
    bar = Progress(
        TextColumn("relabel"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with bar:
        task = bar.add_task("relabel", total=sum(s.n_traj for s in shards))
        labels_of = [shard_labels(s, heads, chunk_rows, lambda n: bar.advance(task, n)) for s in shards]
    for shard, labels in zip(shards, labels_of, strict=True):
        g, n_traj, n_tok = shard.group, shard.n_traj, shard.n_tok
        out = dst["shards"][shard.name]
        for (which, role), lab in labels.items():
            stored = read_rows(g, f"traj_{role}", 0, n_traj)
            if which == "own":
                prefix = read_rows(g, "cost_prefix", 0, n_tok) if role == "cost" else None
                diffs[role].append(
                    np.abs(lab.prefix - prefix) if role == "cost" else np.abs(lab.traj - stored)
                )
                continue
            before[role].append(stored)
            after[role].append(lab.traj)
            if n_traj:
                out[f"traj_{role}"][:n_traj] = lab.traj
                if role == "cost":
                    out["cost_prefix"][:n_tok] = lab.prefix
    changes = []
    for role, spec_scorer in new.items():
        b, a = (
            np.concatenate([np.zeros(0, np.float32), *before[role]]),
            np.concatenate([np.zeros(0), *after[role]]),
        )
        corr = float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else float("nan")
        spec = spec_scorer[0].info.id
        changes.append(
            Change(role, spec, float(b.mean()) if len(b) else 0.0, float(a.mean()) if len(a) else 0.0, corr)
        )
    gaps = []
    for role, v in own.items():
        if isinstance(v, str):
            gaps.append(Gap(role, 0, skipped=v))
            continue
        d = np.concatenate([np.zeros(0, np.float32), *diffs[role]])
        q = (np.median(d), np.quantile(d, 0.99), d.max()) if len(d) else (0.0, 0.0, 0.0)
        gaps.append(Gap(role, len(d), *map(float, q)))
    return changes, gaps


def shard_labels(shard: Shard, heads: dict, chunk_rows: int = 4096, done=lambda n: None) -> dict:
    """Each head's :class:`Labels` of one shard's committed trajectories, read ``chunk_rows`` token rows at a
    time (``done(n)`` after each n trajectories). ``heads`` maps a key to ``(scorer, columns)``; a scorer's
    role says cost or reward."""
    g, n_traj = shard.group, shard.n_traj
    offsets = read_rows(g, "traj_offsets", 0, n_traj + 1).astype(np.int64)
    finished = read_rows(g, "traj_finished", 0, n_traj).astype(bool)
    out = {
        k: Labels(
            np.zeros(n_traj, np.float32), np.zeros(shard.n_tok, np.float32) if s.info.role == "cost" else None
        )
        for k, (s, _) in heads.items()
    }
    latents = g["latents"]
    for s, e in trajectory_chunks(offsets, chunk_rows):
        base = offsets[s]
        lat = torch.from_numpy(
            read_rows(g, "latents", base, offsets[e], latents).astype(np.float32)
        )  # (N, W)
        rows = prefix_rows([lat[offsets[i] - base : offsets[i + 1] - base] for i in range(s, e)])
        for key, (scorer, cols) in heads.items():
            values = scorer.decode_values(cols, *rows)  # (N,): every row's prefix, as collect labels them
            lab = out[key]
            for i in range(s, e):
                a, b = offsets[i] - base, offsets[i + 1] - base
                end = answer_end(b - a - 1, bool(finished[i]))
                v = values[a : a + end + 1]
                if lab.prefix is None:
                    lab.traj[i] = v[-1]
                    continue
                run = np.maximum.accumulate(v)
                lab.prefix[base + a : base + b] = np.concatenate([run, np.full(b - a - len(run), run[-1])])
                lab.traj[i] = run[-1]
        done(e - s)
    return out


def answer_end(length: int, finished: bool) -> int:
    """The row of the full answer's last token in a trajectory of ``length`` tokens: an EOS row is not part
    of the answer's text, and the latent heads read at most ``MAX_ANSWER_TOKENS`` tokens."""
    return min(length - 1 if finished and length > 0 else length, MAX_ANSWER_TOKENS)


def trajectory_chunks(offsets: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """Ranges ``[s, e)`` of whole trajectories of about ``rows`` token rows each (at least one trajectory)."""
    out, s, n = [], 0, len(offsets) - 1
    while s < n:
        e = int(np.searchsorted(offsets, offsets[s] + rows, side="right")) - 1
        e = min(max(e, s + 1), n)
        out.append((s, e))
        s = e
    return out


def _attrs(cfg: RelabelConfig, attrs: dict, new: dict) -> dict:
    """The new store's changed root attributes: its id, scorers, config (fingerprints, hash) and origin."""
    config = {**attrs["config"], "fingerprints": dict(attrs["config"]["fingerprints"])}
    changed: dict = {}
    for role, (scorer, _) in new.items():
        config[role] = dict(_given(cfg))[role]
        config["fingerprints"][role] = scorer_fingerprint(scorer)
        changed[f"{role}_scorer"] = scorer.to_dict()
    if "cost" in new and config.get("budget") is None:  # the store's budget was the cost scorer's natural one
        changed["budget"] = new["cost"][0].info.budget_hint
    return {
        **changed,
        OWNER: {**attrs[OWNER], "store_id": uuid.uuid4().hex},
        "config": config,
        "config_hash": config_hash(config),
        "relabelled": {
            "from": os.fspath(cfg.src),
            "from_store_id": attrs[OWNER]["store_id"],
            "from_config_hash": attrs.get("config_hash"),
            "before": {f"{role}_scorer": attrs.get(f"{role}_scorer") for role in new},
            "fingerprints_before": {role: attrs["config"]["fingerprints"].get(role) for role in new},
            "earlier": attrs.get("relabelled"),
            "by": f"igcritic relabel {__version__}",
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }


def _leftovers(out: str) -> list[str]:
    """Siblings left by relabels into ``out`` that were killed before their rename."""
    p = Path(local_path(out))
    return sorted(glob.glob(os.fspath(p.parent / SIBLING.format(name=glob.escape(p.name), tag="*"))))


def main(cfg: RelabelConfig) -> int:
    """``igcritic relabel SRC --out DST``: write the relabelled store and print what changed."""
    from rich.console import Console

    Console(stderr=True).print(describe(run(cfg)), highlight=False)
    return 0


def describe(r: RelabelReport) -> str:
    lines = [
        f"relabelled {r.trajectories} trajectories ({r.tokens} token rows) into {r.out} in {r.seconds:.1f}s"
    ]
    for g in r.gaps:
        what = "cost_prefix rows" if g.role == "cost" else "traj_reward"
        lines.append(
            f"check {g.role}: skipped, {g.skipped}"
            if g.skipped
            else f"check {g.role} (the store's own scorer) vs stored {what} ({g.rows}): |diff| median "
            f"{g.median:.2e}, 99% {g.p99:.2e}, max {g.max:.2e}"
        )
    for c in r.changes:
        label = "traj_cost (S_T)" if c.role == "cost" else "traj_reward"
        lines.append(f"{c.role} ({c.spec}): mean {label} {c.before:.4f} -> {c.after:.4f} (corr {c.corr:.3f})")
    return "\n".join(lines)


__all__ = ["RelabelConfig", "RelabelError", "RelabelReport", "main", "run", "shard_labels"]

"""Collect on-policy rollouts with their latent trajectories and cost/reward labels into a Zarr store.

    igcritic collect --config configs/collect/embedded.yaml
    igcritic collect --model PATH --prompts.source prompts.jsonl --rollouts_per_prompt 5 --out runs/x.zarr

The work is cut into numbered batches of ``batch_size`` (prompt, rollout) items; batch ``b`` is sampled
with its own generator seeded from ``(seed, b)``, so any batch can be redone identically. Rank ``r`` of
``devices * num_nodes`` processes (Lightning Fabric: ddp on GPUs, torchrun or SLURM; ddp_spawn for
in-process tests) handles the batches with ``b % world == r`` and is the only writer of its shard. A batch
is committed by the store's manifest after its data is on disk, so ``--resume`` after a kill redoes only
the uncommitted batches: nothing lost, nothing duplicated, same trajectories as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from igcritic import IgcriticError, Interrupted, __version__, interruptible
from igcritic.decoding import Rollouts, SamplingConfig, prefix_texts, rollout
from igcritic.policy import (
    EMBEDDED_POLICY_ID,
    WEIGHT_SUFFIXES,
    Policy,
    PolicyError,
    cached_fingerprint,
    check_device,
    default_extra_layers,
    load_policy,
    policy_fingerprint,
)
from igcritic.prompts import Prompt, PromptSource, check_lengths, load_prompts
from igcritic.scorers import Scorer, load_scorer
from igcritic.search import (  # round 2: the guard's own --guard_search type and search defaults
    SEARCH_CONFIG_NAME,
    SearchConfig,
    SearchConfigError,
    SearchOverrides,
    as_overrides,
    overrides,
)
from igcritic.store import (
    StoreError,
    StoreReader,
    StoreWriter,
    TrajectoryBatch,
    check_replaceable,
    check_writable,
    config_hash,
)

log = logging.getLogger(__name__)

FINGERPRINT_BLOCK = 1 << 24
"""Bytes read at a time when a weight file is hashed."""


class CollectError(IgcriticError):
    """Collection cannot start or continue; the message says how to fix it."""


@dataclass
class CollectConfig:
    """Everything that determines a store's content (all but ``out``, ``resume``, ``overwrite``, ``compile``
    and the device layout enter the config hash that guards ``--resume``; the prompts enter it by their text
    and the policy and scorers also by a fingerprint of their weights, see :func:`content_config`)."""

    out: str = "runs/embedded/store.zarr"
    """Store path or fsspec URL to write."""
    model: str = EMBEDDED_POLICY_ID
    """Policy: HF model folder/id, or the embedded default."""
    layer: int = -1
    """Decoder layer whose output is the latent (1-based; -1 = last)."""
    norm: str = "post"
    """``post`` (after the final norm, last layer only) or ``pre``."""
    extra_layers: list[int] | None = None
    """Further layers whose residual streams are stored after the main latent (width (1 + k) x H). None: the
    embedded policy's 15, 18, 21 (what its cost and reward heads read and the shipped critic taps) for the
    embedded model, none for any other; ``[]``: none."""
    dtype: str = "float32"
    """Policy dtype (float32, bfloat16, float16)."""
    prompts: PromptSource = field(default_factory=PromptSource)
    """Where prompts come from (the shipped set's train split by default, a JSONL/CSV file, or a HF
    dataset)."""
    rollouts_per_prompt: int = 5
    """K answers sampled per prompt (paper: 5)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling of the frozen policy."""
    batch_size: int = 32
    """(prompt, rollout) items generated together."""
    seed: int = 0
    """Base seed; batch b uses seed * 1_000_003 + b."""
    cost: str = "embedded"
    """Cost scorer spec (embedded, beaver:PATH, seqcls:PATH[:LABEL], guardlm:PATH[:PRESET])."""
    reward: str = "embedded"
    """Reward scorer spec."""
    stride: int = 8
    """Prefix-score stride of non-causal scorers (tokens)."""
    budget: float | None = None
    """Budget d on the cost scale, recorded for inspect and fit; None: the cost scorer's natural budget
    (0.5 for the embedded probe, 0 for beaver cost models)."""
    chunk_tokens: int = 4096
    """Token rows per Zarr chunk."""
    resume: bool = False
    """Continue an interrupted store made with the same config."""
    overwrite: bool = False
    """Replace an existing store at ``out`` (only a store: anything else at ``out`` is refused)."""
    accelerator: str = "auto"
    """Lightning accelerator (cpu, gpu, auto)."""
    devices: int = 1
    """Processes per node; each writes its own shard."""
    num_nodes: int = 1
    """Nodes (torchrun/SLURM set the rank environment)."""
    strategy: str = "ddp"
    """Fabric strategy for devices > 1: ddp (re-launches the command), ddp_spawn (in-process)."""
    guard: str | None = None
    """Round 2: a critic artifact folder; answers come from guarded decoding with it (so the next critic also
    learns the states the search visits) instead of plain sampling. None: plain sampling (round 1)."""
    guard_search: SearchOverrides = field(default_factory=SearchOverrides)
    """Search overrides of the guard over the artifact's search_config.json (``--guard_search.mode exact``);
    the sampling fields come from ``sampling`` and ``on_violation`` is ``best_effort``, so every answer is the
    policy's own text."""
    compile: bool = False
    """Decode on a static KV cache of ``batch_size`` rows with a ``torch.compile``-d step (GPUs; on CPU it is
    slower, BENCHMARKS.md). Not part of the content hash: a store may be resumed with either."""

    def __post_init__(self):
        self.guard_search = as_overrides(self.guard_search, "--guard_search")  # a notebook's dict

    def hashed(self) -> dict:
        """The settings that determine the content, as given (the prompt source still by its path)."""
        d = {**asdict(self), "guard_search": overrides(self.guard_search)}  # as given: unset fields left out
        for k in ("out", "resume", "overwrite", "accelerator", "devices", "num_nodes", "strategy", "compile"):
            d.pop(k)
        return d

    def resolved(self) -> CollectConfig:
        """This config with the policy's default ``extra_layers`` filled in (what the store records and its
        hash covers, so leaving the flag unset or naming the default's layers is one config)."""
        if self.extra_layers is not None:
            return self
        return replace(self, extra_layers=default_extra_layers(self.model))

    def validate(self) -> None:
        problems = []
        if self.rollouts_per_prompt < 1:
            problems.append(f"--rollouts_per_prompt {self.rollouts_per_prompt} must be >= 1")
        if self.batch_size < 1:
            problems.append(f"--batch_size {self.batch_size} must be >= 1")
        if self.sampling.max_new_tokens < 1:
            problems.append(f"--sampling.max_new_tokens {self.sampling.max_new_tokens} must be >= 1")
        sp = self.sampling
        if sp.temperature < 0 or not 0.0 < sp.top_p <= 1.0 or sp.top_k < 0:  # the search's rule
            problems.append(
                f"--sampling.temperature {sp.temperature} / top_p {sp.top_p} / top_k {sp.top_k} is invalid; "
                "use temperature >= 0 (0: greedy), 0 < top_p <= 1, top_k >= 0"
            )
        if self.norm not in ("post", "pre"):
            problems.append(f"--norm {self.norm!r} must be post or pre")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            problems.append(f"--accelerator {self.accelerator!r} must be auto, cpu, gpu or cuda")
        if self.resume and self.overwrite:
            problems.append("--resume and --overwrite exclude each other; pick one")
        if self.budget is not None and not np.isfinite(self.budget):
            problems.append(f"--budget {self.budget} must be a finite number")
        if self.guard is not None:
            from igcritic.critic import CONFIG_NAME

            if not (Path(self.guard) / CONFIG_NAME).is_file():
                problems.append(f"--guard {self.guard} is not a critic artifact folder (no {CONFIG_NAME})")
        if problems:
            raise CollectError("; ".join(problems))


@dataclass
class CollectStats:
    """What one rank wrote (``igcritic collect`` prints it)."""

    batches: int = 0
    """Work batches this run committed."""
    skipped_nan: int = 0
    """Batches not written: their latents or labels held NaN/inf."""
    tokens: int = 0
    """Answer tokens committed."""
    gen_s: float = 0.0
    """Seconds generating the committed batches."""
    cost_s: float = 0.0
    """Seconds labelling them with the cost scorer."""
    reward_s: float = 0.0
    """Seconds scoring them with the reward scorer."""
    write_s: float = 0.0
    """Seconds writing them to the store."""
    batches_already_done: int = 0
    """Batches an earlier run had committed (``--resume``)."""


def check_prompts_fit(policy: Policy, rows: list[Prompt], new_tokens: int) -> None:
    """Refuse, naming the first offender by its place in the source, unless every prompt leaves room for
    ``new_tokens`` in the policy's context (checked once, up front: a batch must not fail half-way)."""
    lengths = [len(x) for x in policy.prompt_ids([r.prompt for r in rows])]
    if problem := check_lengths(rows, lengths, new_tokens, policy.max_context):
        raise CollectError(f"{problem}, or lower --sampling.max_new_tokens (nothing was written to --out)")


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index) % (2**63 - 1)


def work_batches(num_prompts: int, k: int, batch_size: int) -> list[list[int]]:
    """Prompt index of each item, item i = (prompt i // k, rollout i % k), cut into batches."""
    items = [p for p in range(num_prompts) for _ in range(k)]
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def guarded_sampler(cfg: CollectConfig, policy: Policy, cost: Scorer, reward: Scorer):
    """``(prompts, generator) -> Rollouts`` of guarded decoding with ``cfg.guard`` (round 2).

    The guard answers and reads the latents of every prefix (:meth:`~igcritic.guard.Guard.rollouts`). The
    runtime is imported here, not at the top: only round 2 reads a critic."""
    from igcritic.guard import load_guard

    guard = load_guard(cfg.guard, model=policy, cost=cost, reward=reward, device=str(policy.device))
    sampling = asdict(cfg.sampling)
    search = {**overrides(cfg.guard_search), **sampling, "on_violation": "best_effort"}
    if cfg.compile:
        search["compile"] = True
    try:  # before any work, naming collect's own flags (the runtime calls them search.*)
        guard.check(**search)
    except IgcriticError as e:
        raise CollectError(
            re.sub(
                r"\bsearch\.(\w+)",
                lambda m: f"--{'sampling' if m[1] in sampling else 'guard_search'}.{m[1]}",
                str(e),
            )
        ) from None

    def sample(prompts: list[str], generator: torch.Generator) -> Rollouts:
        return guard.rollouts(prompts, generator, **search)

    return guard, sample


def label_batch(
    policy: Policy, prompts: list[str], prompt_idx: list[int], roll: Rollouts, cost: Scorer, reward: Scorer
) -> tuple[TrajectoryBatch, dict]:
    """Score every prefix with the cost model and every answer with the reward model: from the rollout's
    own latents where the scorer reads the policy's layers (:func:`decoded_answers`), else from the text.
    Both paths give the same labels up to float rounding (tested at 1e-4), so the config hash does not say
    which one labelled a batch: a store resumed across the change stays one labelling. Drops
    ``roll.cache``."""
    texts = [prefix_texts(policy.tokenizer, t) for t in roll.tokens]
    batch_prompts = [prompts[p] for p in prompt_idx]
    t0 = time.perf_counter()
    answers: list = [None] * len(roll.tokens)
    if any(getattr(s, "decode_columns", lambda _: None)(policy) is not None for s in (cost, reward)):
        answers = decoded_answers(policy, batch_prompts, roll, texts)
    roll.cache = None
    cost_prefix = decoded_labels(policy, answers, texts, cost)
    if rows := [i for i, c in enumerate(cost_prefix) if c is None]:
        scored = cost.prefix_scores([batch_prompts[i] for i in rows], [texts[i] for i in rows])
        for i, c in zip(rows, scored, strict=True):
            cost_prefix[i] = c
    t1 = time.perf_counter()
    decoded = decoded_labels(policy, answers, texts, reward)
    rewards = [None if r is None else r[-1] for r in decoded]
    if rows := [i for i, r in enumerate(rewards) if r is None]:
        scored = reward.score([batch_prompts[i] for i in rows], [texts[i][-1] for i in rows])
        for i, r in zip(rows, scored, strict=True):
            rewards[i] = r
    t2 = time.perf_counter()
    token_ids = []
    for toks in roll.tokens:
        token_ids += [-1, *toks]
    batch = TrajectoryBatch(
        latents=torch.cat(roll.latents).numpy(),  # (N_tok, H)
        token_ids=np.asarray(token_ids, dtype=np.int32),
        cost_prefix=np.concatenate(cost_prefix).astype(np.float32),
        traj_len=np.asarray([len(t) for t in roll.tokens], dtype=np.int32),
        traj_prompt=np.asarray(prompt_idx, dtype=np.int64),
        traj_reward=np.asarray(rewards, dtype=np.float32),
        traj_finished=np.asarray(roll.finished, dtype=bool),
    )
    return batch, {"cost_s": t1 - t0, "reward_s": t2 - t1}


DecodedAnswer = tuple[torch.Tensor, np.ndarray]
"""The latents h_0..h_J (J + 1, W) of an answer's text as the text path tokenises it (at most
MAX_ANSWER_TOKENS tokens), and each of those tokens' end offset in the text (J,)."""


def decoded_answers(
    policy: Policy, prompts: list[str], roll: Rollouts, texts: list[list[str]]
) -> list[DecodedAnswer | None]:
    """What a scorer on the policy's own layers reads of each answer, without a second pass over it: the
    rollout's latents where the answer's text re-tokenises to its tokens; else those of the tokens both
    share, then the re-tokenised rest fed as new tokens on the rollout's KV cache from that point (one
    cached forward for all such answers, a few tokens each). None for an answer the text path must score:
    its prompt is longer than the text path reads, or there is no cache to continue (guarded answers)."""
    from igcritic.scorers.latent import MAX_ANSWER_TOKENS, MAX_PROMPT_TOKENS

    out: list[DecodedAnswer | None] = [None] * len(roll.tokens)
    if not roll.tokens:
        return out
    tok, eos = policy.tokenizer, set(policy.eos_token_ids)
    formatted = tok([policy.format_prompt(p) for p in prompts], add_special_tokens=False)["input_ids"]
    enc = tok([t[-1] for t in texts], add_special_tokens=False, return_offsets_mapping=True)
    tails: dict[int, tuple[int, list[int], np.ndarray]] = {}
    for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
        if len(formatted[i]) > MAX_PROMPT_TOKENS:
            continue
        ids = ids[:MAX_ANSWER_TOKENS]
        ends = np.asarray([e for _, e in offsets[:MAX_ANSWER_TOKENS]], dtype=np.int64)
        sampled = roll.tokens[i][:-1] if roll.tokens[i] and roll.tokens[i][-1] in eos else roll.tokens[i]
        pairs = zip(sampled, ids, strict=False)  # the tokens both start with
        shared = next((j for j, (a, b) in enumerate(pairs) if a != b), min(len(sampled), len(ids)))
        if shared == len(ids):  # the text's tokens are the sampled ones (or their start): h_0..h_J are read
            out[i] = (roll.latents[i][: shared + 1].float(), ends)
        elif roll.cache is not None:
            tails[i] = (shared, ids[shared:], ends)
    if tails:
        rows = sorted(tails)
        latents = _continued_latents(policy, roll, rows, [tails[i][:2] for i in rows])
        for i, h in zip(rows, latents, strict=True):
            out[i] = (torch.cat([roll.latents[i][: tails[i][0] + 1].float(), h]), tails[i][2])
    return out


def _continued_latents(
    policy: Policy, roll: Rollouts, rows: list[int], tails: list[tuple[int, list[int]]]
) -> list[torch.Tensor]:
    """Latents (len(tail), W) float32 on CPU of each ``tail`` fed after the first ``shared`` answer tokens of
    rollout row ``rows[k]`` (``tails[k] = (shared, tail)``), on the rollout's cache with its later positions
    masked out (as a rewind does); right-padded tails, one forward. Consumes ``roll.cache``."""
    cache, roll.cache = roll.cache, None
    dev = policy.device
    idx = torch.tensor(rows, dtype=torch.long)
    cache.batch_select_indices(idx.to(dev))
    start = roll.prompt_mask.shape[1]  # answer token t sits at cache position start + t
    length = start + max(len(t) for t in roll.tokens)  # every row stepped until the longest stopped
    width = max(len(tail) for _, tail in tails)
    ids = torch.full((len(rows), width), policy.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length + width), dtype=roll.prompt_mask.dtype)
    mask[:, :start] = roll.prompt_mask[idx.to(roll.prompt_mask.device)].cpu()
    for k, (shared, tail) in enumerate(tails):
        mask[k, start : start + shared] = 1
        ids[k, : len(tail)] = torch.tensor(tail, dtype=torch.long)
        mask[k, length : length + len(tail)] = 1
    _, lat, _ = policy.forward(ids.to(dev), mask.to(dev), cache)
    lat = lat.float().cpu()
    return [lat[k, : len(tail)] for k, (_, tail) in enumerate(tails)]


def prefix_rows(answers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a latent head reads of every prefix of each answer's latents h_0..h_J (J + 1, W): h_0, h_j and
    the mean of h_0..h_j, each (sum of J + 1, W), answers one after another (``decode_values``' inputs)."""
    firsts = [h[:1].expand(len(h), -1) for h in answers]
    means = [h.cumsum(0) / torch.arange(1, len(h) + 1)[:, None] for h in answers]
    return torch.cat(firsts), torch.cat(answers), torch.cat(means)


def decoded_labels(
    policy: Policy, answers: list[DecodedAnswer | None], texts: list[list[str]], scorer: Scorer
) -> list[np.ndarray | None]:
    """``S_0..S_T`` of each answer from its decode-pass latents (:func:`decoded_answers`) when ``scorer``
    reads the policy's own layers (``decode_columns``): the same numbers as ``scorer.prefix_scores`` on
    ``texts`` (float rounding aside); for a reward, its last entry is the answer's score. None for an
    answer the text path must score."""
    from igcritic.scorers.latent import prefix_index

    cols = getattr(scorer, "decode_columns", lambda _: None)(policy)
    out: list[np.ndarray | None] = [None] * len(answers)
    rows = [i for i, a in enumerate(answers) if a is not None] if cols is not None else []
    if not rows:
        return out
    values = scorer.decode_values(cols, *prefix_rows([answers[i][0] for i in rows]))
    at = 0
    for i in rows:
        h, ends = answers[i]
        vals = values[at : at + len(h)][prefix_index(ends, [len(t) for t in texts[i]])]
        at += len(h)
        out[i] = np.maximum.accumulate(vals) if scorer.info.role == "cost" else vals
    return out


def prompts_digest(prompts: list[str]) -> str:
    """sha256 of the prompt texts in order (each length-prefixed, so no two lists share a digest)."""
    h = hashlib.sha256()
    for p in prompts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def files_fingerprint(files: list[Path]) -> str:
    """Content fingerprint of weight files (16 hex digits): sha256 streamed over each file's name, size and
    every byte; cached by the files' (path, size, mtime) (:func:`~igcritic.policy.cached_fingerprint`)."""

    def digest() -> str:
        h = hashlib.sha256()
        for f in sorted(files):
            h.update(f"{f.name}:{f.stat().st_size}:".encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(FINGERPRINT_BLOCK), b""):
                    h.update(block)
        return h.hexdigest()[:16]

    return cached_fingerprint(files, "files", digest)


def scorer_fingerprint(scorer: Scorer) -> str | None:
    """Fingerprint of a scorer's weight files: a model folder's (beaver, seqcls) or a head's weights file
    (embedded: the file it loaded); None when the scorer names no files."""
    folder, path = getattr(scorer, "folder", None), getattr(scorer, "path", None)
    if folder is not None:
        files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    else:
        files = [Path(path)] if path is not None else []
    return files_fingerprint(files) if files else None


def content_config(
    cfg: CollectConfig, prompts: list[str], policy: Policy, cost: Scorer, reward: Scorer
) -> dict:
    """What the config hash covers: the settings, the prompts by their text (not the file they came from), and
    content fingerprints of the policy's and the scorers' weights (not only their ids)."""
    d = cfg.hashed()
    d["prompts"] = {"count": len(prompts), "sha256": prompts_digest(prompts)}
    d["fingerprints"] = {
        "policy": policy_fingerprint(policy),
        "cost": scorer_fingerprint(cost),
        "reward": scorer_fingerprint(reward),
    }
    if cfg.guard is not None:
        d["fingerprints"]["guard"] = guard_identity(cfg.guard)
    return d


def guard_identity(folder: str) -> dict:
    """What names a round-2 guard in the store: its critic's weights checksum and calibration, and its search
    defaults as the artifact writes them (read through the modules that own the files)."""
    from igcritic.critic import CriticError, read_config

    try:
        critic_cfg = read_config(folder)
        given = SearchConfig.file_dict(folder) if (Path(folder) / SEARCH_CONFIG_NAME).is_file() else None
        if given is not None:
            SearchConfig.from_dict(given)  # unknown keys: refused here, before any model loads
    except (CriticError, SearchConfigError) as e:
        raise CollectError(
            f"--guard {folder}: its artifact cannot be read ({e}); pass a critic folder written by "
            "`igcritic export`"
        ) from None
    return {
        "path": str(folder),
        "critic_sha256": critic_cfg.get("weights_sha256"),
        "calibration": critic_cfg.get("calibration"),
        "search_config": given,
    }


def store_attrs(
    cfg: CollectConfig, policy: Policy, cost: Scorer, reward: Scorer, source_info: dict, prompts: list[str]
) -> dict:
    import lightning
    import transformers
    import zarr

    content = content_config(cfg, prompts, policy, cost, reward)
    return {
        "policy": {**policy.identity.to_dict(), "fingerprint": content["fingerprints"]["policy"]},
        "cost_scorer": cost.to_dict(),
        "reward_scorer": reward.to_dict(),
        "budget": cfg.budget if cfg.budget is not None else cost.info.budget_hint,
        "constraint": "final",
        "generation": {
            **asdict(cfg.sampling),
            "rollouts_per_prompt": cfg.rollouts_per_prompt,
            "batch_size": cfg.batch_size,
        },
        "seed": cfg.seed,
        "rollouts_from": "guard" if cfg.guard is not None else "policy",
        "guard": content["fingerprints"].get("guard"),
        "dataset": source_info,
        "software": {
            "igcritic": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "zarr": zarr.__version__,
            "lightning": lightning.__version__,
        },
        "prompt_source": cfg.hashed()["prompts"],
        "config": content,
        "config_hash": config_hash(content),
    }


def open_writer(cfg: CollectConfig, rank: int, attrs: dict, prompts: list[str], hidden: int) -> StoreWriter:
    """Rank 0 creates (or, with --overwrite, replaces) the store; other ranks add their shard to it."""
    if cfg.resume:
        return StoreWriter.resume(
            cfg.out,
            config_hash=attrs["config_hash"],
            rank=rank,
            hidden_size=hidden,
            prompts=prompts,
            config=attrs["config"],
        )
    return StoreWriter.create(
        cfg.out,
        attrs=attrs,
        prompts=prompts,
        hidden_size=hidden,
        rank=rank,
        overwrite=cfg.overwrite and rank == 0,
        chunk_tokens=cfg.chunk_tokens,
    )


def collect_rank(cfg: CollectConfig, rank: int = 0, world: int = 1, barrier=lambda: None) -> CollectStats:
    """Run this rank's share of the batches into its shard; what it wrote. Ctrl-C or SIGTERM ends it as an
    :class:`~igcritic.Interrupted` saying what the store at ``out`` keeps and the command that goes on."""
    cfg = cfg.resolved()
    cfg.validate()
    known: dict = {}  # the config hash and batch count, once known: whose store ``out`` holds after a stop
    try:
        return _collect(cfg, rank, world, barrier, known)
    except KeyboardInterrupt as e:
        raise _interrupted(e, cfg, known) from None


def _interrupted(e: KeyboardInterrupt, cfg: CollectConfig, known: dict) -> Interrupted:
    """What a stop left: committed batches of this config's store go on with ``--resume true``; a fresh or
    replacing run that committed none left no store of its own (created: removed; replaced: put back), so
    the same command starts it again."""
    try:
        r = StoreReader(cfg.out)
        ours = known.get("hash") is not None and r.attrs.get("config_hash") == known["hash"]
        kept = len(r.batches_done) if ours else None
    except StoreError:  # no store there
        kept = None
    if kept or cfg.resume:
        saved = f"{kept} of {known['batches']} batches committed in {cfg.out}" if kept is not None else ""
        return Interrupted.of(e, saved, {"--resume": "true"})
    left = "it holds the store it held before this run" if cfg.overwrite else "nothing was kept there"
    return Interrupted.of(e, f"no batch was committed to {cfg.out}, so {left}", rerun=True)


def _collect(cfg: CollectConfig, rank: int, world: int, barrier, known: dict) -> CollectStats:
    if cfg.overwrite and rank == 0:
        check_replaceable(cfg.out)  # before any model loads: --overwrite replaces only a store
    check_writable(cfg.out, "--out", CollectError)
    rows, source_info = load_prompts(cfg.prompts)
    prompts = [r.prompt for r in rows]
    if cfg.accelerator in ("gpu", "cuda"):  # asked for a GPU: none here is an error, not a silent CPU run
        try:
            check_device("cuda", "--accelerator")
        except PolicyError as e:
            raise CollectError(str(e).replace("cuda:", f"{cfg.accelerator}:", 1)) from None
    device = "cuda" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "cpu"
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    policy = load_policy(
        cfg.model,
        layer=cfg.layer,
        norm=cfg.norm,
        extra_layers=cfg.extra_layers,
        dtype=cfg.dtype,
        device=device,
    )
    check_prompts_fit(policy, rows, cfg.sampling.max_new_tokens)  # every prompt, before --out is touched
    cost = load_scorer(cfg.cost, "cost", device=device, stride=cfg.stride)
    bounds = cost.info.bounds
    if cfg.budget is not None and bounds is not None and not bounds[0] <= cfg.budget <= bounds[1]:
        raise CollectError(
            f"--budget {cfg.budget:g} is outside the cost scale [{bounds[0]:g}, {bounds[1]:g}] of "
            f"{cost.info.id}; give a budget in that range (or none: its natural budget)"
        )
    reward = load_scorer(cfg.reward, "reward", device=device, stride=cfg.stride)
    attrs = store_attrs(cfg, policy, cost, reward, source_info, prompts)
    hidden = policy.identity.latent_size

    def sample(batch_prompts: list[str], gen: torch.Generator) -> Rollouts:
        return rollout(policy, batch_prompts, cfg.sampling, gen, cfg.batch_size if cfg.compile else 0)

    if cfg.guard is not None:
        _, sample = guarded_sampler(cfg, policy, cost, reward)

    batches = work_batches(len(prompts), cfg.rollouts_per_prompt, cfg.batch_size)
    known.update(hash=attrs["config_hash"], batches=len(batches))
    stats = CollectStats()
    with contextlib.ExitStack() as stack:  # a stop anywhere below closes the writer (and undoes its create)
        if rank == 0:
            writer = stack.enter_context(open_writer(cfg, 0, attrs, prompts, hidden))
        barrier()  # the root group exists before other ranks open their shards
        if rank != 0:
            writer = stack.enter_context(open_writer(cfg, rank, attrs, prompts, hidden))
        done = StoreReader(cfg.out).batches_done if cfg.resume else set()
        stats.batches_already_done = len(done)
        mine = [b for b in range(len(batches)) if b % world == rank and b not in done]
        progress = stack.enter_context(_progress(disable=rank != 0))  # a bar on rank 0 only
        task, start, seen = progress.add_task("collect", total=len(mine), tps="-"), time.perf_counter(), 0
        stack.enter_context(interruptible())
        for b in mine:
            gen = torch.Generator(device=policy.device).manual_seed(batch_seed(cfg.seed, b))
            t0 = time.perf_counter()
            roll = sample([prompts[p] for p in batches[b]], gen)
            t1 = time.perf_counter()
            batch, timing = label_batch(policy, prompts, batches[b], roll, cost, reward)
            if problems := batch.validate():
                stats.skipped_nan += 1
                log.error("batch %d not written: %s", b, "; ".join(problems))
            else:
                t2 = time.perf_counter()
                writer.append(batch, b)
                stats.write_s += time.perf_counter() - t2
                stats.gen_s += t1 - t0
                stats.cost_s += timing["cost_s"]
                stats.reward_s += timing["reward_s"]
                stats.tokens += roll.num_tokens
                stats.batches += 1
            seen += roll.num_tokens
            progress.update(task, advance=1, tps=f"{seen / max(time.perf_counter() - start, 1e-9):.0f}")
    return stats


def run(cfg: CollectConfig) -> CollectStats:
    """Collect with ``cfg.devices * cfg.num_nodes`` writers; returns rank 0's counters."""
    world = cfg.devices * cfg.num_nodes
    if world == 1:
        return collect_rank(cfg)
    from lightning.fabric import Fabric

    fabric = Fabric(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy
    )
    return fabric.launch(_fabric_worker, cfg)


def _fabric_worker(fabric, cfg: CollectConfig) -> CollectStats:
    stats = collect_rank(cfg, rank=fabric.global_rank, world=fabric.world_size, barrier=fabric.barrier)
    fabric.barrier()  # every shard is complete before rank 0 returns
    return stats


def _progress(disable: bool):
    """A rich progress bar of work batches with tokens/s and ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tps = TextColumn("{task.fields[tps]} tok/s")
    return Progress(
        TextColumn("collect"), BarColumn(), MofNCompleteColumn(), tps, TimeRemainingColumn(), disable=disable
    )


def main(cfg: CollectConfig) -> int:
    """``igcritic collect``: write the store of ``cfg`` and print what each rank wrote."""
    stats = run(cfg)
    if stats is not None:  # every rank reports its own shard
        from rich.console import Console

        Console(stderr=True).print(describe(stats, cfg), highlight=False)
    return 0


def describe(stats: CollectStats, cfg: CollectConfig) -> str:
    tps = stats.tokens / max(stats.gen_s, 1e-9)
    return (
        f"wrote {stats.batches} batches ({stats.tokens} tokens, {tps:.0f} tok/s generation; "
        f"cost {stats.cost_s:.1f}s, reward {stats.reward_s:.1f}s, write {stats.write_s:.1f}s) to "
        f"{cfg.out}; {stats.batches_already_done} batches were already done, "
        f"{stats.skipped_nan} skipped for NaN/inf"
    )


__all__ = ["CollectConfig", "CollectError", "CollectStats", "main", "run", "collect_rank"]

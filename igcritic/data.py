"""CriticDataModule: the train/val split of one or more Zarr stores, by prompt, as Lightning data.

Used by ``igcritic fit --config configs/fit/embedded.yaml`` (the ``data:`` section). The stores are checked
to come from one policy and one pair of scorers, their prompts are split by text across all stores (seeded),
the split's rows are cut into chunk-aligned runs and handed to :class:`~igcritic.stream.CriticStream`,
which reads, shuffles and batches them (the examples' definitions are there).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule

from igcritic import IgcriticError
from igcritic.policy import PolicyIdentity
from igcritic.stream import (
    RUN_COLUMNS,
    START,
    STOP,
    STORE,
    BudgetDistribution,
    CriticStream,
    EpochLoader,
    StoreInfo,
    new_chunk,
    run_rows,
)

log = logging.getLogger(__name__)

MIN_VAL_PROMPTS = 8
"""Fewer held-out prompts than this (or fewer rows than a batch): ``fit`` warns that validation is noise."""


class DataError(IgcriticError):
    """The stores or the data settings cannot produce a train/val split."""


class CriticDataModule(LightningDataModule):
    """Train/val critic examples from one or more stores written by ``igcritic collect``.

    Args:
        stores: Store paths or fsspec URLs; all must come from the same policy, layer and scorers.
        batch_size: Examples per batch (per rank).
        val_fraction: Share of distinct prompts held out for validation (and ``test``).
        seed: Seed of the prompt split, the block order and the budget draws.
        gamma: Discount of the value target ``gamma^(T - t) R`` (paper Table 3: 0.999).
        budget_low: Lowest training budget; default: min(1% quantile of S_T, store budget).
        budget_high: Highest training budget; default: max(99% quantile of S_T, store budget).
        budget_store_share: Share of examples trained at the store's own budget.
        shuffle_buffer: Rows mixed together when shuffling (several chunks' worth).
        num_workers: DataLoader worker processes per rank (0 reads in the training process).
        multiprocessing_context: Start method of the workers (zarr's event loop deadlocks across fork).
        pin_memory: Pin host batches for faster GPU copies; default: when CUDA is available.
        drop_last: Drop each worker's last partial batch.
        stats_rows: Training rows sampled for the latent normalisation statistics.
        cost_context: Batches also carry h_0 and the running mean of h_0..h_t of every row (what a critic
            with ``model.cost_context`` reads; the CLI links the two). Read per window from the trajectories'
            stored latents (a second read of the window's rows; nothing store-sized is held).
    """

    def __init__(
        self,
        stores: list[str],
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        gamma: float = 0.999,
        budget_low: float | None = None,
        budget_high: float | None = None,
        budget_store_share: float = 0.25,
        shuffle_buffer: int = 16384,
        num_workers: int = 0,
        multiprocessing_context: Literal["spawn", "forkserver"] = "spawn",
        pin_memory: bool | None = None,
        drop_last: bool = False,
        stats_rows: int = 65536,
        cost_context: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        problems = []
        if isinstance(stores, str | bytes) or not stores:
            problems.append(f"stores={stores!r} (give a non-empty list of store paths)")
        if batch_size < 1:
            problems.append(f"batch_size={batch_size} (must be >= 1)")
        if not 0.0 < val_fraction < 1.0:
            problems.append(f"val_fraction={val_fraction} (must be in (0, 1))")
        if not 0.0 < gamma <= 1.0:
            problems.append(f"gamma={gamma} (must be in (0, 1])")
        if not 0.0 <= budget_store_share <= 1.0:
            problems.append(f"budget_store_share={budget_store_share} (must be in [0, 1])")
        if budget_low is not None and budget_high is not None and budget_low > budget_high:
            problems.append(f"budget_low={budget_low} > budget_high={budget_high}")
        if num_workers < 0 or shuffle_buffer < 1 or stats_rows < 1:
            problems.append(
                f"num_workers={num_workers}, shuffle_buffer={shuffle_buffer}, stats_rows={stats_rows} "
                "(must be >= 0, >= 1, >= 1)"
            )
        if multiprocessing_context not in ("spawn", "forkserver"):
            problems.append(f"multiprocessing_context={multiprocessing_context!r} (use spawn or forkserver)")
        if problems:
            raise DataError("invalid data settings: " + "; ".join(problems))
        self.stores = [str(s) for s in stores]
        self.batch_size, self.val_fraction, self.seed, self.gamma = batch_size, val_fraction, seed, gamma
        self._budget_low, self._budget_high = budget_low, budget_high
        self.budget_store_share = budget_store_share
        self.shuffle_buffer, self.num_workers, self.drop_last = shuffle_buffer, num_workers, drop_last
        self.multiprocessing_context, self.stats_rows = multiprocessing_context, stats_rows
        self.cost_context = cost_context
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._infos: list[StoreInfo] | None = None
        self._attrs: dict | None = None
        self.prompt_texts: list[str] = []
        self.train_dataset: CriticStream | None = None
        self.val_dataset: CriticStream | None = None
        self._val_prompts: np.ndarray | None = None

    # ---- store metadata (main process; cheap: per-trajectory arrays only) ----------------------------
    def _load(self) -> list[StoreInfo]:
        if self._infos is not None:
            return self._infos
        from igcritic.store import StoreError, StoreReader, validate_store

        readers = []
        for p in self.stores:
            try:
                r = StoreReader(p)
                n_traj = r.n_traj  # the reader is lazy: this opens the store
            except StoreError as e:
                raise DataError(f"data.stores: cannot open {p}: {e}") from None
            if problems := validate_store(p, read_rows=False):  # metadata and chunks: a lost chunk reads as 0
                more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
                raise DataError(
                    f"store {p} is invalid ({problems[0]}{more}); fit refuses it (`igcritic inspect {p}` "
                    "lists every problem)"
                )
            readers.append(r)
            if n_traj == 0:
                raise DataError(
                    f"store {p} has zero trajectories, so there is nothing to train on; run "
                    "`igcritic collect` to completion (or drop it from data.stores)"
                )
        first, a0 = self.stores[0], readers[0].attrs
        for p, r in zip(self.stores[1:], readers[1:], strict=True):
            a = r.attrs
            ident = PolicyIdentity.from_dict(a0["policy"])
            if (diff := ident.mismatches(a["policy"])) and ident.same_model(a["policy"]):
                raise DataError(
                    f"stores {first} and {p} tap the same model at different layers ({'; '.join(diff)}): "
                    "one critic reads one latent; recollect one of them with the other's "
                    "--layer/--norm/--extra_layers"
                )
            if diff:
                raise DataError(
                    f"stores {first} and {p} come from different policies ({'; '.join(diff)}): "
                    "mixing policies is not allowed; train one critic per policy"
                )
            if r.hidden_size != readers[0].hidden_size:
                raise DataError(
                    f"store {p} has hidden size {r.hidden_size} but {first} has {readers[0].hidden_size}: "
                    "one critic reads one policy's latents; train one critic per policy"
                )
            for key in ("cost_scorer", "reward_scorer"):
                ids = [(d or {}).get(f) for d in (a0.get(key), a.get(key)) for f in ("id", "sign")]
                if ids[:2] != ids[2:]:
                    raise DataError(
                        f"stores {first} and {p} use different {key}s ({ids[:2]} vs {ids[2:]}): their "
                        "costs/rewards are on different scales; collect with one scorer"
                    )
        texts = sorted({r.prompts[int(i)] for r in readers for i in np.unique(np.asarray(r.traj_prompt))})
        if len(texts) < 2:
            raise DataError(
                f"stores {self.stores} hold {len(texts)} distinct prompt(s); a prompt-level val split "
                "needs at least 2: collect rollouts for more prompts"
            )
        gid = {t: i for i, t in enumerate(texts)}
        infos = []
        for p, r in zip(self.stores, readers, strict=True):
            local = np.asarray([gid.get(t, -1) for t in r.prompts], dtype=np.int64)
            infos.append(
                StoreInfo(
                    path=p,
                    n_tok=int(r.n_tok),
                    width=int(r.hidden_size),
                    offsets=np.asarray(r.traj_offsets, dtype=np.int64),
                    traj_prompt=local[np.asarray(r.traj_prompt, dtype=np.int64)],
                    traj_cost=np.asarray(r.traj_cost, dtype=np.float32),
                    budget=float(r.attrs.get("budget") if r.attrs.get("budget") is not None else math.nan),
                    bounds=r.chunk_bounds,
                )
            )
        self._attrs, self.prompt_texts, self._infos = dict(a0), texts, infos
        self._hidden_size = int(readers[0].hidden_size)
        return infos

    @property
    def hidden_size(self) -> int:
        """Latent size H of the stores (linked to ``model.hidden_size`` by the CLI)."""
        self._load()
        return self._hidden_size

    @property
    def policy(self) -> dict:
        """The stores' ``PolicyIdentity`` dict."""
        self._load()
        return dict(self._attrs["policy"])

    @property
    def budget_range(self) -> tuple[float, float]:
        """(low, high) of the uniform budget draws, resolved from the stores when not given."""
        infos, s_final = self._load(), self._final_costs()
        budgets = [i.budget for i in infos if math.isfinite(i.budget)]
        q_lo, q_hi = np.quantile(s_final, [0.01, 0.99]).tolist() if len(s_final) else (0.0, 1.0)
        low = self._budget_low if self._budget_low is not None else min([q_lo, *budgets])
        high = self._budget_high if self._budget_high is not None else max([q_hi, *budgets])
        return float(low), float(max(high, low))

    def _final_costs(self) -> np.ndarray:
        """The finite S_T of every trajectory of the stores."""
        s_final = np.concatenate([i.traj_cost for i in self._load()])
        return s_final[np.isfinite(s_final)]

    @property
    def store_budget(self) -> float | None:
        """The budget the stores were collected with (None if they differ or none is recorded)."""
        b = {i.budget for i in self._load()}
        return b.pop() if len(b) == 1 and all(map(math.isfinite, b)) else None

    def critic_metadata(self) -> dict:
        """What the critic artifact records about its training data (CriticConfig fields)."""
        self._load()
        low, high = self.budget_range
        return {
            "gamma": self.gamma,
            "budget_low": low,
            "budget_high": high,
            "budget": self.store_budget,
            "policy": self.policy,
            "cost_scorer": self._attrs.get("cost_scorer"),
            "reward_scorer": self._attrs.get("reward_scorer"),
        }

    def eval_budgets(self) -> list[float]:
        """Default budgets for per-budget metrics: the store budget and the quartiles of the stores' S_T."""
        infos, s_final = self._load(), self._final_costs()
        qs = np.quantile(s_final, [0.25, 0.5, 0.75]).tolist() if len(s_final) else []
        out = [float(f"{b:.3g}") for b in [*qs, *[i.budget for i in infos]] if math.isfinite(b)]
        return sorted(set(out))

    # ---- the split -----------------------------------------------------------------------------------
    def val_prompt_ids(self) -> np.ndarray:
        """Global prompt ids (indices into ``prompt_texts``) held out for validation: seeded, reproducible."""
        if self._val_prompts is None:
            self._load()
            n = len(self.prompt_texts)
            n_val = min(max(1, round(self.val_fraction * n)), n - 1)
            self._val_prompts = np.sort(np.random.default_rng(self.seed).permutation(n)[:n_val])
        return self._val_prompts

    def _runs(self, split: Literal["train", "val"]) -> tuple[np.ndarray, np.ndarray]:
        """Row runs of a split cut at chunk bounds, grouped in blocks (a block: the runs of one chunk): runs
        (R, 4) of :data:`~igcritic.stream.RUN_COLUMNS` and block_ptr (nb + 1,)."""
        pieces = []
        for s, info in enumerate(self._load()):
            is_val = np.isin(info.traj_prompt, self.val_prompt_ids())
            sel = np.flatnonzero(is_val if split == "val" else ~is_val)
            if not len(sel):
                continue
            starts, stops = info.offsets[sel], info.offsets[sel + 1]
            brk = np.flatnonzero(starts[1:] != stops[:-1]) + 1  # merge adjacent trajectories into runs
            r_starts, r_stops = starts[np.r_[0, brk]], stops[np.r_[brk - 1, len(sel) - 1]]
            for a, b in zip(r_starts.tolist(), r_stops.tolist(), strict=True):
                cuts = info.bounds[(info.bounds > a) & (info.bounds < b)].tolist()
                for lo, hi in zip([a, *cuts], [*cuts, b], strict=True):
                    chunk = int(np.searchsorted(info.bounds, lo, side="right"))
                    pieces.append(dict(store=s, start=lo, stop=hi, chunk=chunk))
        if not pieces:
            raise DataError(f"the {split} split is empty; change data.val_fraction={self.val_fraction}")
        runs = np.asarray([[p[c] for c in RUN_COLUMNS] for p in pieces], dtype=np.int64)
        block_ptr = np.r_[np.flatnonzero(new_chunk(runs)), len(runs)].astype(np.int64)
        return runs, block_ptr

    def _stream(self, split: Literal["train", "val"]) -> CriticStream:
        runs, ptr = self._runs(split)
        return CriticStream(
            self._load(),
            runs,
            ptr,
            batch_size=self.batch_size,
            shuffle=split == "train",
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            gamma=self.gamma,
            budget=BudgetDistribution(*self.budget_range, self.budget_store_share),
            drop_last=self.drop_last and split == "train",
            context=self.cost_context,
        )

    # ---- Lightning hooks -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._load()  # validate the stores once, in one process

    def setup(self, stage: str | None = None) -> None:
        rank, world = _rank_world(self.trainer)
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset = self._stream("train"), self._stream("val")
            log.info(
                "critic data: %d train rows, %d val rows, %d/%d prompts held out, budgets U[%.3g, %.3g] "
                "+ %.0f%% at the store budget",
                self.train_dataset.n_rows,
                self.val_dataset.n_rows,
                len(self.val_prompt_ids()),
                len(self.prompt_texts),
                *self.budget_range,
                100 * self.budget_store_share,
            )
            n_val, p_val = self.val_dataset.n_rows, len(self.val_prompt_ids())
            if p_val < MIN_VAL_PROMPTS or n_val < self.batch_size:
                log.warning(
                    "the validation split is tiny (%d rows from %d prompts; batch_size %d): val metrics, the "
                    "calibration and checkpoint selection are noise; collect more prompts or raise "
                    "data.val_fraction",
                    n_val,
                    p_val,
                    self.batch_size,
                )
        for ds in (self.train_dataset, self.val_dataset):
            ds.set_distributed(rank, world, self.num_workers)

    def train_dataloader(self) -> EpochLoader:
        ds = self._split("train")
        if self.trainer is not None:  # right order on resume, before Lightning's first set_epoch
            ds.set_epoch(self.trainer.current_epoch)
        return self._loader(ds)

    def val_dataloader(self) -> EpochLoader:
        return self._loader(self._split("val"))

    def test_dataloader(self) -> EpochLoader:
        """The validation split (held-out prompts); collect a separate store for a separate test set."""
        return self._loader(self._split("val"))

    def _split(self, split: Literal["train", "val"]) -> CriticStream:
        if self.train_dataset is None:
            self.setup()
        return self.train_dataset if split == "train" else self.val_dataset

    def _loader(self, ds: CriticStream) -> EpochLoader:
        kw: dict = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            kw.update(multiprocessing_context=self.multiprocessing_context, prefetch_factor=4)
        return EpochLoader(ds, **kw)

    # ---- normalisation statistics ----------------------------------------------------------------------
    def normalization_stats(self, max_rows: int | None = None) -> dict[str, torch.Tensor | float]:
        """Mean/std of h over a seeded sample of whole training blocks, loc/scale of F, the value target and
        S_t over all training rows (non-finite rows ignored). The same on every rank."""
        ds, max_rows = self._split("train"), max_rows or self.stats_rows
        order = np.random.default_rng([self.seed, 7]).permutation(len(ds.block_ptr) - 1)
        idx, n = [], 0
        for b in order:
            rows = ds.runs[ds.block_ptr[b] : ds.block_ptr[b + 1]]
            idx.append(np.arange(ds.block_ptr[b], ds.block_ptr[b + 1]))
            n += int(run_rows(rows).sum())
            if n >= max_rows:
                break
        sample = ds.runs[np.sort(np.concatenate(idx))]
        total, sq, count = 0.0, 0.0, 0
        for s, lo, hi in sample[:, [STORE, START, STOP]].tolist():
            store = ds._store(s)
            h = store.reader.read_latents(lo, hi)[store.targets(np.arange(lo, hi))["valid"]].astype(
                np.float64
            )
            h = h[np.isfinite(h).all(axis=1)]
            total, sq, count = total + h.sum(0), sq + (h * h).sum(0), count + len(h)
        if count == 0:
            raise DataError(
                f"every sampled training latent of {self.stores} is NaN/inf; re-collect the store"
            )
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
        out: dict[str, torch.Tensor | float] = {
            "h_mean": torch.from_numpy(mean).float(),
            "h_std": torch.from_numpy(np.where(std > 1e-6, std, 1.0)).float(),
        }
        tg = ds.targets(ds.runs)
        for k, name in (("f", "f"), ("value", "v"), ("s", "s")):
            x = tg[k][tg["valid"]].astype(np.float64)
            sd = float(x.std()) if len(x) else 1.0
            out[f"{name}_loc"] = float(x.mean()) if len(x) else 0.0
            out[f"{name}_scale"] = sd if sd > 1e-6 else 1.0
        return out


def _rank_world(trainer) -> tuple[int, int]:
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


__all__ = ["CriticDataModule", "DataError"]

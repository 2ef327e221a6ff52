"""Loader benchmark: samples/s of CriticDataModule's train loader vs a raw contiguous read of the same store,
the share of a training step spent waiting for data, and end-to-end training samples/s.

    python bench/bench_loader.py                          # synthetic store, 50k tokens, H = 576 (embedded)
    python bench/bench_loader.py --store runs/embedded/store.zarr
    python bench/bench_loader.py --hidden 4096 --tokens 200000 --device cuda --workers 0,2,4

Baseline (same process, same store, warm page cache): ``StoreReader.read_latents`` over the whole store in
chunk-sized contiguous reads (``preadv`` of uncompressed local chunks); zarr's own array slicing is given
too. Loader: one full training epoch of ``CriticDataModule.train_dataloader()``
(chunk-shuffled blocks + shuffle buffer + targets + budget draws + batching), counted in delivered rows.
Rounds alternate raw and loader so machine noise hits both; the best of each and the median ratio are given.
Data wait: a Lightning ``fit`` epoch of ``CriticModule``; a callback times the gap between the end of one
training batch and the start of the next (the loader's share) against the whole step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_store(path: Path, tokens: int, hidden: int, chunk: int, seed: int = 0) -> None:
    from igcritic.policy import PolicyIdentity
    from igcritic.store import StoreWriter, TrajectoryBatch

    rng = np.random.default_rng(seed)
    policy = PolicyIdentity(
        model_id="bench-synthetic", hidden_size=hidden, num_layers=30, layer=30, norm="post"
    )
    attrs = {
        "policy": policy.to_dict(),
        "budget": 0.5,
        "cost_scorer": {"id": "bench", "sign": "higher-is-unsafe"},
        "reward_scorer": {"id": "bench", "sign": "higher-is-better"},
        "generation": {},
    }
    n_prompts = max(8, tokens // 260)  # ~4 rollouts x 65 rows per prompt, like the embedded collect
    written, b = 0, 0
    with StoreWriter.create(
        str(path),
        attrs=attrs,
        prompts=[f"p{i}" for i in range(n_prompts)],
        hidden_size=hidden,
        chunk_tokens=chunk,
    ) as w:
        while written < tokens:
            lens = rng.integers(16, 64, size=32)
            n = int((lens + 1).sum())
            cost = np.concatenate([np.maximum.accumulate(rng.random(t + 1) * 0.8) for t in lens]).astype(
                np.float32
            )
            ids = np.concatenate([np.r_[-1, rng.integers(0, 1000, t)] for t in lens]).astype(np.int32)
            w.append(
                TrajectoryBatch(
                    latents=rng.standard_normal((n, hidden), dtype=np.float32),
                    token_ids=ids,
                    cost_prefix=cost,
                    traj_len=lens.astype(np.int32),
                    traj_prompt=rng.integers(0, n_prompts, 32),
                    traj_reward=rng.random(32, np.float32),
                    traj_finished=np.ones(32, bool),
                ),
                b,
            )
            written, b = written + n, b + 1


def raw_read(store: str, clock=time.perf_counter) -> float:
    """Rows/s of one pass of chunk-sized contiguous ``StoreReader.read_latents`` over the whole store."""
    from igcritic.store import StoreReader

    r = StoreReader(store)
    n, step = r.n_tok, r.chunk_tokens
    t0 = clock()
    for a in range(0, n, step):
        x = r.read_latents(a, min(a + step, n))
    assert x.dtype == np.float16
    return n / (clock() - t0)


def zarr_read(store: str, clock=time.perf_counter) -> float:
    """Rows/s of the same pass through zarr's own array slicing (what ``read_latents`` did before it read
    uncompressed local chunks with ``preadv``; the baseline of the BENCHMARKS.md rows before 2026-12-01)."""
    from igcritic.store import StoreReader

    r = StoreReader(store)
    arrays = [
        (r._open()["shards"][name]["latents"], t0, t1)
        for name, t0, t1 in zip(r.shards, r.shard_offsets[:-1], r.shard_offsets[1:], strict=True)
    ]
    step = r.chunk_tokens
    t0 = clock()
    for arr, a0, a1 in arrays:
        for a in range(0, int(a1 - a0), step):
            x = arr[a : min(a + step, int(a1 - a0))]
    assert x.dtype == np.float16
    return r.n_tok / (clock() - t0)


def loader_vs_raw(store: str, workers: int, batch_size: int, rounds: int, cost_context: bool = False) -> dict:
    """Paired rounds (raw pass, zarr pass, then one training epoch of the DataModule's loader) on a warm page
    cache, in wall time and (in-process loading only) in CPU time of this process, which a contended VM
    does not inflate.

    Workers are persistent: the first epoch pays their start-up (spawn), later epochs start at once;
    ``steady`` rows/s exclude the wait for each epoch's first batch."""
    from igcritic.data import CriticDataModule

    dm = CriticDataModule([store], batch_size=batch_size, num_workers=workers, cost_context=cost_context)
    dm.setup("fit")
    loader = dm.train_dataloader()
    raw_read(store)  # warm the page cache
    raws, zarrs, full, steady, first, cpu, cpu_z = [], [], [], [], [], [], []
    for epoch in range(rounds):
        raws.append(raw_read(store))
        zarrs.append(zarr_read(store))
        cpu_raw, cpu_zarr = raw_read(store, time.process_time), zarr_read(store, time.process_time)
        loader.sampler.set_epoch(epoch)
        rows, t0, c0, t1 = 0, time.perf_counter(), time.process_time(), None
        for batch in loader:
            if t1 is None:
                t1 = time.perf_counter()
            else:
                rows += len(batch["row"])
        t2, c2 = time.perf_counter(), time.process_time()
        first.append(t1 - t0)
        steady.append(rows / (t2 - t1))
        full.append((rows + batch_size) / (t2 - t0))
        cpu.append((rows + batch_size) / (c2 - c0) / cpu_raw)
        cpu_z.append((rows + batch_size) / (c2 - c0) / cpu_zarr)
    raws, zarrs, full, steady = np.array(raws), np.array(zarrs), np.array(full), np.array(steady)
    return {
        "raw_rows_per_s": float(raws.max()),
        "zarr_rows_per_s": float(zarrs.max()),
        "loader_rows_per_s": float(full.max()),
        "steady_rows_per_s": float(steady.max()),
        "first_batch_s": [round(x, 3) for x in first],
        "ratio_best": float(full.max() / raws.max()),
        "ratio_median_paired": float(np.median(full / raws)),
        "ratio_vs_zarr_median_paired": float(np.median(full / zarrs)),
        "steady_ratio_best": float(steady.max() / raws.max()),
        "cpu_ratio_median": float(np.median(cpu)) if workers == 0 else None,
        "cpu_ratio_vs_zarr_median": float(np.median(cpu_z)) if workers == 0 else None,
    }


def fit_epoch(
    store: str, workers: int, batch_size: int, width: int, device: str, cost_context: bool = False
) -> dict:
    """One Lightning fit epoch: data-wait share of step time and end-to-end training rows/s."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    from igcritic.data import CriticDataModule
    from igcritic.fit import CriticModule

    class Timer(Callback):
        def __init__(self):
            self.wait, self.step, self.rows, self.last_end, self.start = 0.0, 0.0, 0, None, None

        def on_train_epoch_start(self, trainer, pl_module):
            self.last_end = self.start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()
            if batch_idx > 0:  # the first batch also pays worker start-up: reported apart
                self.wait += self.t0 - self.last_end

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if device == "cuda":
                torch.cuda.synchronize()
            self.last_end = time.perf_counter()
            if batch_idx > 0:
                self.step += self.last_end - self.t0
                self.rows += len(batch["row"])

    timer = Timer()
    dm = CriticDataModule([store], batch_size=batch_size, num_workers=workers, cost_context=cost_context)
    model = CriticModule(hidden_size=dm.hidden_size, width=width, cost_context=cost_context)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator=device,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(model, dm)
    total = timer.wait + timer.step
    return {
        "data_wait_share": timer.wait / total,
        "train_rows_per_s": timer.rows / total,
        "step_ms": 1e3 * timer.step / max(1, trainer.global_step - 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default=None, help="existing store (default: write a synthetic one)")
    p.add_argument("--tokens", type=int, default=50_000)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int, default=512, help="critic width for the fit measurement")
    p.add_argument("--workers", default="0,1", help="comma-separated num_workers values")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: 1 on CPU: on a shared VM more intra-op threads than free cores "
        "make every step wait at OpenMP barriers, 10x slower; torch's default on a GPU)",
    )
    p.add_argument(
        "--rounds", type=int, default=8, help="paired raw/loader rounds (best and median reported)"
    )
    p.add_argument(
        "--cost-context",
        action="store_true",
        help="batches also carry h_0 and the running mean (a model.cost_context critic's data)",
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads or device == "cpu":
        torch.set_num_threads(args.threads or 1)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = str(Path(tmp) / "bench.zarr")
            t0 = time.perf_counter()
            write_store(Path(store), args.tokens, args.hidden, args.chunk)
            print(
                f"wrote synthetic store ({args.tokens} tokens, H={args.hidden}) in "
                f"{time.perf_counter() - t0:.1f}s"
            )
        res = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cpus, {torch.get_num_threads()} torch threads, device {device}"
            + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""),
            "store": args.store or f"synthetic {args.tokens} tokens H={args.hidden}",
            "cost_context": args.cost_context,
            "loader": {},
        }
        for w in [int(x) for x in args.workers.split(",")]:
            lo = loader_vs_raw(store, w, args.batch_size, args.rounds, args.cost_context)
            fi = fit_epoch(store, w, args.batch_size, args.width, device, args.cost_context)
            res["loader"][w] = {**lo, **fi}
            print(
                f"num_workers={w}: raw read {lo['raw_rows_per_s']:,.0f} rows/s (zarr slicing "
                f"{lo['zarr_rows_per_s']:,.0f}); loader {lo['loader_rows_per_s']:,.0f} rows/s = "
                f"{lo['ratio_best']:.2f}x "
                f"raw (median of paired rounds {lo['ratio_median_paired']:.2f}x; vs zarr slicing "
                f"{lo['ratio_vs_zarr_median_paired']:.2f}x; after the first batch "
                f"{lo['steady_ratio_best']:.2f}x)"
                + (
                    f"; in CPU time {lo['cpu_ratio_median']:.2f}x (vs zarr slicing "
                    f"{lo['cpu_ratio_vs_zarr_median']:.2f}x)"
                    if lo["cpu_ratio_median"] is not None
                    else ""
                )
                + f"; first batch of each epoch {lo['first_batch_s']} s"
            )
            print(
                f"    fit (width {args.width}, batch {args.batch_size}): data wait "
                f"{100 * fi['data_wait_share']:.1f}% "
                f"of step time, {fi['train_rows_per_s']:,.0f} train rows/s, {fi['step_ms']:.1f} ms/step"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()

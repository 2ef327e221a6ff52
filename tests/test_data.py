"""CriticDataModule: prompt-level split, sharding, shuffling, labels, NaN rows and bad stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_fit import make_empty_store, make_store, poison_rows

from igcritic.data import CriticDataModule, DataError
from igcritic.store import StoreReader
from igcritic.stream import START, STOP, mask_nonfinite


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "store.zarr"
    make_store(path, n_prompts=12, rollouts=4, hidden=8, chunk_tokens=64)
    return str(path)


def collect(loader) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for batch in loader:
        for k, v in batch.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def dm_for(stores, **kw) -> CriticDataModule:
    dm = CriticDataModule(
        stores if isinstance(stores, list) else [stores], **{"batch_size": 32, "shuffle_buffer": 100, **kw}
    )
    dm.setup("fit")
    return dm


def test_split_is_by_prompt_reproducible_and_covers_every_row(store):
    dm = dm_for(store, val_fraction=0.25)
    train, val = collect(dm.train_dataloader()), collect(dm.val_dataloader())
    assert set(train["prompt"]).isdisjoint(val["prompt"])
    assert set(val["prompt"]) == set(dm.val_prompt_ids().tolist()) and len(dm.val_prompt_ids()) == 3
    rows = np.concatenate([train["row"], val["row"]])
    assert np.array_equal(np.sort(rows), np.arange(StoreReader(store).n_tok))  # every row exactly once
    assert np.array_equal(dm_for(store, val_fraction=0.25).val_prompt_ids(), dm.val_prompt_ids())
    other = [dm_for(store, val_fraction=0.25, seed=s).val_prompt_ids().tolist() for s in range(1, 6)]
    assert any(o != dm.val_prompt_ids().tolist() for o in other)


def test_split_is_by_prompt_text_across_stores(tmp_path, store):
    second = tmp_path / "second.zarr"
    make_store(second, n_prompts=12, rollouts=2, hidden=8, seed=5)  # the same prompt texts, other rollouts
    dm = dm_for([store, str(second)], val_fraction=0.25)
    assert len(dm.prompt_texts) == 12
    train, val = collect(dm.train_dataloader()), collect(dm.val_dataloader())
    assert set(train["prompt"]).isdisjoint(val["prompt"])
    n1 = StoreReader(store).n_tok
    assert (val["row"] < n1).any() and (val["row"] >= n1).any()  # both stores contribute held-out prompts
    assert len(train["row"]) + len(val["row"]) == n1 + StoreReader(second).n_tok


def test_examples_follow_the_definitions(store):
    dm = dm_for(store, budget_low=0.1, budget_high=0.9, budget_store_share=0.3, gamma=0.9)
    b = collect(dm.train_dataloader())
    r = StoreReader(store)
    rows = b["row"]
    traj = np.searchsorted(r.traj_offsets, rows, side="right") - 1
    t = rows - r.traj_offsets[traj]
    np.testing.assert_array_equal(b["t"], t)
    np.testing.assert_array_equal(b["traj"], traj)
    np.testing.assert_allclose(b["s"], r.cost_prefix[rows])
    np.testing.assert_allclose(b["f"], r.traj_cost[traj] - r.cost_prefix[rows])
    np.testing.assert_allclose(b["value"], 0.9 ** (r.traj_len[traj] - t) * r.traj_reward[traj], rtol=1e-5)
    np.testing.assert_array_equal(b["h"], r.read_latents(0, r.n_tok)[rows])
    np.testing.assert_array_equal(b["label"], (b["f"] <= b["z"]).astype(np.float32))
    d = b["z"] + b["s"]
    at_store = np.isclose(d, 0.5, atol=1e-6)
    assert ((d >= 0.1 - 1e-6) & (d <= 0.9 + 1e-6)).all()
    assert 0.2 < at_store.mean() < 0.45  # ~30% at the store budget (+ rare uniform draws near it)
    assert 0.05 < b["label"].mean() < 0.95


def test_context_is_h0_and_the_running_mean_of_each_trajectory(store):
    """``cost_context`` batches carry h_0 of the row's trajectory and the mean of h_0..h_t (what the runtime's
    RunningPrefix gives a context cost head); plain batches carry neither."""
    b = collect(dm_for(store, cost_context=True).train_dataloader())
    r = StoreReader(store)
    lat, off = r.read_latents(0, r.n_tok).astype(np.float64), r.traj_offsets
    traj = np.searchsorted(off, b["row"], side="right") - 1
    mean = np.stack([lat[off[k] : row + 1].mean(0) for k, row in zip(traj, b["row"], strict=True)])
    np.testing.assert_array_equal(b["h_first"], lat[off[traj]].astype(np.float16))
    np.testing.assert_allclose(b["h_mean"].astype(np.float64), mean, rtol=2e-3, atol=2e-3)
    assert (b["t"] > 0).any() and not np.allclose(b["h_mean"], b["h"])
    assert "h_first" not in collect(dm_for(store).train_dataloader())


@pytest.mark.parametrize("read_rows", [1, 40, 16384])
def test_context_of_any_rows_reads_each_trajectory_from_its_start(store, monkeypatch, read_rows):
    """``StoreRows.context`` of shuffled rows of scattered trajectories (a window's rows plus leftovers)
    gives each row h_0 and the mean of h_0..h_t, however the reads are merged."""
    import igcritic.stream as stream

    monkeypatch.setattr(stream, "CONTEXT_READ_ROWS", read_rows)
    r = StoreReader(store)
    lat, off = r.read_latents(0, r.n_tok).astype(np.float64), r.traj_offsets
    rows = np.random.default_rng(0).choice(r.n_tok, size=min(300, r.n_tok), replace=False)
    first, mean = stream.StoreRows(store, np.zeros(len(off) - 1, np.int64), 0.99).context(rows)
    traj = np.searchsorted(off, rows, side="right") - 1
    want = np.stack([lat[off[k] : row + 1].mean(0) for k, row in zip(traj, rows, strict=True)])
    np.testing.assert_array_equal(first, lat[off[traj]].astype(np.float16))
    np.testing.assert_allclose(mean.astype(np.float64), want, rtol=2e-3, atol=2e-3)


def test_budget_range_defaults_to_the_stores_cost_scale(store):
    dm = dm_for(store)
    low, high = dm.budget_range
    s_final = StoreReader(store).traj_cost
    assert (
        low <= min(np.quantile(s_final, 0.01), 0.5) + 1e-9
        and high >= max(np.quantile(s_final, 0.99), 0.5) - 1e-9
    )
    assert 0.5 in dm.eval_budgets()
    meta = dm.critic_metadata()
    assert (
        meta["budget"] == 0.5
        and meta["policy"]["layer"] == 2
        and meta["cost_scorer"]["id"] == "synthetic-cost"
    )


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (3, 2), (2, 3)])
def test_ranks_and_workers_get_disjoint_equal_shares(store, world, workers):
    ds = dm_for(store).train_dataset
    total = ds.n_rows
    seen, per_rank = [], []
    for rank in range(world):
        rows = [
            np.concatenate([np.arange(a, b) for _, a, b, _ in ds.plan(3, rank, world, w, workers)] or [[]])
            for w in range(workers)
        ]
        per_rank.append(sum(len(x) for x in rows))
        seen += rows
    allrows = np.concatenate(seen)
    assert len(np.unique(allrows)) == len(allrows)  # disjoint
    assert (
        len(set(per_rank)) == 1 and total - len(allrows) < world
    )  # equal shares, at most world-1 rows dropped
    ds.set_distributed(0, world, workers)
    lens = set()
    for rank in range(world):
        ds.set_distributed(rank, world, workers)
        lens.add(len(ds))
    assert len(lens) == 1  # every rank yields the same number of batches: DDP never waits


@pytest.mark.parametrize("batch_size", [7, 100_000])
def test_every_batch_has_rows_and_len_counts_them(store, batch_size):
    """A window with fewer rows than a batch yields nothing (it once yielded an empty batch that took the
    place of the real one in Lightning's count: val/loss was nan when val held fewer rows than a batch)."""
    for ds in (
        dm_for(store, batch_size=batch_size).val_dataset,
        dm_for(store, batch_size=batch_size).train_dataset,
    ):
        sizes = [len(b["valid"]) for b in ds]
        assert min(sizes) > 0 and len(sizes) == len(ds) and sum(sizes) == ds.n_rows


def test_reads_stay_inside_chunks_and_order_changes_with_epoch(store):
    dm = dm_for(store)
    ds = dm.train_dataset
    runs = ds.runs
    assert (runs[:, START] // 64 == (runs[:, STOP] - 1) // 64).all()  # no run crosses a 64-row chunk
    loader = dm.train_dataloader()
    e0 = collect(loader)["row"]
    assert np.array_equal(e0, collect(loader)["row"])  # same epoch, same order
    loader.sampler.set_epoch(1)  # what Lightning calls before each epoch
    e1 = collect(loader)["row"]
    assert not np.array_equal(e0, e1) and np.array_equal(np.sort(e0), np.sort(e1))
    assert not np.array_equal(e0, np.sort(e0))  # shuffled


def test_nan_rows_are_flagged_and_zeroed(tmp_path):
    path = tmp_path / "nan.zarr"
    make_store(path, n_prompts=6, rollouts=3, hidden=8)
    poison_rows(path, [3, 10, 11, 40])
    dm = dm_for(str(path), val_fraction=0.3)
    batches = [mask_nonfinite(b) for split in (dm.train_dataloader(), dm.val_dataloader()) for b in split]
    b = {k: torch.cat([x[k] for x in batches]).numpy() for k in ("row", "valid", "h")}
    np.testing.assert_array_equal(np.sort(b["row"][~b["valid"]]), [3, 10, 11, 40])
    assert b["h"].dtype == np.float32 and np.isfinite(b["h"]).all() and (b["h"][~b["valid"]] == 0).all()
    stats = dm.normalization_stats()
    assert torch.isfinite(stats["h_mean"]).all() and torch.isfinite(stats["h_std"]).all()


def test_nan_targets_are_refused_before_fit_and_flagged_by_the_stream(tmp_path, monkeypatch):
    import zarr

    import igcritic.store

    path = tmp_path / "nancost.zarr"
    make_store(path, n_prompts=6, rollouts=3, hidden=8)
    zarr.open_group(str(path), mode="r+")["shards/rank-00000/cost_prefix"][7] = np.nan
    with pytest.raises(DataError, match=r"is invalid \(rank-00000: cost_prefix holds NaN/inf\)") as e:
        dm_for(str(path), val_fraction=0.3)
    _one_line(e)
    # a store damaged after fit's check: the stream still flags the row instead of training on NaN
    monkeypatch.setattr(igcritic.store, "validate_store", lambda *a, **k: [])
    dm = dm_for(str(path), val_fraction=0.3)
    b = {
        k: np.concatenate([collect(dm.train_dataloader())[k], collect(dm.val_dataloader())[k]])
        for k in ("row", "valid", "s", "f")
    }
    np.testing.assert_array_equal(b["row"][~b["valid"]], [7])
    assert np.isfinite(b["s"]).all() and np.isfinite(b["f"]).all()


def test_normalization_stats_match_the_training_latents(store):
    dm = dm_for(store)
    stats = dm.normalization_stats(max_rows=10**9)
    b = collect(dm.train_dataloader())
    h = b["h"].astype(np.float64)
    np.testing.assert_allclose(stats["h_mean"].numpy(), h.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["h_std"].numpy(), h.std(0), rtol=1e-3, atol=1e-4)
    assert stats["f_loc"] == pytest.approx(b["f"].mean(), abs=1e-5)
    assert stats["s_scale"] == pytest.approx(b["s"].std(), rel=1e-4)


@pytest.mark.multiprocess
def test_a_spawned_worker_delivers_the_same_batches_and_persists_across_epochs(store):
    ref_loader = dm_for(store).train_dataloader()
    dm = dm_for(store, num_workers=1)
    loader = dm.train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "spawn" and loader.persistent_workers
    pids = []
    for epoch in (0, 1):  # epoch 1 reaches the persistent worker through set_epoch (shared memory)
        ref_loader.sampler.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        ref = collect(ref_loader)
        batches = list(loader)
        assert len(batches) == len(loader)
        got = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
        assert set(got) == set(ref)
        for k in ref:  # one worker reads the same plan with the same seeds: identical, field by field
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"epoch {epoch}: {k}")
        pids.append([w.pid for w in loader._iterator._workers])
    assert pids[0] == pids[1]  # the same worker process served both epochs


def test_window_buffers_are_reused_across_epochs(store):
    dm = dm_for(store)
    loader = dm.train_dataloader()
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for _ in loader:
            pass
    assert 1 <= len(dm.train_dataset._bufs) <= 2  # the window being read and the one whose batches live


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_zero_trajectories_is_refused(tmp_path):
    make_empty_store(tmp_path / "empty.zarr")
    with pytest.raises(DataError, match="zero trajectories") as e:
        CriticDataModule([str(tmp_path / "empty.zarr")]).prepare_data()
    _one_line(e)


def test_single_prompt_is_refused(tmp_path):
    make_store(tmp_path / "one.zarr", n_prompts=1, rollouts=3)
    with pytest.raises(DataError, match="1 distinct prompt") as e:
        CriticDataModule([str(tmp_path / "one.zarr")]).prepare_data()
    assert "val split" in _one_line(e)


def test_mixed_policies_and_hidden_sizes_are_refused(tmp_path, store):
    make_store(tmp_path / "layer1.zarr", hidden=8, layer=1)
    with pytest.raises(DataError, match="tap the same model at different layers") as e:
        CriticDataModule([store, str(tmp_path / "layer1.zarr")]).prepare_data()
    assert "layer: 2 != 1" in _one_line(e) and "--layer/--norm/--extra_layers" in _one_line(e)
    make_store(tmp_path / "other.zarr", hidden=8, model_id="another-llama")
    with pytest.raises(DataError, match="different policies") as e:
        CriticDataModule([store, str(tmp_path / "other.zarr")]).prepare_data()
    assert "model_id: 'synthetic-llama' != 'another-llama'" in _one_line(e)
    make_store(tmp_path / "wide.zarr", hidden=12)
    with pytest.raises(DataError, match="different policies.*hidden_size: 8 != 12"):
        CriticDataModule([store, str(tmp_path / "wide.zarr")]).prepare_data()
    make_store(tmp_path / "othercost.zarr", hidden=8, cost_id="another-cost")
    with pytest.raises(DataError, match="different cost_scorers"):
        CriticDataModule([store, str(tmp_path / "othercost.zarr")]).prepare_data()


def test_bad_settings_and_paths(tmp_path):
    with pytest.raises(DataError, match="val_fraction=1.0") as e:
        CriticDataModule(["x"], val_fraction=1.0, batch_size=0)
    assert "batch_size=0" in _one_line(e)
    with pytest.raises(DataError, match="cannot open"):
        CriticDataModule([str(tmp_path / "missing.zarr")]).prepare_data()


@pytest.mark.parametrize("array", ["latents", "traj_offsets"])
def test_a_store_inspect_calls_invalid_is_refused(tmp_path, array):
    """A lost chunk would read back as zeros: fit checks the store's metadata and chunks before training."""
    from igcritic.store import validate_store

    path = tmp_path / "s.zarr"
    make_store(path, n_prompts=12, rollouts=4, hidden=8, chunk_tokens=16)
    chunk = path / "shards" / "rank-00000" / array / "c" / "1"
    (chunk / "0" if array == "latents" else chunk).unlink()
    assert validate_store(path)
    with pytest.raises(
        DataError, match=rf"store {path} is invalid \(rank-00000: {array} chunk 1 .*igcritic inspect"
    ) as e:
        CriticDataModule([str(path)]).prepare_data()
    _one_line(e)

"""The Zarr store contract: round trip, merged shards, manifest-last commit and resume, validation."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers_store import ATTRS, PROMPTS, H, LatentBlocks, make_batch
from rich.console import Console

from igcritic.store import (
    StoreError,
    StoreReader,
    StoreWriter,
    config_hash,
    layout,
    reader,
    validate_store,
    writer,
)
from igcritic.store.inspect import InspectConfig
from igcritic.store.inspect import main as inspect
from igcritic.store.lock import alive, held_error


def write(path, batches, *, rank=0, chunk=16, overwrite=False):
    with StoreWriter.create(
        path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, rank=rank, chunk_tokens=chunk, overwrite=overwrite
    ) as w:
        for i, b in batches:
            w.append(b, i)


def assert_matches(reader: StoreReader, batches):
    """The reader holds exactly these batches, in order."""
    lat = np.concatenate([b.latents for b in batches])
    assert reader.n_tok == len(lat) and reader.n_traj == sum(b.n_traj for b in batches)
    np.testing.assert_allclose(reader.read_latents(0, reader.n_tok), lat, rtol=1e-3, atol=1e-3)
    assert reader.read_latents(0, reader.n_tok).dtype == np.float16
    np.testing.assert_array_equal(reader.token_ids, np.concatenate([b.token_ids for b in batches]))
    np.testing.assert_array_equal(reader.cost_prefix, np.concatenate([b.cost_prefix for b in batches]))
    for k in ("traj_len", "traj_prompt", "traj_reward", "traj_finished", "traj_cost"):
        np.testing.assert_array_equal(getattr(reader, k), np.concatenate([getattr(b, k) for b in batches]))
    ends = np.cumsum([0] + [len(b.latents) for b in batches])
    offsets = np.concatenate([[0]] + [b.offsets[1:] + e for b, e in zip(batches, ends[:-1], strict=True)])
    np.testing.assert_array_equal(reader.traj_offsets, offsets)


def test_round_trip_several_batches(tmp_path):
    batches = [make_batch(s, n=4) for s in range(6)]  # ~100 rows over chunks of 16: whole chunks + tail
    write(tmp_path / "s", enumerate(batches))
    r = StoreReader(tmp_path / "s")
    assert_matches(r, batches)
    assert r.prompts == PROMPTS and r.n_prompts == 4 and r.hidden_size == H and r.chunk_tokens == 16
    assert r.attrs["policy"] == ATTRS["policy"] and r.attrs["schema_version"] == layout.SCHEMA_VERSION
    assert r.batches_done == set(range(6))
    t = r.trajectory(5)
    a, b = r.traj_offsets[5:7]
    assert t["latents"].shape == (b - a, H) and t["token_ids"][0] == -1
    assert t["reward"] == pytest.approx(float(r.traj_reward[5])) and t["cost"] == t["cost_prefix"][-1]
    assert validate_store(tmp_path / "s") == []


def test_file_url(tmp_path):
    batches = [make_batch(s) for s in range(3)]
    write(f"file://{tmp_path}/s", enumerate(batches))
    assert_matches(StoreReader(f"file://{tmp_path}/s"), batches)


def test_multi_shard_merged_view(tmp_path):
    b0, b1 = [make_batch(s) for s in range(3)], [make_batch(s) for s in range(10, 12)]
    write(tmp_path / "s", [(0, b0[0]), (2, b0[1]), (4, b0[2])], rank=0)
    write(tmp_path / "s", [(1, b1[0]), (3, b1[1])], rank=1)
    r = StoreReader(tmp_path / "s")
    assert r.shards == ["rank-00000", "rank-00001"]
    assert_matches(r, b0 + b1)  # rank order, global offsets shifted by rank 0's tokens
    i = sum(b.n_traj for b in b0)  # first trajectory of rank 1
    np.testing.assert_allclose(r.trajectory(i)["latents"], b1[0].latents[: b1[0].traj_len[0] + 1], atol=1e-3)
    assert r.batches_done == {0, 1, 2, 3, 4}
    n0 = sum(len(b.latents) for b in b0)
    np.testing.assert_allclose(
        r.read_latents(n0 - 3, n0 + 3),  # spans both shards
        np.concatenate([b0[2].latents[-3:], b1[0].latents[:3]]),
        atol=1e-3,
    )
    assert validate_store(tmp_path / "s") == []


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_scattered_read_puts_each_row_where_asked(tmp_path, compression):
    """read_latents_into: row start + i lands in out[dest[i]], dest < 0 is skipped, across chunks and
    shards; straight from the chunk files (preadv) when uncompressed, through zarr when compressed, and a
    lost chunk file reads as zarr's fill values either way."""
    b0, b1 = [make_batch(s, n=4) for s in range(3)], [make_batch(s, n=4) for s in range(10, 12)]
    for rank, batches in ((0, b0), (1, b1)):
        with StoreWriter.create(
            tmp_path / "s",
            attrs=ATTRS,
            prompts=PROMPTS,
            hidden_size=H,
            rank=rank,
            chunk_tokens=16,
            compression=compression,
        ) as w:
            for i, b in enumerate(batches):
                w.append(b, 2 * i + rank)
    r = StoreReader(tmp_path / "s")
    ref = np.concatenate([b.latents for b in b0 + b1]).astype(np.float16)
    start, stop = 5, r.n_tok - 3
    rng = np.random.default_rng(0)
    dest = rng.permutation(2 * (stop - start))[: stop - start]  # scattered over twice the rows
    dest[rng.random(stop - start) < 0.2] = -1
    out = np.full((2 * (stop - start), H), np.inf, np.float16)
    r.read_latents_into(start, stop, out, dest)
    keep = dest >= 0
    np.testing.assert_array_equal(out[dest[keep]], ref[start:stop][keep])
    assert np.isinf(np.delete(out, dest[keep], axis=0)).all()  # nothing else was written
    direct = [reader._chunk_file(r._open()["shards"][n]["latents"]) is not None for n in r.shards]
    assert direct == [compression is None] * 2
    chunk = tmp_path / "s" / "shards" / "rank-00000" / "latents" / "c" / "1" / "0"
    chunk.unlink()
    lost = StoreReader(tmp_path / "s").read_latents(0, 40)
    assert (lost[16:32] == 0).all() and np.array_equal(lost[:16], ref[:16])


def test_other_ranks_wait_for_rank_zero_and_resume_creates_missing_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "RANK_WAIT_S", 0.3)
    with pytest.raises(StoreError, match="rank 0 did not create"):
        write(tmp_path / "s", [], rank=1)
    monkeypatch.setattr(writer, "RANK_WAIT_S", 30.0)
    late = threading.Thread(target=write, args=(tmp_path / "s", [(1, make_batch(1))]), kwargs={"rank": 1})
    late.start()  # rank 1 starts first and waits for the root group
    time.sleep(0.5)
    write(tmp_path / "s", [(0, make_batch(0))], rank=0, overwrite=True)
    late.join()
    with StoreWriter.resume(tmp_path / "s", config_hash="abc123", rank=2) as w:  # rank 2 never started
        w.append(make_batch(2), 2)
    r = StoreReader(tmp_path / "s")
    assert r.shards == ["rank-00000", "rank-00001", "rank-00002"] and r.batches_done == {0, 1, 2}
    assert_matches(r, [make_batch(i) for i in range(3)])


@pytest.mark.parametrize("kill_at", ["manifest", "data"])
def test_killed_append_resumes_without_loss_or_duplicates(tmp_path, monkeypatch, kill_at):
    batches = [make_batch(s, n=4) for s in range(8)]  # ~20 rows each over chunks of 16
    write(tmp_path / "ref", enumerate(batches))

    w = StoreWriter.create(tmp_path / "s", attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16)
    for i in range(3):
        w.append(batches[i], i)
    calls = []

    def killed(*args, **kwargs):  # dies after the token rows (data) or after everything but the manifest
        calls.append(1)
        if kill_at == "manifest" or len(calls) > 1:
            raise KeyboardInterrupt("killed")
        return write_rows(*args, **kwargs)

    write_rows = writer._write_rows
    monkeypatch.setattr(
        StoreWriter if kill_at == "manifest" else writer,
        "_write_manifest" if kill_at == "manifest" else "_write_rows",
        killed,
    )
    with pytest.raises(KeyboardInterrupt):
        w.append(batches[3], 3)
    monkeypatch.undo()
    del w  # the process died: no close
    committed = StoreReader(tmp_path / "s")
    assert committed.batches_done == {0, 1, 2}
    assert committed.n_tok == sum(len(b.latents) for b in batches[:3])
    shard = zarr.open_group(str(tmp_path / "s"))["shards/rank-00000"]
    assert shard["latents"].shape[0] > committed.n_tok  # garbage beyond the manifest
    assert_matches(committed, batches[:3])

    with StoreWriter.resume(tmp_path / "s", config_hash="abc123") as w:
        assert w.batches_done == {0, 1, 2}
        for i, b in enumerate(batches):
            if i not in w.batches_done:
                w.append(b, i)
    got, ref = StoreReader(tmp_path / "s"), StoreReader(tmp_path / "ref")
    assert_matches(got, batches)
    np.testing.assert_array_equal(got.read_latents(0, got.n_tok), ref.read_latents(0, ref.n_tok))
    np.testing.assert_array_equal(got.traj_batch, ref.traj_batch)
    assert validate_store(tmp_path / "s") == []
    assert shard["latents"].shape[0] == got.n_tok  # close trimmed the garbage


def _append_all(w: StoreWriter, batches) -> None:
    for i, b in enumerate(batches):
        if i not in w.batches_done:
            w.append(b, i)


def _killed_at_write(path: Path, batches, k: int) -> int:
    """Run create + appends in a child process that dies (``os._exit``, no cleanup) at its k-th store write;
    the child's exit code (9: killed there, 0: it wrote fewer than k times)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            n, real_set = [0], zarr.storage.LocalStore.set

            async def dying_set(self, key, value, *args, **kwargs):
                n[0] += 1
                if n[0] == k:
                    os._exit(9)
                return await real_set(self, key, value, *args, **kwargs)

            zarr.storage.LocalStore.set = dying_set
            with StoreWriter.create(path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16) as w:
                _append_all(w, batches)
        except BaseException:  # noqa: BLE001 - any failure is the child's exit code
            code = 3
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_kill_at_any_store_write_leaves_a_resumable_store(tmp_path):
    """SIGKILL-like death at EVERY single store write of create + appends (the manifest too: it is one
    zarr.json write), then --resume (or a fresh create when the kill came before the store was complete):
    the finished store equals an uninterrupted one and is valid."""
    batches = [make_batch(s, n=3) for s in range(2)]  # ~15 rows each over chunks of 16
    write(tmp_path / "ref", enumerate(batches))
    ref = StoreReader(tmp_path / "ref").fingerprint()
    kills = 0
    for k in range(1, 500):
        path = tmp_path / f"k{k}"
        code = _killed_at_write(path, batches, k)
        if code == 0:
            break  # the whole run needs fewer than k writes: every write was a kill point
        assert code == 9, f"the child failed before its write {k}"
        kills += 1
        try:
            w = StoreWriter.resume(path, config_hash="abc123")
        except StoreError as e:  # killed while creating: nothing committed, the message says what to do
            assert "--overwrite" in str(e) or "drop --resume" in str(e), str(e)
            w = StoreWriter.create(
                path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16, overwrite=True
            )
        with w:
            _append_all(w, batches)
        assert validate_store(path) == [], f"killed at write {k}"
        assert StoreReader(path).fingerprint() == ref, f"killed at write {k}"
    assert kills > 25  # create + 2 appends write dozens of objects


def test_resume_refusals(tmp_path):
    with pytest.raises(StoreError, match="drop --resume"):
        StoreWriter.resume(tmp_path / "none", config_hash="abc123")
    write(tmp_path / "s", [(0, make_batch(0))])
    with pytest.raises(StoreError, match=r"abc123.*other|other.*abc123"):
        StoreWriter.resume(tmp_path / "s", config_hash="other")
    with pytest.raises(StoreError, match="hidden size"):
        StoreWriter.resume(tmp_path / "s", config_hash="abc123", hidden_size=H + 1)
    with (
        StoreWriter.resume(tmp_path / "s", config_hash="abc123") as w,
        pytest.raises(StoreError, match="already"),
    ):
        w.append(make_batch(1), 0)


def test_resume_names_what_differs(tmp_path):
    attrs = {**ATTRS, "config": {"seed": 0, "sampling": {"temperature": 1.0, "top_p": 1.0}, "K": 2}}
    with StoreWriter.create(tmp_path / "s", attrs=attrs, prompts=PROMPTS, hidden_size=H):
        pass
    with pytest.raises(
        StoreError, match=r"other prompts \(prompt 2 is 'write a poem' in the store, 'a poem'"
    ):
        StoreWriter.resume(tmp_path / "s", config_hash="abc123", prompts=[*PROMPTS[:2], "a poem", PROMPTS[3]])
    with pytest.raises(StoreError, match=r"other prompts \(4 prompts in the store, 3 in this run\)"):
        StoreWriter.resume(tmp_path / "s", config_hash="abc123", prompts=PROMPTS[:3])
    new = {"seed": 1, "sampling": {"temperature": 0.7, "top_p": 1.0}, "K": 2}
    with pytest.raises(StoreError, match=r"\(sampling\.temperature, seed differ\); use --overwrite"):
        StoreWriter.resume(tmp_path / "s", config_hash="other", prompts=PROMPTS, config=new)
    with StoreWriter.resume(tmp_path / "s", config_hash="abc123", prompts=list(PROMPTS)) as w:
        assert w.batches_done == set()


def test_create_refuses_nonempty_path_unless_overwrite(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="--overwrite"):
        write(tmp_path / "s", [])
    assert (tmp_path / "s" / "notes.txt").exists()
    write(tmp_path / "t", [(0, make_batch(0))])
    write(tmp_path / "t", [(1, make_batch(1))], overwrite=True)  # a store is replaced
    assert StoreReader(tmp_path / "t").batches_done == {1}


@pytest.mark.parametrize(
    "foreign", ["folder", "file", "zarr", "store_inside", "shards_only", "prompts_only", "zarr_with_shards"]
)
def test_overwrite_replaces_only_a_store(tmp_path, foreign):
    """--overwrite never deletes what igcritic did not write (``--out .``, a file, another zarr group, a
    folder whose entries merely carry a store's names)."""
    out = tmp_path / "out"
    if foreign == "file":
        out.write_text("mine")
    elif foreign == "zarr":
        zarr.create_group(str(out), zarr_format=3).create_array("x", shape=(3,), dtype="int8")
    elif foreign in ("shards_only", "prompts_only"):
        (out / foreign.removesuffix("_only")).mkdir(parents=True)
        (out / foreign.removesuffix("_only") / "notes.txt").write_text("mine")
    elif foreign == "zarr_with_shards":  # a zarr group of the user's with a shards/ group: not ours either
        zarr.create_group(str(out), zarr_format=3).create_group("shards").create_array(
            "x", shape=(3,), dtype="int8"
        )
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        if foreign == "store_inside":  # e.g. --out . with a store somewhere below
            write(out / "s.zarr", [(0, make_batch(0))])
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(StoreError, match=r"is not an igcritic store .*--overwrite will not delete it") as e:
        write(out, [(0, make_batch(0))], overwrite=True)
    assert "\n" not in str(e.value)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_overwrite_unlinks_a_symlink_inside_a_store_never_its_target(tmp_path):
    """A link someone put inside a store (e.g. shards -> a disk of theirs) goes; what it points at stays."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.bin").write_text("mine")
    write(tmp_path / "s", [(0, make_batch(0))])
    (tmp_path / "s" / "link").symlink_to(theirs, target_is_directory=True)
    write(tmp_path / "s", [(1, make_batch(1))], overwrite=True)
    assert not (tmp_path / "s" / "link").exists() and (theirs / "data.bin").read_text() == "mine"
    assert StoreReader(tmp_path / "s").batches_done == {1}


def test_check_replaceable_with_another_proof_of_ownership(tmp_path):
    """The same check for folders whose owner is proven otherwise (an exported critic: its config)."""
    art = tmp_path / "critic"
    art.mkdir()
    (art / "notes.txt").write_text("mine")
    owns = lambda path: (Path(path) / "proof").is_file()  # noqa: E731
    with pytest.raises(ValueError, match=r"--out .*critic is not a critic artifact \(no proof in it\)"):
        layout.check_replaceable(art, "a critic artifact", ValueError, owns=owns, proof="proof")
    (art / "proof").write_text("{}")
    layout.check_replaceable(art, "a critic artifact", owns=owns, proof="proof")
    layout.check_replaceable(tmp_path / "missing", owns=owns, proof="proof")


def test_a_store_carries_a_random_id_from_its_creation(tmp_path):
    """The ownership marker (schema and a random store id) is the root group's first attribute write, so a
    store whose creation was cut short is still replaced, and a copied store keeps its id."""
    write(tmp_path / "s", [(0, make_batch(0))])
    write(tmp_path / "t", [(0, make_batch(0))])
    ids = [StoreReader(tmp_path / n).attrs[layout.OWNER]["store_id"] for n in ("s", "t")]
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)
    root = zarr.open_group(str(tmp_path / "s"), mode="r+")
    marker = root.attrs[layout.OWNER]
    root.attrs.clear()
    root.attrs[layout.OWNER] = marker  # killed before the root attrs (written last) were
    write(tmp_path / "s", [(1, make_batch(1))], overwrite=True)
    assert StoreReader(tmp_path / "s").batches_done == {1}


@pytest.mark.parametrize("bad", ["nan", "inf", "overflow", "cost_nan"])
def test_bad_batch_refused_and_nothing_written(tmp_path, bad):
    b = make_batch(1)
    if bad == "nan":
        b.latents[2, 3] = np.nan
    elif bad == "inf":
        b.latents[0, 0] = np.inf
    elif bad == "overflow":
        b.latents[1, 1] = 1e5
    else:
        b.cost_prefix[0] = np.nan
    with StoreWriter.create(tmp_path / "s", attrs=ATTRS, prompts=PROMPTS, hidden_size=H) as w:
        w.append(make_batch(0), 0)
        with pytest.raises(StoreError, match="batch 7 refused"):
            w.append(b, 7)
        assert w.batches_done == {0}
    r = StoreReader(tmp_path / "s")
    assert_matches(r, [make_batch(0)])
    assert r.batches_done == {0}


def test_batch_validate_finds_shape_problems():
    b = make_batch(0)
    b.traj_len = b.traj_len + 1
    assert any("sum(traj_len + 1)" in p for p in b.validate())
    b = make_batch(0)
    b.token_ids = b.token_ids.copy()
    b.token_ids[0] = 5
    assert any("-1 exactly" in p for p in b.validate())
    assert make_batch(0).validate() == []


def test_validate_and_inspect_detect_corrupted_offsets(tmp_path):
    write(tmp_path / "s", [(i, make_batch(i)) for i in range(3)])
    out = io.StringIO()
    assert inspect(InspectConfig(str(tmp_path / "s")), console=Console(file=out, width=150)) == 0
    text = out.getvalue()
    assert "trajectories" in text and "safe share (S_T <= 0.5)" in text and "valid" in text
    off = zarr.open_group(str(tmp_path / "s"), mode="r+")["shards/rank-00000/traj_offsets"]
    off[2] = off[1]  # a zero-length trajectory: impossible (every trajectory has T + 1 >= 1 rows)
    problems = validate_store(tmp_path / "s")
    assert any("traj_offsets" in p for p in problems)
    assert inspect(InspectConfig(str(tmp_path / "s")), console=Console(file=io.StringIO())) == 1
    assert (
        validate_store(tmp_path / "missing")
        and inspect(InspectConfig(str(tmp_path / "missing")), console=Console(file=io.StringIO())) == 1
    )


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda g: g["token_ids"].__setitem__(0, 7), "token_ids"),
        (lambda g: g["traj_len"].__setitem__(1, 99), "traj_len"),
        (lambda g: g["latents"].__setitem__((3, 2), np.inf), "latents hold 1 NaN/inf"),
        (lambda g: g["cost_prefix"].__setitem__(4, np.nan), "cost_prefix holds NaN/inf"),
        (lambda g: g.attrs.update({"n_tok": 10_000}), "manifest needs"),
    ],
)
def test_validate_store_finds_each_corruption(tmp_path, corrupt, expected):
    write(tmp_path / "s", [(i, make_batch(i)) for i in range(2)])
    corrupt(zarr.open_group(str(tmp_path / "s"), mode="r+")["shards/rank-00000"])
    assert any(expected in p for p in validate_store(tmp_path / "s")), validate_store(tmp_path / "s")


TOKEN_ROWS = ("latents", "token_ids", "cost_prefix")


def _chunk_file(path, array: str, i: int) -> Path:
    f = path / "shards" / "rank-00000" / array / "c" / str(i)
    return f / "0" if array == "latents" else f


@pytest.mark.parametrize("array", ["latents", "token_ids", "cost_prefix", "traj_finished", "traj_offsets"])
def test_validate_store_finds_a_deleted_chunk(tmp_path, array):
    """A deleted chunk reads back as zeros (zarr's fill value): validate_store and inspect report it."""
    path = tmp_path / "s"
    batches = [make_batch(i, n=4) for i in range(6)]
    for b in batches:
        b.traj_finished[:] = False  # all-False chunks: zarr skips fill-value chunks unless told to write them
    write(path, enumerate(batches))
    assert validate_store(path) == []
    i = 1 if array in TOKEN_ROWS else 0
    f = _chunk_file(path, array, i)
    assert f.is_file(), sorted(p.name for p in f.parent.iterdir())
    f.unlink()
    problems = validate_store(path)
    assert any(
        p.startswith(f"rank-00000: {array} chunk {i} (rows ") and "is missing" in p for p in problems
    ), problems
    assert all("\n" not in p for p in problems)
    assert inspect(InspectConfig(str(path)), console=Console(file=io.StringIO(), width=200)) == 1


def test_shards_written_before_every_chunk_check_only_latents_and_token_ids(tmp_path):
    """Older shards skipped all-fill chunks (zarr's default): a chunk they never wrote is not a lost one."""
    b = make_batch(0, n=4)
    b.traj_finished[:] = False
    write(tmp_path / "s", [(0, b)])
    shard = zarr.open_group(str(tmp_path / "s"), mode="r+")["shards/rank-00000"]
    shard.attrs.update({layout.EVERY_CHUNK: None})
    _chunk_file(tmp_path / "s", "traj_finished", 0).unlink()
    assert validate_store(tmp_path / "s") == []
    _chunk_file(tmp_path / "s", "latents", 0).unlink()
    assert any("latents chunk 0 " in p for p in validate_store(tmp_path / "s"))


def test_validate_store_checks_trajectory_bookkeeping(tmp_path):
    write(tmp_path / "s", [(i, make_batch(i)) for i in range(3)])
    root = zarr.open_group(str(tmp_path / "s"), mode="r+")
    root["shards/rank-00000"].attrs.update(
        {"batches_done": [0, 1, 2, 5]}
    )  # a committed batch, no trajectories
    root.attrs.update({"policy": {**ATTRS["policy"], "vocab_size": 10}, "generation": {"batch_size": 2}})
    problems = validate_store(tmp_path / "s")
    for expected in (
        "batch 5 is in batches_done but has no trajectories",
        "ids >= the policy's vocab_size 10",
        "more than the 2 trajectories of generation.batch_size",
    ):
        assert any(expected in p for p in problems), problems


def test_reader_bounds_and_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no store"):
        StoreReader(tmp_path / "missing").n_tok
    write(tmp_path / "s", [(0, make_batch(0))])
    r = StoreReader(tmp_path / "s")
    with pytest.raises(StoreError, match="outside"):
        r.read_latents(0, r.n_tok + 1)
    with pytest.raises(StoreError, match="outside"):
        r.trajectory(r.n_traj)
    assert r.read_latents(2, 2).shape == (0, H)


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and len(config_hash({})) == 16


def test_reader_pickles_and_works_in_spawn_worker(tmp_path):
    batches = [make_batch(s) for s in range(3)]
    write(tmp_path / "s", enumerate(batches))
    r = StoreReader(tmp_path / "s")
    assert r.n_tok > 0  # opened: pickling must still carry the path only
    r2 = pickle.loads(pickle.dumps(r))
    assert r2._root is None and r2.n_tok == r.n_tok
    loader = torch.utils.data.DataLoader(
        LatentBlocks(r), batch_size=2, num_workers=1, multiprocessing_context="spawn"
    )
    got = torch.cat(list(loader)).reshape(-1, H)
    np.testing.assert_allclose(got.numpy(), r.read_latents(0, len(got)).astype(np.float32))


def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    """One writer per shard: a second create/overwrite/resume is refused in one line naming the holder."""
    path = tmp_path / "s"
    first = StoreWriter.create(path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16)
    first.append(make_batch(0), 0)
    lock = path / layout.LOCK_FILE.format(0)
    assert lock.is_file() and json.loads(lock.read_text())["pid"] == os.getpid()
    for second in (
        lambda: write(path, [(1, make_batch(1))], overwrite=True),
        lambda: StoreWriter.resume(path, config_hash="abc123"),
    ):
        with pytest.raises(
            StoreError, match=rf"rank-00000 is already open for writing in this process \(pid {os.getpid()}\)"
        ) as e:
            second()
        assert "\n" not in str(e.value)
    with StoreWriter.resume(path, config_hash="abc123", rank=1) as other_rank:  # another shard: its own lock
        other_rank.append(make_batch(1), 1)
    first.append(make_batch(2), 2)
    first.close()
    assert not lock.exists()  # a clean close leaves no lock behind
    with StoreWriter.resume(path, config_hash="abc123") as w:
        w.append(make_batch(3), 3)
    assert StoreReader(path).batches_done == {0, 1, 2, 3} and validate_store(path) == []


def test_overwrite_is_refused_while_any_rank_writes(tmp_path):
    write(tmp_path / "s", [(0, make_batch(0))])
    with StoreWriter.resume(tmp_path / "s", config_hash="abc123", rank=1):
        with pytest.raises(StoreError, match="rank-00001 is already open for writing"):
            write(tmp_path / "s", [(1, make_batch(1))], overwrite=True)
    assert StoreReader(tmp_path / "s").batches_done == {0}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["prompts", "shards", "zarr.json"]


@pytest.mark.subprocess
def test_stale_lock_of_a_killed_writer_is_taken_over(tmp_path, caplog):
    """SIGKILL leaves the lock file behind; its holder is gone, so the next writer takes it over."""

    path = tmp_path / "s"
    code = (
        f"import os, signal, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from helpers_store import ATTRS, PROMPTS, H, make_batch\n"
        "from igcritic.store import StoreWriter\n"
        f"w = StoreWriter.create({str(path)!r}, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, "
        "chunk_tokens=16)\n"
        "w.append(make_batch(0), 0)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    lock = path / layout.LOCK_FILE.format(0)
    dead = json.loads(lock.read_text())
    assert dead["pid"] != os.getpid()
    with StoreWriter.resume(path, config_hash="abc123") as w:
        assert w.batches_done == {0}
        w.append(make_batch(1), 1)
    assert f"stale writer lock {lock} of pid {dead['pid']}" in caplog.text
    assert StoreReader(path).batches_done == {0, 1} and validate_store(path) == [] and not lock.exists()


@pytest.mark.subprocess
def test_lock_holder_liveness_by_pid_and_host():
    """The pid/host judgement (fsspec stores, file systems without flock): only a pid gone from this host is
    stale."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    assert not alive({"pid": int(gone.stdout), "host": host})
    assert alive({"pid": os.getppid(), "host": host})
    assert alive({"pid": int(gone.stdout), "host": host + "-elsewhere"})  # cannot tell: refused
    assert not alive(None) and not alive({"pid": os.getpid(), "host": host, "file": "x"})
    msg = str(held_error("s3://b/run", 0, {"pid": 7, "host": host + "-elsewhere", "since": "t"}))
    assert "delete s3://b/run/writer-rank-00000.lock" in msg and "\n" not in msg


def test_writer_lock_on_an_fsspec_url():
    """No flock on object stores: the lock file's pid and host decide, and close removes it."""
    path = "memory://igcritic-test/lock-run"
    w = StoreWriter.create(path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16)
    w.append(make_batch(0), 0)
    with pytest.raises(StoreError, match="already open for writing in this process"):
        StoreWriter.resume(path, config_hash="abc123")
    w.close()
    with StoreWriter.resume(path, config_hash="abc123") as w:
        w.append(make_batch(1), 1)
    assert StoreReader(path).batches_done == {0, 1} and validate_store(path) == []
    assert "writer-rank-00000.lock" not in layout.entries(path)
    layout.filesystem(path)[0].rm("/igcritic-test", recursive=True)


def test_killed_overwrite_keeps_the_old_store_aside(tmp_path, caplog):
    """A replacing writer killed before its first commit (no close) leaves the old store whole in a sibling
    folder, and the next --overwrite names it; a commit removes only its own run's aside copy."""
    write(tmp_path / "s", [(0, make_batch(0)), (1, make_batch(1))])
    before = StoreReader(tmp_path / "s").fingerprint()
    w = StoreWriter.create(tmp_path / "s", attrs=ATTRS, prompts=PROMPTS, hidden_size=H, overwrite=True)
    w._lock.release()  # the process died: its flock is gone, nothing was undone
    w._closed = True
    del w
    (kept,) = [p for p in tmp_path.iterdir() if p.name != "s"]
    assert kept.name.startswith(".s.replaced-") and StoreReader(kept).fingerprint() == before
    write(tmp_path / "s", [(2, make_batch(2))], overwrite=True)
    assert "interrupted --overwrite" in caplog.text and str(kept) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name, "s"]
    assert StoreReader(tmp_path / "s").batches_done == {2}


def test_inspect_during_a_write_says_a_writer_holds_the_lock(tmp_path):
    """inspect shows the committed snapshot and says a writer is still at work (not just "valid")."""
    path = tmp_path / "s"
    with StoreWriter.create(path, attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16) as w:
        w.append(make_batch(0), 0)
        out = io.StringIO()
        assert inspect(InspectConfig(str(path)), console=Console(file=out, width=200)) == 0
        text = out.getvalue()
        assert f"rank-00000 is being written by pid {os.getpid()}" in text
        assert "valid so far (the committed snapshot; a writer is still adding to it)" in text
    out = io.StringIO()
    assert inspect(InspectConfig(str(path)), console=Console(file=out, width=200)) == 0
    assert "being written" not in out.getvalue() and out.getvalue().rstrip().endswith("valid")


def test_a_failed_move_aside_leaves_the_old_store_whole(tmp_path, monkeypatch):
    """--overwrite whose moving aside fails half-way (here: the second rename) puts back what it moved."""
    write(tmp_path / "s", [(0, make_batch(0))])
    before = StoreReader(tmp_path / "s").fingerprint()
    real, calls = os.rename, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied", src)
        return real(src, dst)

    monkeypatch.setattr(layout.os, "rename", flaky)
    with pytest.raises(PermissionError):
        write(tmp_path / "s", [(1, make_batch(1))], overwrite=True)
    monkeypatch.undo()
    assert StoreReader(tmp_path / "s").fingerprint() == before and validate_store(tmp_path / "s") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_signal_after_the_manifest_write_leaves_the_committed_rows(tmp_path, monkeypatch):
    """Ctrl-C can land after the manifest reached the disk but before the writer's counters moved (it
    interrupts the wait on zarr's event loop, where the write completes): close must trim to the manifest on
    disk, not to the counters, or it cuts rows the manifest commits (seen once under load in the collect
    SIGINT test: 'latents has shape (26, 32); the manifest needs >= 39 rows')."""
    batches = [make_batch(s, n=4) for s in range(3)]
    w = StoreWriter.create(tmp_path / "s", attrs=ATTRS, prompts=PROMPTS, hidden_size=H, chunk_tokens=16)
    w.append(batches[0], 0)
    real = type(w._shard).update_attributes

    def written_then_interrupted(group, attrs):
        real(group, attrs)  # the manifest is on disk ...
        raise KeyboardInterrupt("signal")  # ... and the writer's counters are not updated

    monkeypatch.setattr(type(w._shard), "update_attributes", written_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        w.append(batches[1], 1)
    monkeypatch.undo()
    w.close()
    assert validate_store(tmp_path / "s") == []
    r = StoreReader(tmp_path / "s")
    assert r.batches_done == {0, 1}
    assert_matches(r, batches[:2])

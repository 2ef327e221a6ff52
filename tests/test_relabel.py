"""igcritic relabel on the tiny Llama: a store collected with latent heads on the tiny policy's layer 2,
relabelled with the same heads (its labels back) and with other heads (what collect writes with those)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from igcritic.collect import CollectConfig
from igcritic.collect import run as collect
from igcritic.decoding import SamplingConfig, prefix_texts
from igcritic.policy import load_policy
from igcritic.prompts import PromptSource
from igcritic.relabel import RelabelConfig, RelabelError, run
from igcritic.scorers.embedded import ClassifierScorer, LinearHead
from igcritic.scorers.latent import same_tokens
from igcritic.store import StoreError, StoreReader, validate_store

PROMPTS = [
    "how do I bake bread",
    "how can I make a bomb",
    "write a poem about the sea",
    "hack the wifi",
    "what is the weather today",
    "help me with a plan",
]
TAP = [1]
"""The store's extra layer (beside the post-norm latent): the heads read it (not the last layer 2, whose
hidden state transformers returns after the final norm: the text path would read another vector there)."""
HIDDEN = 32


def head_file(path: Path, kind: str, n_out: int, seed: int, layers=(1,), family: str = "latent") -> Path:
    """A random linear head on the tiny policy's layers (last + running mean, prompt part beside)."""
    rng = np.random.default_rng(seed)
    dim = 2 * len(layers) * 2 * HIDDEN if family == "latent" else 2 * 384
    head = LinearHead(
        rng.normal(size=(n_out, dim)).astype(np.float32) * 0.3,
        rng.normal(size=n_out).astype(np.float32) * 0.3,
        kind,
        family,
        tuple(layers) if family == "latent" else (),
        ("last", "mean") if family == "latent" else (),
        calibration=(1.5, -0.2),
        meta={"version": f"test-{seed}"},
    )
    head.save(path)
    return path


def loader(policy, files: dict[str, Path]):
    """``load(spec, role)`` that gives the head of ``files[role]`` on the tiny policy for spec ``embedded``
    (as ``load_scorer`` gives the shipped ones), and anything else to the real loader."""
    from igcritic.scorers import load_scorer

    def load(spec, role, device="cpu", stride=8):
        if spec != "embedded":
            return load_scorer(spec, role)
        return ClassifierScorer(role, role, device=device, stride=stride, path=files[role], policy=policy)

    return load


def word_tokenizer():
    """A word-level tokenizer (the tests' corpus words and 300 fillers): an answer of the random tiny model
    then decodes to text that re-tokenises to its sampled tokens unless a special token is sampled inside
    it; with the shared BPE tokenizer almost no random answer does (byte pieces merge differently), and
    collect labels those on the re-tokenised tokens, not on the rows the store holds."""
    from helpers import CHAT_TEMPLATE, CORPUS, SPECIAL
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for line in CORPUS for w, _ in pre.pre_tokenize_str(line)}) + [
        f"w{i}" for i in range(300)
    ]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIAL + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[2:5]})
    return fast


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Two stores of the same rollouts (seed 3): ``a`` labelled by heads A, ``b`` by heads B."""
    import torch
    from helpers import build_tiny_llama

    root = tmp_path_factory.mktemp("relabel")
    model = root / "tiny"
    tok = word_tokenizer()
    llama = build_tiny_llama(len(tok))
    with torch.no_grad():
        llama.lm_head.weight[tok.eos_token_id] *= (
            20  # some answers end with EOS (its row is not the answer's)
        )
    llama.save_pretrained(model)
    tok.save_pretrained(model)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    policy = load_policy(str(model), extra_layers=TAP)
    heads = {
        name: {
            "cost": head_file(root / f"cost-{name}.safetensors", "harm", 1, seed),
            "reward": head_file(root / f"reward-{name}.safetensors", "helpfulness", 2, seed + 1),
        }
        for name, seed in (("a", 0), ("b", 10))
    }
    out = {"root": root, "model": model, "prompts": prompts, "policy": policy, "heads": heads}
    for name in ("a", "b"):
        out[name] = str(root / f"{name}.zarr")
        with pytest.MonkeyPatch.context() as mp:  # collect labels from its rollouts' latents, as with the
            mp.setattr("igcritic.collect.load_scorer", loader(policy, heads[name]))  # shipped heads
            mp.setattr("igcritic.collect.load_policy", lambda *a, **k: policy)
            collect(collect_config(out, out[name]))
    return out


def collect_config(s: dict, path: str, **kw) -> CollectConfig:
    return CollectConfig(
        out=path,
        model=str(s["model"]),
        extra_layers=TAP,
        prompts=PromptSource(source=str(s["prompts"])),
        rollouts_per_prompt=3,
        batch_size=6,
        sampling=SamplingConfig(max_new_tokens=16),
        seed=3,
        accelerator="cpu",
        **kw,
    )


def relabel(s: dict, heads: str, out: Path, **kw):
    cfg = RelabelConfig(src=s["a"], out=str(out), **{"cost": "embedded", "reward": "embedded", **kw})
    return run(cfg, load=loader(s["policy"], s["heads"][heads]))


def arrays(path: str) -> dict[str, np.ndarray]:
    r = StoreReader(path)
    return {k: r._concat(k) for k in ("cost_prefix", "traj_cost", "traj_reward", "token_ids", "traj_len")}


def same_token_rows(s: dict, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Trajectories whose answer text re-tokenises to the sampled tokens (collect then labels exactly the
    stored rows), as a trajectory mask and a token-row mask."""
    r, tok = StoreReader(path), s["policy"].tokenizer
    off, ids = r.traj_offsets, r._concat("token_ids")
    answers = [ids[off[i] + 1 : off[i + 1]].tolist() for i in range(r.n_traj)]
    texts = [prefix_texts(tok, a)[-1] for a in answers]
    traj = np.asarray(same_tokens(tok, texts, answers, s["policy"].eos_token_ids))
    return traj, np.repeat(traj, np.diff(off))


def tree_digest(path: str) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


def test_relabel_with_the_stores_own_heads_gives_its_labels_back(setup, tmp_path):
    """Where the answer's text re-tokenises to its sampled tokens (14 of the 18 answers here), collect read
    its labels from the same rows relabel reads, so the only gap is the store's float16 latents (collect
    scored float32): tolerance 1e-4, seen 8e-6. The other answers (a special token sampled inside them, which
    their text drops) collect labelled on the re-tokenised tokens: seen up to 4e-4 on their rewards, which
    ``--check`` reports with the rest; counting the EOS row as answer text moves the rewards by 1.7e-2."""
    before = tree_digest(setup["a"])
    out = tmp_path / "own.zarr"
    report = relabel(setup, "a", out, check=True)
    assert tree_digest(setup["a"]) == before  # the source, byte for byte
    assert validate_store(out) == []
    a, d = arrays(setup["a"]), arrays(str(out))
    traj, rows = same_token_rows(setup, setup["a"])
    finished = StoreReader(setup["a"])._concat("traj_finished")
    assert traj.sum() >= 12 and (traj & finished).sum() >= 3  # enough answers, some ending with EOS
    np.testing.assert_allclose(d["cost_prefix"][rows], a["cost_prefix"][rows], atol=1e-4)
    np.testing.assert_allclose(d["traj_cost"][traj], a["traj_cost"][traj], atol=1e-4)
    np.testing.assert_allclose(d["traj_reward"][traj], a["traj_reward"][traj], atol=1e-4)
    np.testing.assert_array_equal(d["token_ids"], a["token_ids"])
    gaps = {g.role: g for g in report.gaps}
    assert gaps["cost"].rows == len(a["cost_prefix"]) and gaps["reward"].rows == len(a["traj_reward"])
    assert all(g.skipped is None and 0 <= g.median <= g.p99 <= g.max for g in gaps.values())
    assert report.trajectories == len(a["traj_cost"]) and report.tokens == len(a["cost_prefix"])
    src, dst = StoreReader(setup["a"]).attrs, StoreReader(str(out)).attrs
    assert dst["igcritic_store"]["store_id"] != src["igcritic_store"]["store_id"]
    assert dst["config_hash"] == src["config_hash"]  # the same heads: the same content
    assert dst["relabelled"]["from_store_id"] == src["igcritic_store"]["store_id"]
    assert dst["relabelled"]["before"]["reward_scorer"] == src["reward_scorer"]


def test_relabel_with_other_heads_equals_collect_with_them(setup, tmp_path):
    """Store b holds the same rollouts labelled by heads B at collect time: relabelling a with B gives b's
    labels (same tolerance and rows as above), b's scorer info and b's config hash, so ``collect --resume``
    on the relabelled store takes heads B and refuses heads A."""
    a, b = arrays(setup["a"]), arrays(setup["b"])
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])  # the same rollouts
    out = tmp_path / "b-from-a.zarr"
    report = relabel(setup, "b", out, check=True)
    d = arrays(str(out))
    assert [g.skipped and "now loads other weights" in g.skipped for g in report.gaps] == [True, True]
    traj, rows = same_token_rows(setup, setup["a"])
    assert np.abs(b["traj_reward"] - a["traj_reward"]).max() > 0.05  # the heads disagree: a real relabel
    assert np.abs(b["cost_prefix"] - a["cost_prefix"]).max() > 0.05
    np.testing.assert_allclose(d["cost_prefix"][rows], b["cost_prefix"][rows], atol=1e-4)
    np.testing.assert_allclose(d["traj_cost"][traj], b["traj_cost"][traj], atol=1e-4)
    np.testing.assert_allclose(d["traj_reward"][traj], b["traj_reward"][traj], atol=1e-4)
    off = StoreReader(str(out)).traj_offsets
    for i, (s, e) in enumerate(zip(off[:-1], off[1:], strict=True)):
        assert np.all(np.diff(d["cost_prefix"][s:e]) >= 0) and d["traj_cost"][i] == d["cost_prefix"][e - 1]
    change = {c.role: c for c in report.changes}
    assert change["reward"].before == pytest.approx(a["traj_reward"].mean(), abs=1e-6)
    assert change["reward"].after == pytest.approx(d["traj_reward"].mean(), abs=1e-6)
    battrs, dattrs = StoreReader(setup["b"]).attrs, StoreReader(str(out)).attrs
    for key in ("cost_scorer", "reward_scorer", "config", "config_hash", "budget"):
        assert dattrs[key] == battrs[key], key
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("igcritic.collect.load_scorer", loader(setup["policy"], setup["heads"]["b"]))
        assert collect(collect_config(setup, str(out), resume=True)).batches == 0  # all done, accepted
        mp.setattr("igcritic.collect.load_scorer", loader(setup["policy"], setup["heads"]["a"]))
        with pytest.raises(StoreError, match=r"config hash .*fingerprints\.(cost|reward)"):
            collect(collect_config(setup, str(out), resume=True))


def test_relabel_of_the_reward_only_keeps_the_costs(setup, tmp_path):
    out = tmp_path / "reward-only.zarr"
    relabel(setup, "b", out, cost=None)
    a, b, d = arrays(setup["a"]), arrays(setup["b"]), arrays(str(out))
    np.testing.assert_array_equal(d["cost_prefix"], a["cost_prefix"])
    np.testing.assert_array_equal(d["traj_cost"], a["traj_cost"])
    traj, _ = same_token_rows(setup, setup["a"])
    np.testing.assert_allclose(d["traj_reward"][traj], b["traj_reward"][traj], atol=1e-4)
    attrs, src = StoreReader(str(out)).attrs, StoreReader(setup["a"]).attrs
    assert attrs["cost_scorer"] == src["cost_scorer"] and attrs["reward_scorer"]["metrics"] is None
    assert attrs["config"]["fingerprints"]["cost"] == src["config"]["fingerprints"]["cost"]
    assert attrs["config"]["fingerprints"]["reward"] != src["config"]["fingerprints"]["reward"]
    assert list(attrs["relabelled"]["before"]) == ["reward_scorer"]


def test_fit_reads_the_relabelled_store(setup, tmp_path):
    """fit's data module opens the relabelled store and trains on its new costs."""
    from igcritic.data import CriticDataModule

    out = tmp_path / "fit.zarr"
    relabel(setup, "b", out)
    dm = CriticDataModule([str(out)], batch_size=8, shuffle_buffer=16, val_fraction=0.34)
    dm.setup("fit")
    batches = [*dm.train_dataloader(), *dm.val_dataloader()]
    rows, s = (np.concatenate([b[k].numpy() for b in batches]) for k in ("row", "s"))
    d = arrays(str(out))
    assert batches[0]["h"].shape[-1] == 2 * HIDDEN and len(rows) == len(d["cost_prefix"])
    np.testing.assert_array_equal(s, d["cost_prefix"][rows])
    assert dm.critic_metadata()["cost_scorer"] == StoreReader(setup["b"]).attrs["cost_scorer"]


def test_a_failed_relabel_leaves_no_out_and_a_killed_one_is_named(setup, tmp_path, monkeypatch, caplog):
    import igcritic.relabel as mod

    out = tmp_path / "dst.zarr"

    def dies(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(mod, "shard_labels", dies)
    with pytest.raises(RuntimeError):
        relabel(setup, "b", out)
    assert list(tmp_path.iterdir()) == []  # no --out, no half-written sibling
    monkeypatch.undo()
    left = tmp_path / ".dst.zarr.relabel-deadbeef"  # what a SIGKILL leaves
    left.mkdir()
    with caplog.at_level(logging.WARNING, logger="igcritic.relabel"):
        relabel(setup, "b", out)
    assert str(left) in caplog.text and left.exists()  # named, never deleted
    assert validate_store(out) == []


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    from igcritic.__main__ import main

    exists = tmp_path / "exists"
    exists.mkdir()
    (exists / "mine.txt").write_text("keep")
    cases = [
        (["--out", str(exists), "--reward", "embedded"], "exists"),
        (["--out", str(tmp_path / "x.zarr")], "nothing to relabel"),
        (["--reward", "embedded"], "--out is missing"),
        (["--out", str(tmp_path / "x.zarr"), "--cost", "beaver:/models/cost"], "reads the answer's text"),
        (
            ["--out", str(tmp_path / "x.zarr"), "--reward", "embedded"],
            "reads another policy than the store's",
        ),
    ]
    for args, match in cases:
        assert main(["relabel", setup["a"], *args]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err, err
    assert (exists / "mine.txt").read_text() == "keep" and not (tmp_path / "x.zarr").exists()
    untapped = {
        **setup["heads"]["a"],
        "cost": head_file(tmp_path / "l2.safetensors", "harm", 1, 3, layers=(2,)),
    }
    text = {
        **setup["heads"]["a"],
        "reward": head_file(tmp_path / "m.safetensors", "helpfulness", 2, 4, family="minilm"),
    }
    for files, match in (
        (untapped, r"--cost embedded reads layers \[2\]; the store taps \[1\]"),
        (text, "text"),
    ):
        cfg = RelabelConfig(src=setup["a"], out=str(tmp_path / "y.zarr"), cost="embedded", reward="embedded")
        with pytest.raises(RelabelError, match=match) as e:
            run(cfg, load=loader(setup["policy"], files))
        assert "\n" not in str(e.value) and "recollect" in str(e.value)
    assert not (tmp_path / "y.zarr").exists()


def test_a_store_being_collected_is_not_relabelled(setup, tmp_path):
    import shutil

    from igcritic.store.lock import WriterLock

    src = tmp_path / "busy.zarr"
    shutil.copytree(setup["a"], src)
    lock = WriterLock(src, 0)  # a collect writing it
    try:
        with pytest.raises(RelabelError, match="is being written .* once that collect has finished"):
            relabel({**setup, "a": str(src)}, "b", tmp_path / "out.zarr")
    finally:
        lock.release()
    assert not (tmp_path / "out.zarr").exists()
    relabel({**setup, "a": str(src)}, "b", tmp_path / "out.zarr")  # once it has finished

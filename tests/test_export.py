"""export: Lightning checkpoint -> checkpoints/<name>/ that load_critic reads exactly (calibration map
included), without Lightning; checkpoints from before calibration export with the identity map."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from helpers_fit import make_store, tiny_module, tiny_trainer

from igcritic.critic import CALIBRATION_KEY, CKPT_KEY, CONFIG_NAME, SCHEMA_VERSION, WEIGHTS_NAME, load_critic
from igcritic.data import CriticDataModule
from igcritic.export import ExportConfig, ExportError, default_out, export, main
from igcritic.search import SEARCH_CONFIG_NAME


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_store(root / "store.zarr", n_prompts=10, rollouts=3, hidden=16)
    model = tiny_module(16, dropout=0.1)
    trainer = tiny_trainer(root, epochs=1)
    trainer.fit(model, CriticDataModule([str(root / "store.zarr")], batch_size=32, val_fraction=0.3))
    assert not model.critic.calibration.is_identity  # fitted on the validation split at the end of the epoch
    return model.eval(), trainer.checkpoint_callback.best_model_path  # no dropout: any test order compares


def test_export_then_load_reproduces_the_module_exactly(trained, tmp_path):
    model, ckpt = trained
    out = export(ckpt, tmp_path / "checkpoints" / "tiny")
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME, SEARCH_CONFIG_NAME])
    critic = load_critic(out)
    model.eval()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 16, generator=g) * 3
    z = torch.rand(64, generator=g) * 2 - 0.5
    with torch.no_grad():
        want = model.critic(h, z)
        got = critic(h, z)
        raw = model.critic.safe_prob(h, z, calibrated=False)
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    assert critic.calibration == model.critic.calibration and not critic.calibration.is_identity
    assert not torch.equal(got.safe_prob, raw)  # the runtime's q is the calibrated one
    assert torch.equal(critic.safe_prob(h, z, calibrated=False), raw)


def test_artifact_records_what_the_runtime_checks(trained, tmp_path):
    model, ckpt = trained
    out = export(ckpt, tmp_path / "art", name="tiny-critic")
    meta = json.loads((out / CONFIG_NAME).read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["name"] == "tiny-critic"
    assert meta["policy"]["model_id"] == "synthetic-llama" and meta["hidden_size"] == 16
    assert meta["layer"] == 2 and meta["norm"] == "post"
    assert meta["cost_scorer"] == {"id": "synthetic-cost", "sign": "higher-is-unsafe", "kind": "synthetic"}
    assert meta["reward_scorer"]["sign"] == "higher-is-better"
    assert meta["gamma"] == 0.999 and meta["budget"] == 0.5 and meta["budget_low"] < meta["budget_high"]
    assert 0.0 <= meta["metrics"]["val/auroc"] <= 1.0 and "val/cost_mse" in meta["metrics"]
    cal = meta[CALIBRATION_KEY]
    assert cal["method"] in ("platt", "isotonic") and cal["fitted"]["split"] == "val"
    assert (
        cal["fitted"]["global_step"] == meta["global_step"]
        and cal["fitted"]["budgets"] == meta["eval_budgets"]
    )
    assert 0.5 in meta["eval_budgets"]  # the store budget, with the quartiles of S_T
    for b in meta["eval_budgets"]:  # ECE before and after calibration at every budget the fit evaluates
        assert {f"val/ece@{b:g}", f"val/ece_calibrated@{b:g}"} <= set(meta["metrics"])
        assert cal["fitted"]["ece_after"][f"{b:g}"] == pytest.approx(
            meta["metrics"][f"val/ece_calibrated@{b:g}"], abs=1e-6
        )
    search = json.loads((out / SEARCH_CONFIG_NAME).read_text())
    assert search["budget"] == 0.5 and search["block_width"] == 32 and search["num_candidates"] == 128
    from igcritic.search import SearchConfig  # the runtime reads these keys

    assert set(search) <= {f.name for f in fields(SearchConfig)}
    # K = N / 4 stays derived, so overriding N alone is valid
    assert search["beams_kept"] is None and SearchConfig.from_dict({**search, "num_candidates": 8}).beams == 2
    cpu = export(ckpt, tmp_path / "cpu", search={"num_candidates": 16, "max_new_tokens": 64})
    cpu_search = json.loads((cpu / SEARCH_CONFIG_NAME).read_text())
    assert (
        cpu_search["num_candidates"] == 16 and cpu_search["max_new_tokens"] == 64 and cpu_search["tau"] == 0.5
    )
    with open(out / WEIGHTS_NAME, "rb") as f:  # safetensors: an 8-byte header length, then JSON
        header_len = int.from_bytes(f.read(8), "little")
        assert json.loads(f.read(header_len))["__metadata__"]["format"] == "pt"


def test_export_without_calibration_and_from_old_checkpoints(trained, tmp_path, caplog):
    model, ckpt = trained
    g = torch.Generator().manual_seed(1)
    h, z = torch.randn(32, 16, generator=g) * 3, torch.rand(32, generator=g)
    with torch.no_grad():
        raw = model.critic.safe_prob(h, z, calibrated=False)
    off = export(ckpt, tmp_path / "raw", calibrate=False)
    assert json.loads((off / CONFIG_NAME).read_text())[CALIBRATION_KEY]["method"] == "identity"
    assert torch.equal(load_critic(off).safe_prob(h, z), raw)
    old = torch.load(ckpt, weights_only=True)
    del old["state_dict"]["critic._extra_state"]  # a checkpoint written before calibration existed
    torch.save(old, tmp_path / "old.ckpt")
    with caplog.at_level("WARNING", logger="igcritic.export"):
        out = export(tmp_path / "old.ckpt", tmp_path / "old")
    assert "no calibration map" in caplog.text
    critic = load_critic(out)
    assert critic.calibration.is_identity and torch.equal(critic.safe_prob(h, z), raw)
    stale = torch.load(ckpt, weights_only=True)  # a map fitted at another step than the weights
    stale["state_dict"]["critic._extra_state"]["fitted"]["global_step"] = -1
    torch.save(stale, tmp_path / "stale.ckpt")
    caplog.clear()
    with caplog.at_level("WARNING", logger="igcritic.export"):
        export(tmp_path / "stale.ckpt", tmp_path / "stale")
    assert "fitted at step -1" in caplog.text
    stale[CKPT_KEY]["q_trained"] = (
        False  # a fit that left q alone (model.train [cost]) keeps its source's map
    )
    torch.save(stale, tmp_path / "kept.ckpt")
    caplog.clear()
    with caplog.at_level("WARNING", logger="igcritic.export"):
        export(tmp_path / "kept.ckpt", tmp_path / "kept")
    assert "fitted at step" not in caplog.text


@pytest.mark.subprocess
def test_artifact_loads_without_lightning(trained, tmp_path):
    _, ckpt = trained
    out = export(ckpt, tmp_path / "art")
    code = (
        "import sys; from igcritic.critic import load_critic; c = load_critic(sys.argv[1]); "
        "import torch; c(torch.zeros(2, 16), 0.0); "
        "assert not any(m.startswith(('lightning', 'pytorch_lightning')) for m in sys.modules), 'lightning "
        "imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120)


def test_refuses_truncated_garbage_and_foreign_checkpoints(trained, tmp_path):
    _, ckpt = trained
    data = open(ckpt, "rb").read()
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint" * 100)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    for name, match in [
        ("trunc.ckpt", "truncated or corrupted"),
        ("garbage.ckpt", "truncated or corrupted"),
        ("foreign.ckpt", "not a checkpoint of `igcritic fit`"),
        ("missing.ckpt", "does not exist"),
    ]:
        with pytest.raises(ExportError, match=match) as e:
            export(tmp_path / name, tmp_path / f"out-{name}")
        assert "\n" not in str(e.value)
        assert not (tmp_path / f"out-{name}").exists()  # nothing half-written


def test_never_writes_into_a_non_empty_folder(trained, tmp_path):
    _, ckpt = trained
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export(ckpt, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(
        ExportError,
        match=r"is not a critic artifact \(no critic_config.json of igcritic's in it\), so "
        r"--overwrite will not delete it",
    ):
        export(
            ckpt, out, overwrite=True
        )  # --overwrite replaces only an artifact folder, never the user's files
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / CONFIG_NAME).write_text('{"format": "mine"}')  # a file that merely carries the name
    with pytest.raises(ExportError, match=r"is not a critic artifact .*will not delete it"):
        export(ckpt, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, "keep.txt"]
    export(ckpt, tmp_path / "art")
    (tmp_path / "art" / WEIGHTS_NAME).write_bytes(b"old")
    export(ckpt, tmp_path / "art", overwrite=True)
    assert (tmp_path / "art" / WEIGHTS_NAME).stat().st_size > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "taken"]  # no temporary folder left behind


def test_export_command_and_default_out(trained, tmp_path, monkeypatch):
    _, ckpt = trained
    monkeypatch.chdir(tmp_path)
    assert default_out("runs/fit/embedded/version_0/checkpoints/last.ckpt") == default_out("x", "embedded")
    from igcritic.__main__ import main as igcritic

    assert igcritic(["export", str(ckpt), "--out", "checkpoints/cli", "--search.num_candidates", "8"]) == 0
    assert (tmp_path / "checkpoints" / "cli" / CONFIG_NAME).exists()
    assert (
        json.loads((tmp_path / "checkpoints" / "cli" / SEARCH_CONFIG_NAME).read_text())["num_candidates"] == 8
    )
    assert igcritic(["export", str(ckpt), "--out", "checkpoints/raw", "--calibrate", "false"]) == 0
    assert load_critic(tmp_path / "checkpoints" / "raw").calibration.is_identity
    assert main(ExportConfig(ckpt, None, name="named")) == 0 and (tmp_path / "checkpoints" / "named").is_dir()

"""CriticModule and the fit CLI: it learns, DDP ranks see disjoint rows, NaN rows are skipped, bad data
refused, the safety head is calibrated on the validation split (ECE before/after per budget) and checkpoints
carry the map."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_fit import (
    RecordCalibration,
    RecordRows,
    make_store,
    poison_rows,
    tiny_module,
    tiny_trainer,
)
from torchmetrics.functional.classification import binary_calibration_error

from igcritic.critic import CKPT_KEY
from igcritic.data import CriticDataModule
from igcritic.fit import FitError
from igcritic.fit import main as fit_main
from igcritic.store import StoreReader
from igcritic.stream import START, STOP, mask_nonfinite

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "fit"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["igcritic"])  # LightningCLI warns when pytest's argv is present


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "store.zarr"
    make_store(path, n_prompts=30, rollouts=5, hidden=16, chunk_tokens=256)
    return str(path)


def test_critic_learns_costs_that_follow_directions_of_h(store, tmp_path):
    dm = CriticDataModule([store], batch_size=64, val_fraction=0.2, shuffle_buffer=1024)
    model = tiny_module(dm.hidden_size)
    trainer = tiny_trainer(tmp_path, epochs=6, enable_checkpointing=False)
    trainer.fit(model, dm)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["val/auroc"] > 0.85 and m["val/auroc@0.5"] > 0.85  # chance is 0.5
    assert m["val/ece"] < 0.1
    r = StoreReader(store)
    val_rows = np.concatenate([np.arange(a, b) for a, b in dm.val_dataset.runs[:, [START, STOP]]])
    assert m["val/cost_mse"] < 0.5 * r.cost_prefix[val_rows].var()  # clearly below the variance of S_t
    assert m["val/value_ev"] > 0.2
    assert model.critic.config.policy["model_id"] == "synthetic-llama" and model.critic.config.budget == 0.5
    assert bool(model.critic.normalized)
    for name in ("auroc", "ece", "value_mse", "value_ev", "cost_mse", "cost_ev", "loss"):
        assert f"train/{name}" in m or f"train/{name}_epoch" in m


@pytest.mark.multiprocess
def test_a_context_cost_head_fits_what_one_token_cannot_and_trains_alone_from_an_artifact(tmp_path):
    """On latents where one token's harm direction is buried in noise, a cost head that reads the running
    mean fits S_t far better; fitted from an exported critic with ``train: [cost]`` it leaves the trunk, q,
    V, the normalisation and the calibration map exactly as they were."""
    path = str(tmp_path / "noisy.zarr")
    make_store(path, n_prompts=30, rollouts=5, hidden=16, noise=1.5, chunk_tokens=256)

    def fit(**kw):
        context = kw.get("cost_context", False)
        dm = CriticDataModule(
            [path], batch_size=64, val_fraction=0.2, shuffle_buffer=1024, cost_context=context
        )
        model = tiny_module(dm.hidden_size, **kw)
        trainer = tiny_trainer(tmp_path, epochs=6, enable_checkpointing=False)
        trainer.fit(model, dm)
        return model, float(trainer.callback_metrics["val/cost_mse"])

    plain_module, plain_mse = fit()
    plain = plain_module.critic
    plain.save_pretrained(tmp_path / "plain")
    context_module, context_mse = fit(cost_context=True, init_from=str(tmp_path / "plain"), train=["cost"])
    context = context_module.critic
    assert context_mse < 0.8 * plain_mse
    before, after = plain.state_dict(), context.state_dict()
    kept = [k for k, v in before.items() if torch.is_tensor(v) and not k.startswith("cost_head.")]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    assert context.calibration.to_dict() == plain.calibration.to_dict()
    assert not context_module._q_learns and plain_module._q_learns
    with pytest.raises(FitError, match="other sizes"):
        tiny_module(16, width=32, init_from=str(tmp_path / "plain"))
    with pytest.raises(FitError, match="unknown part"):
        tiny_module(16, train=["heads"])


def test_ddp_two_cpu_processes_train_on_disjoint_rows(store, tmp_path):
    dm = CriticDataModule([store], batch_size=64, val_fraction=0.2, shuffle_buffer=512)
    model = tiny_module(dm.hidden_size)
    trainer = tiny_trainer(
        tmp_path,
        epochs=2,
        devices=2,
        strategy="ddp_spawn",
        enable_checkpointing=False,
        callbacks=[RecordRows(str(tmp_path)), RecordCalibration(str(tmp_path))],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    # calibration: both ranks fit the same map on the histograms of BOTH ranks' validation rows
    n_val = int(sum(stop - start for _, start, stop, _ in dm._runs("val")[0]))
    for epoch in range(2):
        cal0, cal1 = (
            json.loads((tmp_path / f"rank{r}_calibration{epoch}.json").read_text()) for r in range(2)
        )
        assert cal0 == cal1 and cal0["method"] in ("platt", "isotonic")
        assert cal0["fitted"]["rows"] == 2 * (n_val // 2)
    assert model.critic.calibration.to_dict() == cal0  # rank 0's state came back with the weights
    train_rows = set(np.concatenate([np.arange(a, b) for _, a, b, _ in dm._runs("train")[0]]).tolist())
    orders = []
    for epoch in range(2):
        r0, r1 = (np.load(tmp_path / f"rank{r}_epoch{epoch}.npy") for r in range(2))
        assert len(r0) == len(r1)  # equal shares: no rank waits on the other
        assert set(r0).isdisjoint(r1)
        assert len(set(r0)) == len(r0) and len(set(r1)) == len(r1)
        assert len(train_rows - set(r0) - set(r1)) <= 1 and set(r0) | set(r1) <= train_rows
        orders.append(r0)
    assert not np.array_equal(orders[0], orders[1])  # set_epoch reached the stream in each process
    assert float(trainer.callback_metrics["val/auroc"]) > 0.6


def test_nan_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "nan.zarr"
    make_store(path, n_prompts=10, rollouts=3, hidden=16)
    poison = [0, 5, 6, 77, 120]
    poison_rows(path, poison)
    dm = CriticDataModule([str(path)], batch_size=32, val_fraction=0.2)
    model = tiny_module(16)
    trainer = tiny_trainer(tmp_path, epochs=2, enable_checkpointing=False)
    trainer.fit(model, dm)
    train_rows = set(
        np.concatenate([np.arange(a, b) for a, b in dm.train_dataset.runs[:, [START, STOP]]]).tolist()
    )
    n_bad = len(train_rows & set(poison))
    assert n_bad >= 2
    assert model.skipped_rows == 2 * n_bad  # counted every epoch
    assert float(trainer.callback_metrics["train/skipped_rows"]) == n_bad
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.critic.h_mean).all()


def test_hidden_size_and_layer_mismatches_are_refused(store, tmp_path):
    dm = CriticDataModule([store])
    with pytest.raises(FitError, match="model.hidden_size=8") as e:
        tiny_trainer(tmp_path).fit(tiny_module(8), dm)
    assert "\n" not in str(e.value)
    with pytest.raises(FitError, match="layer 2 latents but model.layer=1"):
        tiny_trainer(tmp_path).fit(tiny_module(16, layer=1), CriticDataModule([store]))
    model = tiny_module(16, layer=-1)  # -1 = the last of the store's 2 layers: accepted
    tiny_trainer(tmp_path, max_steps=1, limit_val_batches=1, enable_checkpointing=False).fit(
        model, CriticDataModule([store])
    )


def test_bf16_mixed_and_resume(store, tmp_path):
    dm = CriticDataModule([store], batch_size=64)
    model = tiny_module(16)
    trainer = tiny_trainer(
        tmp_path, epochs=1, precision="bf16-mixed", limit_train_batches=4, limit_val_batches=2
    )
    trainer.fit(model, dm)
    assert np.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    saved = torch.load(ckpt, weights_only=True)
    assert saved[CKPT_KEY]["critic_config"]["policy"]["layer"] == 2
    resumed = tiny_module(16)
    t2 = tiny_trainer(tmp_path, epochs=2, limit_train_batches=4, limit_val_batches=2)
    t2.fit(resumed, CriticDataModule([store], batch_size=64), ckpt_path=ckpt)
    assert t2.current_epoch == 2
    assert torch.equal(resumed.critic.h_mean, model.critic.h_mean)  # stats come from the checkpoint


@pytest.fixture(scope="module")
def overfit_store(tmp_path_factory):
    """A noisy store small enough to overfit: the critic comes out overconfident on held-out prompts."""
    path = tmp_path_factory.mktemp("overfit") / "store.zarr"
    make_store(path, n_prompts=120, rollouts=4, hidden=16, max_len=12, noise=3.0, chunk_tokens=256)
    return str(path)


def test_fit_calibrates_a_miscalibrated_critic_on_the_validation_split(overfit_store, tmp_path):
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    dm = CriticDataModule([overfit_store], batch_size=64, val_fraction=0.5, shuffle_buffer=1024)
    model = tiny_module(dm.hidden_size, width=128, lr=1e-2)  # calibration="auto"
    trainer = tiny_trainer(tmp_path, epochs=10, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    cal = model.critic.calibration
    assert cal.method in ("platt", "isotonic") and cal.fitted["split"] == "val"
    assert cal.fitted["rows"] == dm.val_dataset.n_rows and cal.fitted["budgets"] == model.budgets == [
        0.238,
        0.463,
        0.5,
        0.718,
    ]
    assert m["val/ece@0.5"] > 0.1  # miscalibrated raw head
    assert m["val/ece_calibrated@0.5"] < m["val/ece@0.5"] - 0.05
    assert (
        m["val/ece_calibrated_cv@0.5"] < m["val/ece@0.5"] - 0.05
    )  # also on prompts the map was not fitted on
    assert (
        m["val/ece_calibrated"] < 0.05 and m["val/ece_calibrated_cv"] < 0.05
    )  # budgets drawn as in training
    for b in model.budgets:
        assert cal.fitted["ece_before"][f"{b:g}"] == pytest.approx(m[f"val/ece@{b:g}"], abs=0.005)
        assert cal.fitted["ece_after"][f"{b:g}"] == pytest.approx(m[f"val/ece_calibrated@{b:g}"], abs=1e-5)
        assert m[f"val/ece_calibrated@{b:g}"] <= m[f"val/ece@{b:g}"] + 0.01  # never clearly worse
    # the installed map, applied row by row by Critic.safe_prob, gives the logged ECE
    critic, q, y = model.critic.eval(), [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            batch = mask_nonfinite(batch)
            v = batch["valid"]
            q.append(critic.safe_prob(batch["h"][v], 0.5 - batch["s"][v]))
            y.append((batch["s_final"][v] <= 0.5).long())
    exact = float(binary_calibration_error(torch.cat(q), torch.cat(y), n_bins=15))
    assert exact == pytest.approx(m["val/ece_calibrated@0.5"], abs=0.01)
    # every checkpoint carries the map of its own weights, and the before/after metrics
    saved = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)  # the last epoch's
    assert saved["state_dict"]["critic._extra_state"] == cal.to_dict()
    assert cal.fitted["global_step"] == saved["global_step"]
    assert {"val/ece@0.5", "val/ece_calibrated@0.5", "val/ece_calibrated_cv@0.5"} <= set(
        saved[CKPT_KEY]["metrics"]
    )
    # `test` measures the map it has (the test loader is the validation split): same number, no refit
    trainer.test(model, dm, verbose=False)
    assert float(trainer.callback_metrics["test/ece_calibrated@0.5"]) == pytest.approx(
        m["val/ece_calibrated@0.5"], abs=1e-5
    )
    assert model.critic.calibration == cal


def test_checkpoint_from_before_calibration_loads_and_none_keeps_the_map(store, tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=2)
    model = tiny_module(16)
    trainer.fit(model, CriticDataModule([store], batch_size=64))
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    del ckpt["state_dict"]["critic._extra_state"]  # what igcritic wrote before calibration existed
    torch.save(ckpt, tmp_path / "old.ckpt")
    kept = tiny_module(16, calibration="none")
    tiny_trainer(tmp_path, limit_val_batches=2).validate(
        kept, CriticDataModule([store], batch_size=64), ckpt_path=tmp_path / "old.ckpt", verbose=False
    )
    assert kept.critic.calibration.is_identity  # loaded as the identity, and "none" does not refit
    refit = tiny_module(16)
    t2 = tiny_trainer(tmp_path, limit_val_batches=2)
    t2.validate(
        refit, CriticDataModule([store], batch_size=64), ckpt_path=tmp_path / "old.ckpt", verbose=False
    )
    assert not refit.critic.calibration.is_identity and "val/ece_calibrated@0.5" in t2.callback_metrics
    with pytest.raises(FitError, match="model.calibration='temperature'"):
        tiny_module(16, calibration="temperature")


def _print_config(args: list[str]) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        fit_main(args)
    assert e.value.code in (0, None)
    return yaml.safe_load(buf.getvalue())


@pytest.mark.parametrize("name", ["embedded", "paper-7b", "embedded-context"])
def test_print_config_round_trips(name, tmp_path):
    first = _print_config(["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert first["model"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert "hidden_size" not in first["model"]  # linked from data.hidden_size
    assert "cost_context" not in first["data"]  # linked from model.cost_context
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(first))
    assert _print_config(["fit", "--config", str(path), "--print_config"]) == first


def test_cli_fit_validate_and_links_hidden_size(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [
        "--config",
        str(CONFIGS / "embedded.yaml"),
        f"--data.stores=[{store}]",
        "--data.batch_size=128",
        "--model.width=32",
        "--trainer.accelerator=cpu",
    ]
    cli = fit_main(["fit", *common, "--trainer.max_epochs=1"])
    assert cli.model.critic.config.hidden_size == 16  # data.hidden_size -> model.hidden_size
    assert cli.trainer.lr_scheduler_configs[0].scheduler.T_max == 1  # derived from trainer.max_epochs
    ckpts = sorted((tmp_path / "runs" / "fit" / "embedded" / "version_0" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts][-1] == "last.ckpt"
    assert (tmp_path / "runs" / "fit" / "embedded" / "version_0" / "metrics.csv").exists()
    assert any((tmp_path / "runs" / "fit" / "tensorboard" / "embedded").rglob("events.out.tfevents*"))
    val = fit_main(["validate", *common, f"--ckpt_path={ckpts[-1]}"])
    assert "val/auroc" in val.trainer.callback_metrics


def test_small_validation_split_checkpoints_under_runs_and_resume_last(tmp_path, monkeypatch, caplog):
    """A validation split smaller than a batch still gives finite val metrics (and a warning); without a
    logger nothing lands outside runs/; the last line names the checkpoint and the export command;
    ``--ckpt_path last`` continues the newest run of that name in its own version folder."""
    import logging

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "small.zarr"
    make_store(store, n_prompts=8, rollouts=2, hidden=16, chunk_tokens=64, max_len=10)
    common = [
        "--config",
        str(CONFIGS / "embedded.yaml"),
        f"--data.stores=[{store}]",
        "--data.batch_size=256",
        "--model.width=16",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]
    with caplog.at_level(logging.INFO):
        cli = fit_main(["fit", *common, "--trainer.max_epochs=1", "--trainer.logger=false"])
    assert cli.datamodule.val_dataset.n_rows < 256
    assert np.isfinite(float(cli.trainer.callback_metrics["val/loss"]))  # was nan: an empty batch came first
    assert any("validation split is tiny" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()
    assert (tmp_path / "runs" / "fit" / "config.yaml").exists()
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert Path(ckpt).parent == Path("runs/fit/checkpoints")
    last = [r.getMessage() for r in caplog.records][-1]
    assert f"igcritic export {ckpt} --out checkpoints/critic" in last
    with pytest.raises(FitError, match="no earlier run of this name has a last.ckpt under runs/fit/embedded"):
        fit_main(["fit", *common, "--trainer.max_epochs=2", "--ckpt_path=last"])
    fit_main(["fit", *common, "--trainer.max_epochs=1"])  # version_0 with the config's CSV logger
    resumed = fit_main(["fit", *common, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert resumed.trainer.current_epoch == 2
    runs = sorted(p.name for p in (tmp_path / "runs" / "fit" / "embedded").iterdir())
    assert runs == ["version_0"]  # continued, not a fresh version_1
    run = tmp_path / "runs" / "fit" / "embedded" / "version_0"
    assert (
        run / "metrics.part1.csv"
    ).is_file()  # the first run's metrics kept (CSVLogger deletes metrics.csv)


def test_cpu_processes_beyond_the_cores_are_warned(monkeypatch):
    from lightning.pytorch import Trainer

    from igcritic.fit import cpu_oversubscribed

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    kw = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    warning = cpu_oversubscribed(Trainer(devices=8, strategy="ddp_spawn", **kw))
    assert warning and "8 CPU processes on 2 cores" in warning and "--trainer.devices 2 or fewer" in warning
    assert cpu_oversubscribed(Trainer(devices=2, strategy="ddp_spawn", **kw)) is None


def test_auroc_is_nan_not_zero_when_one_class_only():
    from igcritic.fit import _AUROC

    for thresholds in (None, 50):
        one_class = _AUROC(thresholds=thresholds)
        one_class.update(torch.rand(8), torch.ones(8, dtype=torch.long))
        assert torch.isnan(one_class.compute())
        both = _AUROC(thresholds=thresholds)
        both.update(torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([0, 1, 0, 1]))
        assert float(both.compute()) == 1.0


def test_seeded_tiny_fit_regression_scalars(store, tmp_path):
    """A few stable scalars of a seeded 2-epoch fit (STYLE practice 14). Recorded with torch 2.13 on CPU;
    the tolerance absorbs kernel differences, a change of losses, targets or data order does not pass."""
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    dm = CriticDataModule([store], batch_size=64, val_fraction=0.2, shuffle_buffer=1024)
    model = tiny_module(dm.hidden_size)
    trainer = tiny_trainer(tmp_path, epochs=2, enable_checkpointing=False)
    trainer.fit(model, dm)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = {
        "val/loss": 0.86029,
        "val/auroc@0.5": 0.94958,
        "val/value_mse": 0.05023,
        "val/cost_mse": 0.0675,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=0.03, abs=0.005), key


@pytest.mark.subprocess
def test_fit_never_imports_the_runtime():
    """Imports follow the pipeline: training the critic loads neither the search runtime nor the exporter."""
    code = "import sys, igcritic.fit; print(sorted(m for m in sys.modules if m.startswith('igcritic')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "igcritic.fit" in out
    for later in (
        "igcritic.decoding",
        "igcritic.search",
        "igcritic.baselines",
        "igcritic.guard",
        "igcritic.export",
    ):
        assert f"'{later}'" not in out, later


def test_cosine_t_max_is_derived_from_the_run_length_unless_given():
    from jsonargparse import Namespace

    from igcritic.fit import derive_t_max

    def cfg(t_max=None, interval="epoch", epochs=10, steps=-1):
        sched = Namespace(
            class_path="torch.optim.lr_scheduler.CosineAnnealingLR", init_args=Namespace(T_max=t_max)
        )
        model = Namespace(scheduler=sched, scheduler_interval=interval)
        return Namespace(model=model, trainer=Namespace(max_epochs=epochs, max_steps=steps))

    for c, want in ((cfg(), 10), (cfg(t_max=3), 3), (cfg(interval="step", steps=500), 500)):
        derive_t_max(c)
        assert c.model.scheduler.init_args.T_max == want
    with pytest.raises(FitError, match="no T_max and trainer.max_steps is -1"):
        derive_t_max(cfg(interval="step"))

"""Train, validate and test the critic: ``CriticModule`` (losses, metrics) and the ``igcritic fit`` CLI.

    igcritic fit --config configs/fit/embedded.yaml
    igcritic fit --config configs/fit/paper-7b.yaml --trainer.devices=8 --trainer.num_nodes=2
    igcritic validate --config configs/fit/embedded.yaml --ckpt_path runs/fit/.../last.ckpt
    igcritic fit --config configs/fit/embedded.yaml --print_config

Losses (weights in the config): BCE of the safety head on budget-augmented labels ``1{F_t <= z}``, Huber
(or MSE) of the value and cost heads on normalised targets. Metrics per split (torchmetrics): AUROC and
expected calibration error of q at the sampled budgets and at fixed budgets (``auroc@d``, ``ece@d``), MSE and
explained variance of V and Ŝ. Rows the data module flags invalid (NaN/inf) are masked out and counted.

Calibration (``model.calibration``, default ``auto``: Platt or isotonic, whichever cross-fits better; the
map and its fitting are :mod:`igcritic.calibration`): at the end of every validation epoch a monotone map of q
is fitted on the validation split (held-out prompts) at the fixed budgets pooled, from histograms of the raw
head summed over the DDP ranks (every rank fits the same map), and installed in the critic, so each
checkpoint carries the map fitted to its own weights and ``igcritic export`` writes it. Logged per budget:
``val/ece@d`` (raw head, before), ``val/ece_calibrated@d`` (after, on the rows it was fitted on) and
``val/ece_calibrated_cv@d`` (after, 2-fold cross-fitted by prompt parity: the honest estimate);
``igcritic test`` reports ``test/ece_calibrated@d`` with the map the critic has, not refitted.

Pre-emption (SIGTERM from SLURM or ``kill``, or Ctrl-C) stops ``fit`` at the end of a batch with exit 143
(130) and one line naming the last checkpoint and the command that resumes (``--ckpt_path``); a fit resumed
from ``.../version_K/checkpoints/*.ckpt`` logs into ``version_K`` again and goes on from the checkpoint's
epoch (the metrics logged before the stop move to ``metrics.partN.csv``: Lightning's CSV logger would
delete them).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jsonargparse import Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    LRSchedulerCallable,
    OptimizerCallable,
)
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torchmetrics import ExplainedVariance, MeanSquaredError, Metric
from torchmetrics.classification import BinaryAUROC, BinaryCalibrationError
from torchmetrics.utilities import dim_zero_cat

from igcritic import IgcriticError, Interrupted, usage_error
from igcritic.calibration import BINS, FOLDS, add_to_histogram, measure, refit
from igcritic.critic import CKPT_KEY, Calibration, Critic, CriticConfig
from igcritic.data import CriticDataModule
from igcritic.policy import PolicyIdentity, resolve_layer
from igcritic.stream import mask_nonfinite

log = logging.getLogger(__name__)


class FitError(IgcriticError):
    """The model settings do not fit the data (hidden size, policy, layer)."""


class CriticModule(LightningModule):
    """The critic with its losses, optimizer and metrics.

    Args:
        hidden_size: Latent size H (linked to ``data.hidden_size`` by the CLI).
        width: Trunk width (paper Table 3: 4096).
        depth: Trunk hidden layers.
        dropout: Trunk dropout.
        n_mixture: Logistic components of the safety CDF.
        layer: Policy layer the critic must read (negative counts from the end); None accepts the store's.
        safety_weight: Weight of the safety BCE loss.
        value_weight: Weight of the value-head loss.
        cost_weight: Weight of the cost-head loss.
        regression_loss: ``huber`` or ``mse`` for the value and cost heads (on normalised targets).
        eval_budgets: Budgets for ``auroc@d``/``ece@d``; default: the store budget and quartiles of S_T.
        calibration: Post-hoc map of q fitted on the validation split at ``eval_budgets`` after each
            validation epoch: ``platt`` (sigmoid(a logit q + b), a > 0; keeps the ranking), ``isotonic``
            (monotone piecewise linear), ``auto`` (of the two, the lower ECE cross-fitted by prompt on the
            validation split), ``none`` (keep the map the critic has: identity, or the checkpoint's).
        optimizer: Optimizer factory, called with the parameters.
        scheduler: LR scheduler factory, called with the optimizer; None keeps the LR constant.
        scheduler_interval: Step the scheduler every ``epoch`` or every ``step``.
        cost_context: The latent cost head reads h_0 and the running mean of h_0..h_t beside h_t (its own
            MLP of ``cost_hidden`` units; ``CriticConfig.cost_context``); the CLI has the data module
            deliver them.
        cost_hidden: Hidden units of the ``cost_context`` head.
        init_from: An exported critic folder (``igcritic export``) to start from: its weights,
            normalisation and calibration map; its sizes must be the config's. A head whose form the config
            changes (``cost_context``) starts fresh.
        train: The parts that learn (``trunk``, ``safety``, ``value``, ``cost``); default all. With
            ``init_from``, ``[cost]`` fits a new latent cost head and leaves q and V exactly as they were
            (the calibration map is then kept, not refitted).
    """

    def __init__(
        self,
        hidden_size: int,
        width: int = 512,
        depth: int = 2,
        dropout: float = 0.1,
        n_mixture: int = 8,
        layer: int | None = None,
        safety_weight: float = 1.0,
        value_weight: float = 1.0,
        cost_weight: float = 1.0,
        regression_loss: Literal["huber", "mse"] = "huber",
        eval_budgets: list[float] | None = None,
        calibration: Literal["auto", "platt", "isotonic", "none"] = "auto",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        cost_context: bool = False,
        cost_hidden: int = 128,
        init_from: str | None = None,
        train: list[Literal["trunk", "safety", "value", "cost"]] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        if regression_loss not in ("huber", "mse"):
            raise FitError(f"model.regression_loss={regression_loss!r}: use 'huber' or 'mse'")
        if calibration not in ("auto", "platt", "isotonic", "none"):
            raise FitError(f"model.calibration={calibration!r}: use 'auto', 'platt', 'isotonic' or 'none'")
        self.critic = Critic(
            CriticConfig(
                hidden_size=hidden_size,
                width=width,
                depth=depth,
                dropout=dropout,
                n_mixture=n_mixture,
                cost_context=cost_context,
                cost_hidden=cost_hidden,
            )
        )
        if init_from is not None:
            self._init_from(init_from)
        parts = {"trunk": "trunk", "safety": "safety_head", "value": "value_head", "cost": "cost_head"}
        if bad := sorted(set(train or []) - set(parts)):
            raise FitError(f"model.train={train}: unknown part(s) {bad}; use some of {list(parts)}")
        for part, module in parts.items():
            getattr(self.critic, module).requires_grad_(train is None or part in train)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.skipped_rows = 0
        """Rows masked out of training on this rank (NaN/inf latents or targets), over the whole run."""
        self._epoch_skipped = torch.zeros((), dtype=torch.long)
        self.metrics: nn.ModuleDict | None = None
        self.calibration_bins: nn.ModuleDict | None = None
        self.budgets: list[float] = []

    def _init_from(self, path: str) -> None:
        """Start from an exported critic: weights, normalisation and calibration (``model.init_from``)."""
        from igcritic.critic import CriticError, load_critic

        try:
            src = load_critic(path)
        except CriticError as e:
            raise FitError(f"model.init_from={path}: {e}") from None
        mine, theirs = self.critic.config, src.config
        sizes = ("hidden_size", "width", "depth", "n_mixture")
        if diff := [
            f"{k} {getattr(theirs, k)} vs {getattr(mine, k)}"
            for k in sizes
            if getattr(theirs, k) != getattr(mine, k)
        ]:
            raise FitError(
                f"model.init_from={path} has other sizes than the config ({'; '.join(diff)}: the artifact's, "
                "then the config's); set the model's sizes to the artifact's"
            )
        state = src.state_dict()
        if (theirs.cost_context, theirs.cost_hidden) != (mine.cost_context, mine.cost_hidden):  # starts fresh
            state = {k: v for k, v in state.items() if not k.startswith("cost_head.")}
        self.critic.load_state_dict(state, strict=False)
        for k in ("policy", "cost_scorer", "reward_scorer"):  # checked against the stores in setup
            setattr(mine, k, getattr(theirs, k))

    # ---- wiring to the data -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self._trainer.datamodule if self._trainer is not None else None
        cfg = self.critic.config
        if isinstance(dm, CriticDataModule):
            self._check_data(dm)
            for k, v in dm.critic_metadata().items():
                setattr(cfg, k, v)
            if stage == "fit" and not bool(self.critic.normalized):
                self.critic.set_normalization(dm.normalization_stats())
        budgets = self.hparams.eval_budgets
        if budgets is None and isinstance(dm, CriticDataModule):
            budgets = dm.eval_budgets()
        elif budgets is None:
            budgets = [cfg.budget] if cfg.budget is not None else []
        self._build_metrics([float(b) for b in budgets])

    def _check_data(self, dm: CriticDataModule) -> None:
        cfg = self.critic.config
        problems = []
        if dm.hidden_size != cfg.hidden_size:
            problems.append(
                f"the stores hold latents of size {dm.hidden_size} but model.hidden_size="
                f"{cfg.hidden_size} (drop model.hidden_size: the CLI links it to the stores)"
            )
        store = dm.policy
        if self.hparams.layer is not None:
            want = resolve_layer(self.hparams.layer, store["num_layers"])
            if want != store["layer"]:
                problems.append(
                    f"the stores hold layer {store['layer']} latents but model.layer="
                    f"{self.hparams.layer} (collect at that layer or change model.layer)"
                )
        problems += _policy_problems(cfg.policy, store, "the critic")
        if problems:
            raise FitError("; ".join(problems))

    def _build_metrics(self, budgets: list[float]) -> None:
        if self.metrics is not None and budgets == self.budgets:
            return
        self.budgets = budgets

        def split_metrics(exact: bool) -> nn.ModuleDict:
            thresholds = None if exact else 200
            m: dict[str, nn.Module] = {}
            for at in ["", *(f"@{b:g}" for b in budgets)]:  # over the sampled budgets, then at each d
                m[_key(f"auroc{at}")] = _AUROC(thresholds=thresholds)
                m[_key(f"ece{at}")] = BinaryCalibrationError(n_bins=15)
            for head in ("value", "cost"):
                m |= {f"{head}_mse": MeanSquaredError(), f"{head}_ev": ExplainedVariance()}
            return nn.ModuleDict(m)

        self.metrics = nn.ModuleDict(
            {"train_": split_metrics(False), "val_": split_metrics(True), "test_": split_metrics(True)}
        )  # "train" would clash with nn.Module.train
        # column 0: the per-example sampled budgets; then one column per fixed budget
        self.calibration_bins = nn.ModuleDict(
            {k: CalibrationBins(1 + len(budgets)) for k in ("val_", "test_")}
        )
        self.metrics.to(self.device)
        self.calibration_bins.to(self.device)

    # ---- steps ---------------------------------------------------------------------------------------------
    def _step(self, batch: dict, split: str) -> torch.Tensor:
        batch = mask_nonfinite(batch)  # NaN/inf latents -> zeroed, valid = False
        crit = self.critic
        valid = batch["valid"]
        if split == "train":  # counted on the device: no host sync per step
            skipped = (~valid).sum()
            self._epoch_skipped = self._epoch_skipped + skipped
            self.log(
                "train/skipped_rows",
                skipped.float(),
                on_step=False,
                on_epoch=True,
                reduce_fx="sum",
                sync_dist=True,
                batch_size=1,
            )
        w = valid.to(torch.float32)
        n = w.sum().clamp_min(1.0)
        feat = crit.encode(batch["h"])  # (B, width)
        logq, log1mq = crit.safe_logprob_from_features(feat, batch["z"])
        y = batch["label"]
        bce = -(y * logq + (1 - y) * log1mq)
        loc, scale = crit.target_loc, crit.target_scale
        v_pred = crit.value_from_features(feat, normalized=True)
        if crit.config.cost_context:
            if "h_first" not in batch:
                raise FitError(
                    "model.cost_context needs batches with h_0 and the running mean: set data.cost_context "
                    "true (the CLI links it)"
                )
            c_pred = crit.cost(batch["h"], batch["h_first"], batch["h_mean"], normalized=True)
        else:
            c_pred = crit.cost_from_features(feat, normalized=True)
        v_tgt, c_tgt = (batch["value"] - loc[1]) / scale[1], (batch["s"] - loc[2]) / scale[2]
        reg = F.huber_loss if self.hparams.regression_loss == "huber" else F.mse_loss
        l_safe = (bce * w).sum() / n
        l_value = (reg(v_pred, v_tgt, reduction="none") * w).sum() / n
        l_cost = (reg(c_pred, c_tgt, reduction="none") * w).sum() / n
        hp = self.hparams
        loss = hp.safety_weight * l_safe + hp.value_weight * l_value + hp.cost_weight * l_cost
        on_step = split == "train"
        losses = {"loss": loss, "loss_safety": l_safe, "loss_value": l_value, "loss_cost": l_cost}
        for name, val in losses.items():
            self.log(
                f"{split}/{name}",
                val.detach(),
                on_step=on_step,
                on_epoch=True,
                sync_dist=True,
                batch_size=len(valid),
                prog_bar=name == "loss",
            )
        self._update_metrics(split, feat, batch, logq.detach(), log1mq.detach(), v_pred, c_pred)
        return loss

    @torch.no_grad()
    def _update_metrics(
        self,
        split: str,
        feat: torch.Tensor,
        batch: dict,
        logq: torch.Tensor,
        log1mq: torch.Tensor,
        v_pred: torch.Tensor,
        c_pred: torch.Tensor,
    ) -> None:
        if self.metrics is None:
            return
        m, valid = self.metrics[f"{split}_"], batch["valid"]
        if not bool(valid.any()):
            return
        crit, feat = self.critic, feat[valid]
        q, y = logq[valid].exp(), batch["label"][valid]
        m["auroc"].update(q, y.long())
        m["ece"].update(q, y.long())
        s, s_final = batch["s"][valid], batch["s_final"][valid]
        bins = (
            None if self.calibration_bins is None or split == "train" else self.calibration_bins[f"{split}_"]
        )
        logits, labels = (
            [logq[valid] - log1mq[valid]],
            [y],
        )  # (B,) per column: the sampled budgets, then each d
        for b in self.budgets:
            qb, yb = crit.safe_prob_from_features(feat, b - s), (s_final <= b).long()
            m[_key(f"auroc@{b:g}")].update(qb, yb)
            m[_key(f"ece@{b:g}")].update(qb, yb)
            if bins is not None:
                lq, l1mq = crit.safe_logprob_from_features(feat, b - s)
                logits.append(lq - l1mq)
                labels.append(yb.float())
        if bins is not None:
            bins.update(
                torch.stack(logits, 1), torch.stack(labels, 1), batch["prompt"][valid] % CalibrationBins.folds
            )
        value = crit.target_loc[1] + crit.target_scale[1] * v_pred[valid]
        cost = crit.target_loc[2] + crit.target_scale[2] * c_pred[valid]
        m["value_mse"].update(value, batch["value"][valid])
        m["value_ev"].update(value, batch["value"][valid])
        m["cost_mse"].update(cost, s)
        m["cost_ev"].update(cost, s)

    def _log_metrics(self, split: str) -> None:
        """Compute (synced across ranks by torchmetrics), log and reset the split's metrics at epoch end."""
        if self.metrics is None:
            return
        values = {}
        for k, metric in self.metrics[f"{split}_"].items():
            if metric.update_called:
                with warnings.catch_warnings():  # a budget where every label is equal has no AUROC
                    warnings.simplefilter("ignore", UserWarning)
                    values[f"{split}/{_name(k)}"] = metric.compute().float()
            metric.reset()
        if values:
            self.log_dict(values, sync_dist=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._calibrate("val", fit_map=self.hparams.calibration != "none" and self._q_learns)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self._calibrate("test", fit_map=False)

    # ---- post-hoc calibration ------------------------------------------------------------------------------
    @property
    def _q_learns(self) -> bool:
        """Whether this fit changes q (its trunk or safety head learns, ``model.train``)."""
        parts = (self.critic.trunk, self.critic.safety_head)
        return any(p.requires_grad for m in parts for p in m.parameters())

    def _calibrate(self, split: str, fit_map: bool) -> None:
        """Fit the calibration map on this epoch's histograms (``fit_map``); log ECE after it, per budget."""
        if self.calibration_bins is None or not self.calibration_bins[f"{split}_"].update_called:
            return
        bins = self.calibration_bins[f"{split}_"]
        stats = bins.compute().double().cpu()  # (4, folds, 1 + n_budgets, n_bins), summed over ranks
        bins.reset()
        if self._trainer is not None and self.trainer.sanity_checking:
            return
        if fit_map:
            cal, values = refit(
                stats, self.hparams.calibration, self.budgets, split, self.current_epoch, self.global_step
            )
            self.critic.set_calibration(cal)
        else:
            values = measure(stats, self.critic.calibration, self.budgets, split)
        self.log_dict(values, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self._epoch_skipped = torch.zeros((), dtype=torch.long, device=self.device)

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        skipped = int(self._epoch_skipped)
        self.skipped_rows += skipped
        if skipped:
            log.warning(
                "rank %d skipped %d training rows with NaN/inf latents or targets this epoch (not trained "
                "on); `igcritic inspect` the store",
                self.global_rank,
                skipped,
            )
        self._epoch_skipped = torch.zeros((), dtype=torch.long, device=self.device)

    # ---- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = self.optimizer([p for p in self.parameters() if p.requires_grad])  # model.train's parts
        if self.scheduler is None:
            return opt
        sched = self.scheduler(opt)
        cfg = {"scheduler": sched, "interval": self.hparams.scheduler_interval}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            cfg["monitor"] = "val/loss"
        return {"optimizer": opt, "lr_scheduler": cfg}

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        metrics = {}
        if self._trainer is not None:
            for k, v in self.trainer.callback_metrics.items():
                if k.startswith(("val/", "test/")) and isinstance(v, torch.Tensor) and v.numel() == 1:
                    metrics[k] = float(v)
        checkpoint[CKPT_KEY] = {
            "critic_config": self.critic.config.to_dict(),
            "metrics": metrics,
            "budgets": list(self.budgets),
            "q_trained": self._q_learns,  # False: q and its calibration map are the init_from artifact's
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # a checkpoint written before calibration existed: the identity map (keeps strict loading)
        checkpoint.get("state_dict", {}).setdefault("critic._extra_state", Calibration().to_dict())
        saved = checkpoint.get(CKPT_KEY, {}).get("critic_config")
        if not saved:
            return
        cfg = self.critic.config
        for k in ("policy", "cost_scorer", "reward_scorer", "gamma", "budget_low", "budget_high", "budget"):
            setattr(cfg, k, saved.get(k))
        if self._trainer is not None and isinstance(dm := self.trainer.datamodule, CriticDataModule):
            if problems := _policy_problems(cfg.policy, dm.policy, "the checkpoint's critic"):
                raise FitError(problems[0])


def _policy_problems(policy: dict | None, store: dict, whose: str) -> list[str]:
    """The problem, if any, of a critic trained on ``policy`` meeting stores of another policy."""
    if not policy or not (diff := PolicyIdentity.from_dict(policy).mismatches(store)):
        return []
    if PolicyIdentity.from_dict(policy).same_model(store):  # say it is the tap, not the model, that differs
        return [
            f"{whose} reads the same model tapped elsewhere ({'; '.join(diff)}: the critic's, then the "
            "stores'); use stores collected with its --layer/--norm/--extra_layers"
        ]
    return [f"{whose} was trained on another policy ({'; '.join(diff)}); use stores of its policy"]


class CalibrationBins(Metric):
    """The histograms :func:`~igcritic.calibration.refit` fits the map to, as a metric: fixed size, summed
    across DDP ranks. State ``stats`` (4, folds, columns, bins): row count, positive labels, sum of q, sum of
    logit(q)."""

    folds = FOLDS
    full_state_update = False

    def __init__(self, columns: int, bins: int = BINS):
        super().__init__()
        self.columns, self.bins = columns, bins
        self.add_state("stats", torch.zeros(4, self.folds, columns, bins), dist_reduce_fx="sum")

    def update(self, logit: torch.Tensor, label: torch.Tensor, fold: torch.Tensor) -> None:
        """``logit`` and ``label`` (B, columns), ``fold`` (B,) in [0, folds)."""
        add_to_histogram(self.stats, logit, label, fold)

    def compute(self) -> torch.Tensor:
        return self.stats


class _AUROC(BinaryAUROC):
    """BinaryAUROC that is NaN, not 0, when the (synced) labels hold one class: e.g. a budget above every
    S_T."""

    def compute(self) -> torch.Tensor:
        if self.thresholds is None:
            target = dim_zero_cat(self.target)
            pos, n = target.sum(), target.numel()
        else:  # confmat (thresholds, 2, 2): rows are the true class
            pos, n = self.confmat[0, 1].sum(), self.confmat[0].sum()
        if pos == 0 or pos == n:
            return torch.tensor(float("nan"), device=self.device)
        return super().compute()


def _key(name: str) -> str:
    """Module-safe key of a metric name (``auroc@0.5`` -> ``auroc@0,5``: module names cannot hold dots)."""
    return name.replace(".", ",")


def _name(key: str) -> str:
    return key.replace(",", ".")


class CriticCLI(LightningCLI):
    """LightningCLI for the critic: links the stores' hidden size into the model, adds a ModelCheckpoint on
    ``val/loss`` (configurable under ``checkpoint:``) and a rich progress bar on a terminal."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate", "test")}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.hidden_size", "model.hidden_size", apply_on="instantiate")
        parser.link_arguments("model.cost_context", "data.cost_context", apply_on="parse")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "critic-{epoch:02d}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_fit(self) -> None:
        """``--ckpt_path last`` continues the newest run of this name: its ``last.ckpt``, in its own version
        folder (Lightning alone would look in a fresh ``version_N`` and silently start from scratch)."""
        cfg = self.config_init["fit"]
        if cfg.get("ckpt_path") != "last":
            return
        last, version = latest_run(self.trainer.loggers)
        if _run_root(self.trainer.loggers) is None:  # no logger: default_root_dir/checkpoints
            last = Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            last = last if last.is_file() else None
        if last is None:
            where = _run_root(self.trainer.loggers) or Path(self.trainer.default_root_dir) / "checkpoints"
            raise FitError(
                f"--ckpt_path last: no earlier run of this name has a last.ckpt under {where}; drop "
                "--ckpt_path to train from scratch or pass the .ckpt file"
            )
        for logger in self.trainer.loggers:
            if hasattr(logger, "_version"):
                logger._version = version
        cfg["ckpt_path"] = str(last)
        if last.parent.name == "checkpoints":
            keep_metrics(last.parent.parent)
        log.info("resuming %s (epoch %s)", last, _ckpt_epoch(last))

    def after_fit(self) -> None:
        """The last line names the checkpoint and the command that turns it into a critic artifact."""
        cb = self.trainer.checkpoint_callback
        ckpt = cb and (cb.best_model_path or cb.last_model_path)
        if not ckpt or not self.trainer.is_global_zero:
            return
        name = getattr(self.trainer.logger, "name", None) or "critic"
        log.info("checkpoint %s; make it a critic: igcritic export %s --out checkpoints/%s", ckpt, ckpt, name)

    def _parse_ckpt_path(self) -> None:
        """Lightning reads ``--ckpt_path`` here first (its hyperparameters): a damaged one is one line."""
        ckpt = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        check_checkpoint(ckpt)
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise FitError(
                f"--ckpt_path {ckpt} cannot be read ({type(e).__name__}); pass a .ckpt written by "
                "`igcritic fit`"
            ) from None

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            continue_run(self.config["fit"])

    def instantiate_trainer(self, **kwargs):
        cfg = self._get(self.config_init, "trainer", default={})
        callbacks = [_EpochMetricsOnEveryRank(), *(cfg.get("callbacks") or [])]  # before any progress bar
        if cfg.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            # a rich bar on a terminal; a sparse plain one in non-TTY logs (SLURM, CI)
            callbacks.append(RichProgressBar() if sys.stderr.isatty() else TQDMProgressBar(refresh_rate=50))
        self.stop = StopWatch()
        kwargs["callbacks"] = [*callbacks, self.stop]
        trainer = super().instantiate_trainer(**kwargs)
        if (warning := cpu_oversubscribed(trainer)) and trainer.is_global_zero:
            log.warning(warning)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a signal that stopped it becomes :class:`~igcritic.Interrupted` naming the checkpoint
        that resumes it (Lightning itself exits 0 after SIGTERM and 1 after Ctrl-C, both silent about it)."""
        try:
            super()._run_subcommand(subcommand)
        except (SystemExit, KeyboardInterrupt):
            if self.stop.signum is None:
                raise
            raise self.stop.interrupted(self.trainer) from None


class _EpochMetricsOnEveryRank(Callback):
    """Reduce the training epoch's ``sync_dist`` values on every rank before a progress bar reads them.

    Lightning reduces such a value across ranks when it is first read, and at a training epoch's end only rank
    0's progress bar reads them before the module's hooks: rank 0 would wait in that reduction while the
    other ranks wait in the metrics' own, and DDP would hang (seen with torchrun on two nodes)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            _ = trainer.progress_bar_metrics  # read for its reduction, the same on every rank


class StopWatch(Callback):
    """Sees a signal stop the trainer and the checkpoints written before it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved_epoch: int | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.saved_epoch = int(checkpoint.get("epoch", trainer.current_epoch))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.signum = signal.SIGTERM
        elif isinstance(exception, KeyboardInterrupt):
            self.signum = getattr(exception, "signum", signal.SIGINT)

    def interrupted(self, trainer) -> Interrupted:
        """What stopped, where its last checkpoint is, and the ``--ckpt_path`` that resumes it."""
        where = f"stopped in epoch {trainer.current_epoch + 1} of {trainer.max_epochs}"
        ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        if not ckpt or not Path(ckpt).is_file():
            return Interrupted(self.signum, f"{where} before any checkpoint; run the same command again")
        after = "" if self.saved_epoch is None else f" (after epoch {self.saved_epoch + 1})"
        return Interrupted(self.signum, f"{where}; last checkpoint {ckpt}{after}", {"--ckpt_path": ckpt})


def check_checkpoint(ckpt: str | None) -> None:
    """Refuse in one line a ``--ckpt_path`` that is missing or no checkpoint at all (truncated, another
    file), before any model is built: a checkpoint is a zip archive, and a cut one has lost its directory."""
    import zipfile

    if not ckpt or ckpt in ("last", "best", "hpc", "registry") or "://" in str(ckpt):
        return
    if not Path(ckpt).is_file():
        raise FitError(f"--ckpt_path {ckpt} does not exist; pass a .ckpt written by `igcritic fit`")
    if not zipfile.is_zipfile(ckpt):
        raise FitError(
            f"--ckpt_path {ckpt} is not a PyTorch checkpoint (no zip archive: truncated or another file); "
            "pass a .ckpt written by `igcritic fit`, e.g. its checkpoints/last.ckpt"
        )


def keep_metrics(version_dir: Path) -> None:
    """Lightning's CSVLogger deletes an existing ``metrics.csv`` when a run logs into its folder again: keep
    it beside the new one as ``metrics.partN.csv``."""
    metrics = version_dir / "metrics.csv"
    if metrics.is_file():
        part = next(p for n in range(1, 10_000) if not (p := version_dir / f"metrics.part{n}.csv").exists())
        metrics.rename(part)
        log.info("resuming %s: its earlier metrics are now in %s", version_dir, part.name)


def continue_run(cfg: Namespace) -> None:
    """A fit resumed from a checkpoint under ``<save_dir>/<name>/<version>/checkpoints/`` of its first
    logger logs into that version folder again (metrics appended), not into a new one, with every logger
    whose version is unset given the same version."""
    ckpt = cfg.get("ckpt_path")
    loggers = cfg.get("trainer.logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    if not ckpt or ckpt in ("last", "best", "hpc", "registry") or not isinstance(loggers[0], Namespace):
        return
    run = Path(ckpt).resolve().parent
    first = loggers[0].get("init_args") or Namespace()
    root = Path(str(first.get("save_dir") or ".")) / str(first.get("name") or "")
    if run.name != "checkpoints" or run.parent.parent != root.resolve():
        return
    version = run.parent.name
    found = re.fullmatch(r"version_(\d+)", version)
    keep_metrics(run.parent)
    for lg in loggers:
        args = lg.get("init_args") if isinstance(lg, Namespace) else None
        if args is not None and args.get("version") is None:
            args["version"] = int(found.group(1)) if found else version


class _Parser(LightningArgumentParser):
    """Fills a cosine schedule's ``T_max`` from the run length before the config is validated; config errors
    in one line (:func:`igcritic.usage_error`)."""

    def error(self, message, ex=None):
        if not self.exit_on_error:
            return super().error(message, ex)
        usage_error(self, message, ex)

    def validate(self, namespace, *args, **kwargs):
        for cfg in (namespace, *(namespace.get(k) for k in CriticCLI.subcommands())):
            if isinstance(cfg, Namespace):
                derive_t_max(cfg)
        return super().validate(namespace, *args, **kwargs)


def derive_t_max(cfg) -> None:
    """A cosine schedule without ``T_max`` decays over the whole run: ``trainer.max_epochs`` (``epoch``
    interval) or ``trainer.max_steps`` (``step``), so the YAML states the length once."""
    sched = cfg.get("model.scheduler")
    if not sched or not str(sched.get("class_path", "")).endswith("CosineAnnealingLR"):
        return
    if sched.get("init_args.T_max") is not None:
        return
    step = cfg.get("model.scheduler_interval") == "step"
    length = cfg.get("trainer.max_steps") if step else cfg.get("trainer.max_epochs")
    if length is None or length < 1:
        key = "trainer.max_steps" if step else "trainer.max_epochs"
        raise FitError(f"model.scheduler (cosine) has no T_max and {key} is {length}; set either one")
    sched["init_args.T_max"] = int(length)


def cpu_oversubscribed(trainer) -> str | None:
    """A warning when CPU training starts more processes on this node than it has cores."""
    from lightning.pytorch.accelerators import CPUAccelerator

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not isinstance(trainer.accelerator, CPUAccelerator) or trainer.num_devices <= cores:
        return None
    return (
        f"--trainer.devices {trainer.num_devices} starts {trainer.num_devices} CPU processes on {cores} "
        f"cores: they compete for the cores and train slower than one; use --trainer.devices {cores} or fewer"
    )


def _run_root(loggers) -> Path | None:
    """``save_dir/name`` of the first logger that has them: where this run's version folders live."""
    for lg in loggers:
        if getattr(lg, "save_dir", None) and getattr(lg, "name", None):
            return Path(lg.save_dir) / lg.name
    return None


def latest_run(loggers) -> tuple[Path | None, int | None]:
    """The newest ``version_N/checkpoints/last.ckpt`` of the run named by ``loggers`` and its N."""
    root = _run_root(loggers)
    found = []
    for d in root.glob("version_*") if root is not None and root.is_dir() else []:
        suffix = d.name.removeprefix("version_")
        if suffix.isdigit() and (d / "checkpoints" / "last.ckpt").is_file():
            found.append((int(suffix), d / "checkpoints" / "last.ckpt"))
    return (max(found)[1], max(found)[0]) if found else (None, None)


def _ckpt_epoch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("epoch")
    except Exception:  # noqa: BLE001 - only for the log line; Lightning reports a bad file itself
        return "?"


TRAINER_DEFAULTS = {
    "default_root_dir": "runs/fit",  # without a logger, checkpoints and config.yaml still go under runs/
    "max_epochs": 10,
    "log_every_n_steps": 10,
    "logger": [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs/fit", "name": "critic"},
        },
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs/fit/tensorboard", "name": "critic"},
        },
    ],
}


def quiet_lightning() -> None:
    """Each Lightning line once, none that asks nothing of the user: when the application already logs (the
    ``igcritic`` command does), Lightning's own stderr handler goes (its lines reach the root handler once);
    its litlogger advertisement and the warnings that do not apply here are dropped."""
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        lightning.handlers.clear()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(getattr(f, "__name__", "") == "no_litlogger_tip" for f in rank_zero.filters):

        def no_litlogger_tip(record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

        rank_zero.addFilter(no_litlogger_tip)
    for message in (
        r".*IterableDataset.*__len__.*",  # CriticStream plans each worker's share itself: its length is exact
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning's own call into torch's pytree
        r".*smaller than the logging interval.*",  # tiny demo stores: the epoch-level values are logged
    ):
        warnings.filterwarnings("ignore", message=message)


def main(args: list[str] | None = None, run: bool = True) -> CriticCLI:
    """``igcritic fit|validate|test ...``: the LightningCLI over :class:`CriticModule` and
    :class:`~igcritic.data.CriticDataModule`; ``args`` like
    ``["fit", "--config", "configs/fit/embedded.yaml"]``."""
    quiet_lightning()
    return CriticCLI(
        CriticModule,
        CriticDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_class=_Parser,
        parser_kwargs={"prog": "igcritic"},
    )


__all__ = [
    "CriticModule",
    "CriticCLI",
    "StopWatch",
    "continue_run",
    "check_checkpoint",
    "main",
    "FitError",
    "CalibrationBins",
]

"""Calibration of the safety head: the monotone map of q the critic applies at inference, and its fitting.

docs/design.md section 3. ``igcritic fit`` gathers histograms of the raw head on the validation split (fine
bins of logit(q) per prompt fold and budget column, :func:`add_to_histogram`, summed across DDP ranks) and,
after each validation epoch, fits a :class:`Calibration` to them (:func:`refit`: Platt or isotonic, ``auto``
takes the one with the lower ECE cross-fitted by prompt fold), which the critic then carries in its state
dict and its artifact. ``igcritic test`` measures ECE after the map the critic has (:func:`measure`). No
Lightning import: the critic (and so the runtime) imports :class:`Calibration` from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F

from igcritic import IgcriticError, one_line

FOLDS = 2
"""Prompt folds of the histograms (by prompt parity): the cross-fit measures each with a map of the other."""
SPAN = 16.0
"""logit(q) is binned on [-SPAN, SPAN]; rows beyond fall in the end bins (their sums stay exact)."""
BINS = 3200
"""Histogram bins of logit(q)."""


class CalibrationError(IgcriticError):
    """A calibration map is invalid or malformed, or a fitting method is unknown."""


# ---- the map -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """A monotone map of the safety head's probability, fitted after training (``identity`` until then).

    ``platt``: ``sigmoid(a * logit(q) + b)`` with ``a > 0`` (temperature ``1 / a`` and a shift), strictly
    increasing, so the critic's ranking of states is unchanged. ``isotonic``: the piecewise-linear map
    through the knots ``(x_i, y_i)`` (x increasing, y non-decreasing), constant beyond the end knots. Both
    are non-decreasing in q, so ``g(q(h, z))`` is non-decreasing in z wherever ``q`` is.
    """

    method: Literal["identity", "platt", "isotonic"] = "identity"
    """Which map."""
    a: float = 1.0
    """platt: slope on logit(q) (> 0)."""
    b: float = 0.0
    """platt: offset on logit(q)."""
    x: tuple[float, ...] = ()
    """isotonic: raw q of the knots, strictly increasing, in [0, 1]."""
    y: tuple[float, ...] = ()
    """isotonic: calibrated q of the knots, non-decreasing, in [0, 1]."""
    fitted: dict | None = None
    """Where and how it was fitted (split, rows, budgets, step); not used to apply the map."""

    @property
    def is_identity(self) -> bool:
        return self.method == "identity"

    def problems(self) -> list[str]:
        """Every invalid field, as ``name=value (why)`` strings."""
        out = []
        if self.method not in ("identity", "platt", "isotonic"):
            return [f"calibration.method={self.method!r} (use identity, platt or isotonic)"]
        if self.method == "platt":
            if not (math.isfinite(self.a) and self.a > 0):
                out.append(
                    f"calibration.a={self.a} (must be finite and > 0: a map that keeps q monotone in z)"
                )
            if not math.isfinite(self.b):
                out.append(f"calibration.b={self.b} (must be finite)")
        if self.method == "isotonic":
            x, y = self.x, self.y
            if len(x) < 2 or len(x) != len(y):
                out.append(f"calibration knots: {len(x)} x and {len(y)} y (need equal lengths >= 2)")
            elif not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (*x, *y)):
                out.append("calibration knots outside [0, 1] or not finite")
            elif any(b <= a for a, b in pairwise(x)) or any(b < a for a, b in pairwise(y)):
                out.append("calibration knots: x must increase strictly and y must not decrease")
        return out

    def validate(self) -> Calibration:
        if problems := self.problems():
            raise CalibrationError("invalid calibration: " + "; ".join(problems) + "; re-export the critic")
        return self

    def apply(
        self, q: torch.Tensor, logq: torch.Tensor | None = None, log1mq: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Calibrated probability of the raw ``q`` (B,); ``logq``/``log1mq`` (B,), when given, keep Platt's
        logit exact in the tails."""
        if self.method == "platt":
            if logq is None or log1mq is None:
                logq, log1mq = torch.log(q), torch.log1p(-q)
            return torch.sigmoid(self.a * (logq - log1mq) + self.b)
        if self.method == "isotonic":
            x = torch.tensor(self.x, dtype=q.dtype, device=q.device)
            y = torch.tensor(self.y, dtype=q.dtype, device=q.device)
            i = (torch.searchsorted(x, q.contiguous(), right=True) - 1).clamp(0, len(x) - 2)  # [x_i, x_i+1]
            x0, x1, y0, y1 = x[i], x[i + 1], y[i], y[i + 1]
            t = ((q - x0) / (x1 - x0)).clamp(0.0, 1.0)
            return torch.minimum(torch.maximum(y0 + t * (y1 - y0), y0), y1)  # kept within the segment
        return q

    def to_dict(self) -> dict:
        d = {"method": self.method}
        if self.method == "platt":
            d |= {"a": self.a, "b": self.b}
        if self.method == "isotonic":
            d |= {"x": list(self.x), "y": list(self.y)}
        return {**d, "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration:
        """The calibration of an artifact entry; ``None`` (an artifact of schema 1) is the identity."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise CalibrationError(f"calibration entry {d!r} is not an object; re-export the critic")
        try:
            cal = cls(
                method=d.get("method", "identity"),
                a=float(d.get("a", 1.0)),
                b=float(d.get("b", 0.0)),
                x=tuple(float(v) for v in d.get("x", ())),
                y=tuple(float(v) for v in d.get("y", ())),
                fitted=d.get("fitted"),
            )
        except (TypeError, ValueError) as e:
            raise CalibrationError(
                f"calibration entry is malformed ({one_line(e)}); re-export the critic"
            ) from None
        return cal.validate()


# ---- histograms: the sufficient statistics of the fit and of ECE after it ---------------------------------
def add_to_histogram(
    stats: torch.Tensor, logit: torch.Tensor, label: torch.Tensor, fold: torch.Tensor
) -> None:
    """Add rows to ``stats`` (4, folds, columns, bins) in place (row count, positive labels, sum of q, sum of
    logit(q) per bin): ``logit`` and ``label`` (B, columns), ``fold`` (B,) in [0, folds)."""
    columns, bins = stats.shape[2], stats.shape[3]
    logit = logit.float().nan_to_num(0.0, SPAN, -SPAN)
    idx = ((logit + SPAN) * (bins / (2 * SPAN))).long().clamp(0, bins - 1)
    cols = torch.arange(columns, device=logit.device)
    flat = ((fold.long()[:, None] * columns + cols) * bins + idx).reshape(-1)
    view = stats.view(4, -1)
    for i, v in enumerate((torch.ones_like(logit), label.float(), torch.sigmoid(logit), logit)):
        view[i].index_add_(0, flat, v.reshape(-1))


# ---- what fit logs and installs after a validation (or test) epoch ----------------------------------------
def refit(
    stats: torch.Tensor,
    method: Literal["auto", "platt", "isotonic"],
    budgets: list[float],
    split: str,
    epoch: int,
    global_step: int,
) -> tuple[Calibration, dict[str, float]]:
    """The map fitted to an epoch's histograms ``stats`` (4, folds, 1 + len(budgets), bins) (column 0: the
    per-example sampled budgets, then each fixed budget), on the fixed budgets pooled (the sampled budgets
    when there are none), with where it was fitted in ``fitted``; and the ECE to log per budget:
    ``{split}/ece_calibrated@d`` (after, on the rows it was fitted on) and ``{split}/ece_calibrated_cv@d``
    (cross-fitted by prompt fold, when every fold has rows)."""
    cal, report = calibrate(stats, method, list(range(1, stats.shape[2])) or [0])
    keys = ["sampled", *(f"{b:g}" for b in budgets)]
    fitted = {
        "split": split,
        "rows": int(stats[0, :, 0].sum()),
        "budgets": list(budgets),
        "epoch": int(epoch),
        "global_step": int(global_step),
        **{k: None if v is None else dict(zip(keys, _floats(v), strict=True)) for k, v in report.items()},
    }
    names = _names(budgets)
    values = {f"{split}/ece_calibrated{n}": float(v) for n, v in zip(names, report["ece_after"], strict=True)}
    if report["ece_after_cv"] is not None:
        values |= {
            f"{split}/ece_calibrated_cv{n}": float(v)
            for n, v in zip(names, report["ece_after_cv"], strict=True)
        }
    return replace(cal, fitted=fitted), values


def measure(stats: torch.Tensor, cal: Calibration, budgets: list[float], split: str) -> dict[str, float]:
    """ECE after the map ``cal`` (not refitted) of the histograms ``stats``, per budget:
    ``{split}/ece_calibrated@d``."""
    after = binned_ece(stats.sum(1), cal)
    return {f"{split}/ece_calibrated{n}": float(v) for n, v in zip(_names(budgets), after, strict=True)}


def _names(budgets: list[float]) -> list[str]:
    return ["", *(f"@{b:g}" for b in budgets)]


# ---- fitting -----------------------------------------------------------------------------------------------
def calibrate(
    stats: torch.Tensor, method: Literal["auto", "platt", "isotonic"], fit_columns: list[int]
) -> tuple[Calibration, dict[str, torch.Tensor | None]]:
    """The calibration map fitted to the histograms ``stats`` (4, folds, columns, bins) of the columns
    ``fit_columns`` pooled, and its report per column: ``ece_before``, ``ece_after`` (on the rows it was
    fitted on) and ``ece_after_cv`` (each prompt fold measured with a map fitted on the other folds; None when
    a fold is empty). ``auto`` takes the method with the lower cross-fitted ECE averaged over ``fit_columns``
    (Platt, the one with fewer parameters, when no cross-fit is possible)."""
    k = stats.shape[1]
    pooled = stats[:, :, fit_columns].sum(2)  # (4, folds, bins)
    can_cv = bool((pooled[0].sum(-1) > 0).all()) and k > 1

    def cross_fitted(m: str) -> torch.Tensor:
        return _ece_from_table(
            sum(
                _ece_table(stats[:, f], fit_calibration(pooled[:, [g for g in range(k) if g != f]].sum(1), m))
                for f in range(k)
            )
        )

    cv = (
        {m: cross_fitted(m) for m in (("platt", "isotonic") if method == "auto" else (method,))}
        if can_cv
        else {}
    )
    if method == "auto":
        method = min(cv, key=lambda m: float(cv[m][fit_columns].mean())) if cv else "platt"
    cal = fit_calibration(pooled.sum(1), method)
    every = stats.sum(1)  # (4, columns, bins)
    return cal, {
        "ece_before": binned_ece(every, Calibration()),
        "ece_after": binned_ece(every, cal),
        "ece_after_cv": cv.get(method),
    }


def fit_calibration(stats: torch.Tensor, method: Literal["platt", "isotonic"]) -> Calibration:
    """A :class:`Calibration` fitted to histogram rows ``stats`` (4, bins) (count, positives, sum q, sum logit
    q), by weighted maximum likelihood (``platt``) or pool-adjacent-violators (``isotonic``)."""
    n, pos, sum_q, sum_logit = stats.double().cpu()
    keep = n > 0
    if not bool(keep.any()):
        return Calibration()
    n, pos, mean_q, mean_logit = n[keep], pos[keep], sum_q[keep] / n[keep], sum_logit[keep] / n[keep]
    if method == "platt":
        return Calibration("platt", *_platt(mean_logit, pos, n))
    if method == "isotonic":
        x, y = _isotonic(mean_q, pos, n)
        return Calibration("isotonic", x=x, y=y)
    raise CalibrationError(f"calibration method {method!r}: use 'platt' or 'isotonic'")


def _platt(logit: torch.Tensor, pos: torch.Tensor, n: torch.Tensor, iters: int = 100) -> tuple[float, float]:
    """(a, b) maximising the likelihood of ``pos`` of ``n`` under sigmoid(a logit + b) (Newton with
    backtracking); a is kept > 0 so the map stays increasing."""
    x = torch.stack([logit, torch.ones_like(logit)], 1)  # (M, 2)

    def nll(th: torch.Tensor) -> torch.Tensor:
        z = x @ th
        return (n * F.softplus(z) - pos * z).sum()

    theta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ridge = 1e-9 * float(n.sum()) * torch.eye(2, dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(x @ theta)
        grad = x.T @ (n * p - pos)
        hess = (x * (n * p * (1 - p))[:, None]).T @ x + ridge
        step = torch.linalg.solve(hess, grad)
        t, cur = 1.0, nll(theta)
        while nll(theta - t * step) > cur and t > 1e-8:
            t /= 2
        theta = theta - t * step
        if float((t * step).abs().max()) < 1e-10:
            break
    a, b = float(theta[0]), float(theta[1])
    if not a > 1e-3:  # q carries no usable signal here: an almost flat map at the base rate
        rate = float(pos.sum() / n.sum())
        a, b = 1e-3, math.log(max(rate, 1e-6) / max(1 - rate, 1e-6))
    return a, b


def _isotonic(
    mean_q: torch.Tensor, pos: torch.Tensor, n: torch.Tensor
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots of the isotonic (pool adjacent violators) fit of the positive rate on bins in logit order:
    x = mean raw q of each pooled block (increasing), y = its positive rate, clipped to [1e-4, 1 - 1e-4]."""
    blocks: list[list[float]] = []  # [positives, count, sum q]
    for k, c, sq in zip(pos.tolist(), n.tolist(), (mean_q * n).tolist(), strict=True):
        blk = [k, c, sq]
        while blocks and blocks[-1][0] / blocks[-1][1] >= blk[0] / blk[1]:
            prev = blocks.pop()
            blk = [prev[0] + blk[0], prev[1] + blk[1], prev[2] + blk[2]]
        blocks.append(blk)
    xs, ys = [], []
    for k, c, sq in blocks:
        x, y = min(max(sq / c, 0.0), 1.0), min(max(k / c, 1e-4), 1 - 1e-4)
        if xs and x <= xs[-1]:  # equal mean q (numerically): one knot
            continue
        xs.append(x)
        ys.append(max(y, ys[-1]) if ys else y)
    if len(xs) == 1:  # one block: a constant map
        return (0.0, 1.0), (ys[0], ys[0])
    return tuple(xs), tuple(ys)


def _ece_table(stats: torch.Tensor, cal: Calibration, n_bins: int = 15) -> torch.Tensor:
    """Per-ECE-bin sums (3, ..., n_bins + 1) (count, positives, calibrated confidence) of histograms ``stats``
    (4, ..., bins) after ``cal``; bins like torchmetrics' BinaryCalibrationError (width 1 / n_bins)."""
    n, pos, sum_q, sum_logit = stats.double()
    safe = n.clamp_min(1)
    if cal.method == "platt":
        conf = torch.sigmoid(cal.a * sum_logit / safe + cal.b)
    else:
        conf = cal.apply(sum_q / safe)
    idx = (conf * n_bins).floor().long().clamp(0, n_bins)
    out = torch.zeros(3, *n.shape[:-1], n_bins + 1, dtype=torch.float64)
    for i, v in enumerate((n, pos, conf * n)):
        out[i].scatter_add_(-1, idx, v)
    return out


def _ece_from_table(table: torch.Tensor) -> torch.Tensor:
    n, pos, conf = table
    return (pos - conf).abs().sum(-1) / n.sum(-1).clamp_min(1)


def binned_ece(stats: torch.Tensor, cal: Calibration) -> torch.Tensor:
    """Expected calibration error (15 bins) of the histograms ``stats`` (4, ..., bins) after ``cal``:
    (...,)."""
    return _ece_from_table(_ece_table(stats, cal))


def _floats(t: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in t]


__all__ = [
    "BINS",
    "FOLDS",
    "SPAN",
    "Calibration",
    "CalibrationError",
    "add_to_histogram",
    "binned_ece",
    "calibrate",
    "fit_calibration",
    "measure",
    "refit",
]

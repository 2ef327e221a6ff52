"""The calibration module: the map applies as documented and refuses bad entries in one line; Platt,
isotonic and auto fitted on histograms undo a miscalibration, with ECE equal to torchmetrics' on the rows;
what fit logs and records after an epoch; no Lightning import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers_fit import overconfident_bins
from torchmetrics.functional.classification import binary_calibration_error

from igcritic.calibration import (
    FOLDS,
    Calibration,
    CalibrationError,
    add_to_histogram,
    binned_ece,
    calibrate,
    measure,
    refit,
)


def test_maps_apply_as_documented():
    q = torch.tensor([0.0, 0.2, 0.4, 0.6, 1.0])
    assert torch.equal(Calibration().apply(q), q)
    iso = Calibration("isotonic", x=(0.2, 0.6), y=(0.1, 0.3))
    torch.testing.assert_close(iso.apply(q), torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3]))  # flat beyond the knots
    platt = Calibration("platt", a=0.5, b=0.2)
    mid = q[1:-1].double()
    torch.testing.assert_close(platt.apply(mid), torch.sigmoid(0.5 * torch.logit(mid) + 0.2))
    assert Calibration.from_dict(platt.to_dict()) == platt and Calibration.from_dict(iso.to_dict()) == iso


def test_invalid_calibrations_are_refused_in_one_line():
    for bad, match in [
        ({"method": "platt", "a": 0.0, "b": 0.0}, "calibration.a=0.0"),
        ({"method": "platt", "a": -1.0}, "calibration.a=-1.0"),
        ({"method": "isotonic", "x": [0.1, 0.5], "y": [0.6, 0.2]}, "y must not decrease"),
        ({"method": "isotonic", "x": [0.5, 0.1], "y": [0.1, 0.2]}, "x must increase"),
        ({"method": "isotonic", "x": [0.5], "y": [0.1]}, "need equal lengths"),
        ({"method": "temperature"}, "use identity, platt or isotonic"),
        ({"method": "platt", "a": "x"}, "malformed"),
        ("platt", "is not an object"),
    ]:
        with pytest.raises(CalibrationError, match=match) as e:
            Calibration.from_dict(bad)
        assert "\n" not in str(e.value)
    assert Calibration.from_dict(None).is_identity


def test_calibration_maps_fix_an_overconfident_head():
    """Platt, isotonic and auto undo a miscalibration that a monotone map of q can undo; the histogram ECE
    equals torchmetrics' ECE on the rows, before and after the map."""
    bins, logit, label = overconfident_bins()
    stats = bins.compute().double()
    q = torch.sigmoid(logit)
    for c in range(3):
        exact = float(binary_calibration_error(q[:, c], label[:, c].long(), n_bins=15))
        assert float(binned_ece(stats.sum(1)[:, c], Calibration())) == pytest.approx(exact, abs=0.003)
    for method in ("platt", "isotonic", "auto"):
        cal, report = calibrate(stats, method, [1, 2])
        cal.validate()
        assert (report["ece_before"] > 0.12).all(), method
        assert (report["ece_after"] < 0.02).all() and (report["ece_after_cv"] < 0.03).all(), (method, report)
        q_cal = cal.apply(q, F.logsigmoid(logit), F.logsigmoid(-logit))  # the map on every row
        for c in range(3):
            exact = float(binary_calibration_error(q_cal[:, c], label[:, c].long(), n_bins=15))
            assert float(report["ece_after"][c]) == pytest.approx(exact, abs=0.005), (method, c)
        if method == "platt":
            assert cal.a == pytest.approx(1 / 3, rel=0.05) and cal.b == pytest.approx(-0.8 / 3, abs=0.05)
    no_cv, report = calibrate(stats[:, :1], "auto", [1, 2])  # one prompt fold: no cross-fit, Platt
    assert no_cv.method == "platt" and report["ece_after_cv"] is None


def test_refit_records_where_it_was_fitted_and_measure_keeps_the_map():
    bins, _, _ = overconfident_bins(n=8000)
    stats = bins.compute().double()
    budgets = [0.25, 0.5]
    cal, values = refit(stats, "platt", budgets, "val", epoch=3, global_step=40)
    assert cal.method == "platt"
    assert cal.fitted["split"] == "val" and cal.fitted["rows"] == 8000
    assert (cal.fitted["epoch"], cal.fitted["global_step"], cal.fitted["budgets"]) == (3, 40, budgets)
    assert set(cal.fitted["ece_after"]) == {"sampled", "0.25", "0.5"}
    names = {"", "@0.25", "@0.5"}
    assert set(values) == {f"val/ece_calibrated{n}" for n in names} | {
        f"val/ece_calibrated_cv{n}" for n in names
    }
    assert values["val/ece_calibrated@0.5"] == pytest.approx(cal.fitted["ece_after"]["0.5"], abs=1e-6)
    test = measure(stats, cal, budgets, "test")  # the same map on the same rows: the same ECE
    assert set(test) == {f"test/ece_calibrated{n}" for n in names}
    assert test["test/ece_calibrated@0.5"] == pytest.approx(values["val/ece_calibrated@0.5"])


def test_histogram_sums_are_exact_and_folds_apart():
    stats = torch.zeros(4, FOLDS, 1, 64)  # float32, like the metric state
    logit = torch.tensor([[-40.0], [0.3], [2.0], [float("nan")]])
    label = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    add_to_histogram(stats, logit, label, torch.tensor([0, 1, 1, 0]))
    assert stats[0].sum() == 4 and stats[0, 1].sum() == 2 and stats[1].sum() == 2
    assert float(stats[3].sum()) == pytest.approx(-40.0 + 0.3 + 2.0 + 0.0)  # beyond the span: sums exact


@pytest.mark.subprocess
def test_calibration_imports_no_lightning():
    code = "import sys, igcritic.calibration; print(sorted(m for m in sys.modules if 'lightning' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout

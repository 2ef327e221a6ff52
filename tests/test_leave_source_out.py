"""data_prep/leave_source_out.py's folds on synthetic rows and features: an answer the guard selected is held
out with its prompt's source (no prompt text crosses a fold), and the guard scheme fits on sampled answers
only and scores exactly the guard-selected ones. No real features are computed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")  # data_prep needs it ([prep] extra)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
import leave_source_out as lso
import train_classifiers as tc

SOURCES = ("igcritic", "igcritic-wide", "garak", "giskard")
CAND = lso.Candidate(layers=(21,), parts=("last",), head="linear")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _data() -> tuple[list[dict], list[dict], list[dict]]:
    """Prompts of four sources (two harmful, two benign each); per prompt two sampled answers and one the
    guard selected. The guard rows carry the collection's own source name, which must not be used."""
    prompts, sampled, guard = [], [], []
    for s in SOURCES:
        for k in range(4):
            text = f"{s} prompt {k}"
            harmful = k < 2
            prompts.append(
                {
                    "prompt": text,
                    "source": s,
                    "category": f"c{k}",
                    "style": "direct",
                    "split": "train",
                    "harmful": harmful,
                }
            )
            for j, into in enumerate((sampled, sampled, guard)):
                label = (
                    "compliant-harmful" if harmful and j == 0 else "refusal" if harmful else "benign-helpful"
                )
                if into is guard and harmful and k == 0:
                    label = "compliant-harmful"  # the guard lets some harm through
                row = {
                    "id": f"{s}-{k}-{j}",
                    "prompt": text,
                    "response": f"answer {j}",
                    "label": label,
                    "helpfulness": 1,
                }
                into.append({**row, "source": "guard_r2"} if into is guard else row)
    prompts.append(
        {
            "prompt": "held out",
            "source": "pyrit",
            "category": "c0",
            "style": "direct",
            "split": "heldout_source",
            "harmful": True,
        }
    )
    return prompts, sampled, guard


def _rows(tmp_path: Path) -> list[dict]:
    prompts, sampled, guard = _data()
    guard.append({**sampled[0]})  # read in both files: kept once, as a sampled answer
    wide = _write(tmp_path / "wide_prompts.jsonl", prompts)
    labels = _write(tmp_path / "labels.jsonl", sampled)
    guard_labels = _write(tmp_path / "guard_labels.jsonl", guard)
    old = lso.WIDE_PROMPTS
    lso.WIDE_PROMPTS = wide
    try:
        return lso.load_rows((labels,), (guard_labels,))
    finally:
        lso.WIDE_PROMPTS = old


def _features(rows: list[dict]) -> dict:
    rng = np.random.default_rng(0)
    width = len(tc.ALL_LAYERS) * 2 * 576
    empty = {r["prompt"]: rng.normal(size=width) for r in rows}  # one prompt end per prompt
    return {
        r["id"]: {
            "latent": rng.normal(size=width).astype(np.float16),
            "latent_cuts": rng.normal(size=(len(tc.PREFIX_CUTS), width)).astype(np.float16),
            "latent_empty": empty[r["prompt"]].astype(np.float16),
        }
        for r in rows
    }


@pytest.fixture
def spied(monkeypatch):
    """Every fit's training mask over the design's fitted rows, in fold order."""
    fits: list[np.ndarray] = []
    real = lso.fit_head

    def spy(cand, d, train):
        fits.append(train.copy())
        return real(cand, d, train)

    monkeypatch.setattr(lso, "fit_head", spy)
    return fits


def test_guard_rows_keep_their_prompts_source_and_a_marker(tmp_path):
    rows = _rows(tmp_path)
    assert len(rows) == 4 * 4 * 3  # the answer read twice is kept once
    guard = [r for r in rows if r["guard"]]
    assert len(guard) == 16
    assert {r["source"] for r in guard} == set(SOURCES)
    assert all(r["source"] == r["prompt"].split(" prompt")[0] for r in rows)
    assert not next(r for r in rows if r["id"] == "igcritic-0-0")["guard"]


def test_source_scheme_holds_guard_rows_out_with_their_prompts_source(tmp_path, spied):
    rows = _rows(tmp_path)
    d = lso.Design(rows, _features(rows), CAND.layers, CAND.parts)
    folds = lso.source_folds(rows)
    p, _ = lso.oof_scores(CAND, d, folds)
    assert np.isfinite(p).all()  # every row scored once, guard rows included
    groups = np.unique(folds)
    assert len(spied) == len(groups) == 3  # giskard is held out with garak
    for f, train in zip(groups, spied, strict=True):
        held = {rows[i]["prompt"] for i in np.where(folds == f)[0]}
        fitted = [rows[i] for i in d.owner[train]]
        assert held.isdisjoint(r["prompt"] for r in fitted)
        assert any(r["guard"] for r in fitted)  # the other sources' guard answers are fitted on
        held_sources = {rows[i]["source"] for i in np.where(folds == f)[0]}
        assert not any(r["guard"] and r["source"] in held_sources for r in fitted)


def test_guard_scheme_fits_on_sampled_answers_and_scores_the_guard_ones(tmp_path, spied):
    rows = _rows(tmp_path)
    d = lso.Design(rows, _features(rows), CAND.layers, CAND.parts)
    guard = np.array([r["guard"] for r in rows])
    p, pmax = lso.oof_scores(CAND, d, lso.guard_folds(rows))
    assert len(spied) == 1
    fitted = set(d.owner[spied[0]].tolist())
    assert fitted == set(np.where(~guard)[0].tolist())  # every sampled answer, no guard-selected one
    assert np.isfinite(p[guard]).all() and np.isnan(p[~guard]).all()
    assert np.isfinite(pmax[guard]).all()


def test_evaluate_reports_the_guard_rows(tmp_path):
    rows = _rows(tmp_path)
    d = lso.Design(rows, _features(rows), CAND.layers, CAND.parts)
    schemes = {"source": lso.source_folds(rows), "guard": lso.guard_folds(rows)}
    res = lso.evaluate(rows, d, CAND, schemes)
    n_guard = sum(r["guard"] for r in rows)
    harmful = sum(r["guard"] and r["label"] == "compliant-harmful" for r in rows)
    for key in ("guard", "guard_source_out"):
        assert (res[key]["n"], res[key]["harmful"]) == (n_guard, harmful)
        assert 0 <= res[key]["auroc"] <= 1
    assert res["guard"]["running_max5"]["n"] == n_guard
    assert "pooled_guard" not in res and res["ood"] == res["pooled_source"]["auroc"]
    assert "guard: AUROC" in lso._line(res)


def test_train_classifiers_reads_guard_answers_to_the_projects_prompts(tmp_path, monkeypatch):
    prompts, sampled, guard = _data()
    project = [p for p in prompts if p["source"] == "igcritic"]
    monkeypatch.setattr(tc, "PROMPTS", _write(tmp_path / "default_prompts.jsonl", project))
    monkeypatch.setattr(tc, "LABELS", _write(tmp_path / "corpus_labels.jsonl", sampled))
    monkeypatch.setattr(tc, "GUARD_LABELS", _write(tmp_path / "guard_labels.jsonl", guard))
    rows = tc.load_rows()
    assert len(rows) == 4 * 3  # the project's prompts only
    assert sum(r["guard"] for r in rows) == 4
    for r in rows:
        assert r["part"] == tc.part_of(r["prompt"]) and r["split"] == "train"


def _family_features(rows: list[dict], signal: str | None = None) -> dict:
    """Latent and MiniLM features of every row, each array's values its own (random). With ``signal``, all
    zeros except one MiniLM answer column per source, 1 on that source's harmful answers: a head reads it only
    when it fits on MiniLM columns of that very source."""
    feats = _features(rows)
    rng = np.random.default_rng(1)
    dim = tc.MINILM_DIM
    prompt_e = {r["prompt"]: rng.normal(size=dim) for r in rows}
    for r in rows:
        f = feats[r["id"]]
        f["minilm"] = np.concatenate([prompt_e[r["prompt"]], rng.normal(size=dim)]).astype(np.float16)
        f["minilm_cuts"] = rng.normal(size=(len(tc.PREFIX_CUTS), dim)).astype(np.float16)
        f["minilm_empty"] = np.full(dim, 0.5, np.float16)
        if signal:
            for k in ("latent", "latent_cuts", "latent_empty", "minilm", "minilm_cuts", "minilm_empty"):
                f[k] = np.zeros_like(f[k])
            f["minilm"][dim + SOURCES.index(r["source"])] = r["label"] == "compliant-harmful"
    return feats


@pytest.mark.parametrize("family", lso.FAMILIES)
def test_design_columns_of_each_family(tmp_path, family):
    rows = _rows(tmp_path)
    feats = _family_features(rows)
    cand = lso.Candidate(family=family, layers=(21,), parts=("last",), head="product")
    d = lso.Design(rows, feats, cand.layers, cand.parts, cand.family)
    cols = tc.latent_columns(cand.layers, cand.parts)
    dim = tc.MINILM_DIM

    for n, r in enumerate(rows):
        f = feats[r["id"]]
        lat_p, lat_a = f["latent_empty"][cols], f["latent"][cols]
        mini_p, mini_a = f["minilm"][:dim], f["minilm"][dim:]
        want_p = {"latent": [lat_p], "minilm": [mini_p], "both": [lat_p, mini_p]}[family]
        want_a = {"latent": [lat_a], "minilm": [mini_a], "both": [lat_a, mini_a]}[family]
        np.testing.assert_array_equal(d.full[n, : d.split], np.concatenate(want_p).astype(np.float32))
        np.testing.assert_array_equal(d.full[n, d.split :], np.concatenate(want_a).astype(np.float32))
        lat_pre = [f["latent_empty"][cols]] + [c[cols] for c in f["latent_cuts"]]
        mini_pre = [f["minilm_empty"], *f["minilm_cuts"]]
        for k, v in enumerate(d.prefixes):  # the empty answer, then the 25/50/75 % prefixes
            want = {"latent": [lat_pre[k]], "minilm": [mini_pre[k]], "both": [lat_pre[k], mini_pre[k]]}[
                family
            ]
            np.testing.assert_array_equal(v[n], np.concatenate(want_p + want).astype(np.float32))
    assert d.x.shape[1] == 2 * d.split == d.prefixes[0].shape[1]
    # every fitted augmented row is its answer's prompt part and one of its prefixes, labelled harmless
    aug = np.where(d.idx < 0)[0]
    assert (d.y[aug] == 0).all()
    np.testing.assert_array_equal(d.x[aug, : d.split], d.full[d.owner[aug], : d.split])
    p, pmax = lso.oof_scores(cand, d, lso.source_folds(rows))
    assert np.isfinite(p).all() and (pmax >= p - 1e-12).all()


def test_a_family_reads_its_own_columns_and_no_held_out_source(tmp_path):
    """Each source's harm shows in its own MiniLM column only. Leave-one-source-out: a head never fitted on
    that source scores all its answers alike (AUROC 0.5); folds that mix sources: the MiniLM and both heads
    find it, the latent head (no MiniLM column) cannot."""
    rows = _rows(tmp_path)
    feats = _family_features(rows, signal="minilm")
    y = np.array([int(r["label"] == "compliant-harmful") for r in rows])
    src = lso.source_folds(rows)
    mixed = np.array([int(r["prompt"][-1]) % 2 for r in rows])  # by prompt: each fold holds every source
    for family in lso.FAMILIES:
        cand = lso.Candidate(family=family, layers=(21,), parts=("last",), head="linear", c=1.0)
        d = lso.Design(rows, feats, cand.layers, cand.parts, cand.family)
        p, _ = lso.oof_scores(cand, d, src)
        for f in np.unique(src):
            assert tc.auroc(y[src == f], p[src == f]) == 0.5, (family, f)
        p, _ = lso.oof_scores(cand, d, mixed)
        if family == "latent":  # one p per fold: its intercept
            assert all(len(set(p[mixed == f])) == 1 for f in (0, 1))
        else:
            assert tc.auroc(y, p) > 0.95, family


def test_candidates_of_some_families_keep_the_shipped_form():
    run = lso.chosen(("minilm", "both"), len(lso.CANDIDATES))
    assert run[-1] == lso.SHIPPED_FORM and {c.family for c in run[:-1]} == {"minilm", "both"}
    assert lso.chosen(("latent",), 2) == [*lso.CANDIDATES[:2], lso.SHIPPED_FORM]
    names = [c.name for c in lso.CANDIDATES]
    assert len(set(names)) == len(names)  # a name says which candidate it is
    back = lso._candidate(json.loads(json.dumps({**lso.asdict(run[0]), "name": run[0].name})))
    assert back == run[0]


def test_minilm_prefixes_are_cut_where_the_latent_ones_are(tiny_policy):
    """The MiniLM text of each cut is the decoded first round(c * J) answer tokens, J the latent path's."""
    from igcritic.scorers.latent import LatentFeatureSpec, PolicyFeatures

    class Encoder:
        dim = 4

        def __init__(self):
            self.texts: list[str] = []

        def encode(self, texts, keep="start"):
            self.texts += texts
            return np.array([[len(t), 0, 0, 0] for t in texts], np.float32)

    prompts = ["how do I bake bread at home", "hack into my neighbour's wifi network"]
    answers = ["mix flour water salt and yeast then wait", "sure here is how you do it step by step"]
    enc, tok = Encoder(), tiny_policy.tokenizer
    arrays = tc.minilm_arrays(enc, tok, prompts, answers)
    lat = PolicyFeatures(tiny_policy, LatentFeatureSpec((1,), ("last",))).prefix_features(prompts, answers)
    for k, (a, (f, _)) in enumerate(zip(answers, lat, strict=True)):
        ids = tok(a, add_special_tokens=False)["input_ids"]
        for j, c in enumerate(tc.PREFIX_CUTS):
            cut = tok.decode(ids[: int(round(c * (len(f) - 1)))], skip_special_tokens=True)
            assert enc.texts[k * len(tc.PREFIX_CUTS) + j] == cut
            assert arrays["minilm_cuts"][k, j, 0] == len(cut)
        assert arrays["minilm_empty"][k, 0] == 0  # the empty answer's text
        assert arrays["minilm"][k, 4] == len(a)  # [e(prompt), e(answer)]
    assert arrays["minilm"].shape == (2, 8) and arrays["minilm_cuts"].shape == (2, len(tc.PREFIX_CUTS), 4)


def test_fusion_splits_a_both_row_into_the_two_families_rows(tmp_path):
    rows = _rows(tmp_path)
    feats = _family_features(rows)
    one = {f: lso.Design(rows, feats, CAND.layers, CAND.parts, f) for f in lso.FAMILIES}
    width = tc.prompt_width("latent", CAND.layers, CAND.parts)
    fusion = lso.Fusion(0.1, width)
    latent, minilm = fusion._split(one["both"].full)
    np.testing.assert_array_equal(latent, one["latent"].full)
    np.testing.assert_array_equal(minilm, one["minilm"].full)
    with pytest.raises(ValueError, match="both-family rows"):
        fusion._split(one["latent"].full)
    cand = lso.Candidate(family="both", layers=CAND.layers, parts=CAND.parts, head="fusion", c=0.1)
    p, pmax = lso.oof_scores(cand, one["both"], lso.source_folds(rows))
    assert np.isfinite(p).all() and ((0 < p) & (p < 1)).all() and (pmax >= p).all()

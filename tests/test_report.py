"""The benchmark report, rendered by the real `report` notebook from real runs of a tiny matrix.

One LSTM trained on the last 400 weeks of CO2 (2 epochs) and gated for the edge, plus a TSFM run through the
runner and the embedded fake tollama daemon, executed with the real experiment notebooks; then the report
notebook writes index.html / index.md / CSV / figures, checked for content and working links.
"""
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT

from tsfm_wb.core import TsfmWbError, read_json
from tsfm_wb.experiments.grid import load_matrix_config
from tsfm_wb.experiments.matrix import render_report, run_matrix
from tsfm_wb.experiments.report import COMPARISON_COLUMNS, collect_runs, comparison_table, edge_summary, seed_summary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, object]:
    "configs/matrix_tiny.yaml run into a scratch folder (1 spline run with edge gate, 1 TSFM run); returns (config path, result)."
    root = tmp_path_factory.mktemp("report")
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "matrix_tiny.yaml").read_text())
    cfg.update(artifacts_dir=str(root / "artifacts"), reports_dir=str(root / "reports"))
    cfg.update(notebooks_dir=str(REPO_ROOT / "nbs" / "papermill"), edge_gate=str(REPO_ROOT / "configs" / "edge_gate.yaml"))
    cfg["spline"]["data_modes"] = {m: str(REPO_ROOT / "configs" / f) for m, f in cfg["spline"]["data_modes"].items()}
    path = root / "matrix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_matrix(path, "quick", root=REPO_ROOT, progress=False)
    assert [o["status"] for o in res.outcomes] == ["done", "done"], res.outcomes
    return path, res


def test_report_notebook_renders_every_part(tiny):
    path, res = tiny
    page = render_report(path, "quick", root=REPO_ROOT)
    out = page.parent
    html, md = page.read_text(), (out / "index.md").read_text()
    run_id = res.specs[0].run_id
    for needle in ("<h1>tiny report</h1>", "Comparison table", run_id, "seasonal_naive", "Mean ± sd over seeds", "Edge gate",
                   "document gate", "strict targets", "TSFM evaluation", "coverage by horizon", "Run states"):
        assert needle in html, needle
    assert "<img" in html and "src='data:image/png;base64," in html and "src='figures/" not in html   # self-contained
    for link in re.findall(r"\]\(([^)#]+)\)", md):                         # every markdown link points at a file
        assert (out / link).is_file(), link
    cmp = pd.read_csv(out / "comparison.csv")
    assert list(cmp.columns) == list(COMPARISON_COLUMNS) and len(cmp) == 1 + 3
    assert cmp.loc[0, "run_id"] == run_id and cmp.loc[0, "params"] > 0 and cmp.loc[0, "p95(ms)"] > 0
    assert list(cmp["model_type"][1:]) == ["naive", "seasonal_naive", "moving_average"]
    metrics = read_json(Path(res.specs[0].run_dir) / "metrics.json")
    assert cmp.loc[0, "RMSE"] == pytest.approx(metrics["test"]["model"]["rmse"], rel=1e-12)
    assert cmp.loc[1, "MASE"] == pytest.approx(metrics["test"]["naive"]["mase"], rel=1e-12)
    gate_md = (out / "edge_gate.md").read_text()
    assert re.search(r"\| lstm-uni-s42 \| \S+ \| onnx \|", gate_md), gate_md
    assert (out / "executed_report.ipynb").exists() is False                                   # executed copies live in artifacts
    assert (Path(res.specs[0].run_dir).parent / "report-tiny-quick" / "executed_report.ipynb").exists()


def test_tables_from_real_runs(tiny):
    path, res = tiny
    runs = collect_runs(path, "quick", REPO_ROOT)
    assert set(runs.metrics) == {res.specs[0].run_id} and set(runs.tsfm) == {res.specs[1].run_id}
    es = edge_summary(runs)
    assert es.loc[0, "onnx document"] == "PASS" and es.loc[0, "tflite document"] == "PASS"   # exports match Keras on every test window
    s = seed_summary(comparison_table(runs))
    assert s.loc[0, "n_seeds"] == 1 and pd.isna(s.loc[0, "RMSE sd"])
    tsfm = read_json(Path(res.specs[1].run_dir) / "metrics.json")
    assert tsfm["answers"].get("tollama", 0) > 0 and tsfm["fallback_rate"] < 0.5


def test_missing_runs_are_listed_not_dropped(tiny, tmp_path):
    path, _ = tiny
    cfg = load_matrix_config(path)
    other = cfg.model_copy(update={"artifacts_dir": str(tmp_path / "empty"), "reports_dir": str(tmp_path / "rep")})
    runs = collect_runs(other, "quick", REPO_ROOT)
    table = comparison_table(runs)
    assert len(table) == 1 and table.loc[0, "notes"] == "not run (pending)"
    from tsfm_wb.experiments.report import build_report
    page = build_report(other, "quick", root=REPO_ROOT)
    assert "pending" in page.read_text() and "No edge reports yet" in page.read_text()


def test_report_failure_names_the_cell(tiny, tmp_path):
    path, _ = tiny
    bad = yaml.safe_load(path.read_text()); bad["notebooks_dir"] = str(tmp_path)
    (tmp_path / "report.ipynb").write_text((REPO_ROOT / "nbs" / "papermill" / "report.ipynb").read_text().replace(
        "from tsfm_wb.experiments.report import build_report", "raise RuntimeError('broken report')"))
    p = tmp_path / "bad.yaml"; p.write_text(yaml.safe_dump(bad))
    with pytest.raises(TsfmWbError, match="report notebook failed in cell .*RuntimeError: broken report"):
        render_report(p, "quick", root=REPO_ROOT)

"""report.html (fedqc report): the QC timeline from a QC arm's logs, the page's content from a tiny run and a study,
and experiment tracking read back with MLflow's and TensorBoard's own readers."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedqc.analysis.timeline import qc_counts, qc_timeline
from fedqc.cli import app
from tests.conftest import tiny_config


class Tables(HTMLParser):
    """Every table's body rows (cells' text and attributes) by table id, and every <img>'s src and <script>'s src."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self.images: list[str] = []
        self.external: list[str] = []
        self._table, self._in_body, self._cell = None, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._in_body and self._table:
            self._cell = ["", a]
        elif tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("script", "link", "img", "iframe") and (a.get("src") or a.get("href") or "").startswith(
                ("http", "//")):
            self.external.append(a.get("src") or a.get("href"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append((self._cell[0], self._cell[1]))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None


def parse(path: Path) -> Tables:
    p = Tables()
    p.feed(path.read_text())
    return p


@pytest.fixture(scope="module")
def tiny_run(tiny_cohort, tmp_path_factory):
    """A finished tiny run (clean, qc with the audit and the feature-distance scan check: cleanlab's label check
    would triple the run's time and adds nothing to the page); `fedqc infer` made its report."""
    from fedqc.experiment.runner import simulate

    cfg = tiny_config(tiny_cohort / "manifest.csv", arms=["clean", "qc"],
                      qc={"audit": True, "skill": 0.0, "scans": ["ood"]})
    run = tmp_path_factory.mktemp("report") / "run"
    simulate(cfg, run, quiet=True)
    result = CliRunner().invoke(app, ["infer", "--run", str(run), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    assert f"report: {run / 'report.html'}" in " ".join(result.output.split())
    return run


def write_logs(folder: Path, **tables: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)


def test_timeline_states_from_the_logs(tmp_path):
    """One site per state: trained, flagged by its site check then held out, eliminated whole, scans revisited,
    and a site trained before the model showed skill (cycle 1: not judged)."""
    ok = lambda site, c, n=3: {"cycle": c, "site": site, "n_scans": n, "status": "ok"}  # noqa: E731
    write_logs(tmp_path,
               train_log=[ok("a", 1), ok("a", 2), ok("a", 3), ok("b", 1), ok("b", 2, 0) | {"status": "qc: site check failed"},
                          {"cycle": 3, "site": "b", "n_scans": 0, "status": "qc: site flagged"},
                          ok("c", 1), ok("c", 2), {"cycle": 3, "site": "c", "n_scans": 0, "status": "qc: site eliminated"},
                          ok("d", 1), ok("d", 2), ok("d", 3)],
               qc_log=[{"cycle": c, "site": s, "scope": "site", "p_value": 0.5, "accepted": not (s == "b" and c == 2)}
                       for c in (2, 3) for s in "abd"],
               flagged=[{"subject": "d1", "site": "d", "cycle_flagged": 1, "due": 3}],
               revisits=[{"subject": "d1", "site": "d", "cycle_flagged": 1, "due": 3, "cycle_revisited": 3,
                          "accepted": True}],
               eliminated=[{"subject": f"c{i}", "site": "c", "cycle_flagged": 2, "cycle_eliminated": 2, "stage": "site"}
                           for i in range(3)])
    (tmp_path / "qc_summary.json").write_text('{"skill_cycle": 2}')
    t = qc_timeline(tmp_path)
    grid = t.pivot(index="site", columns="cycle", values="state")
    assert grid.to_dict("index") == {
        "a": {1: "could-not-judge", 2: "trained", 3: "trained"},
        "b": {1: "could-not-judge", 2: "flagged", 3: "held"},
        "c": {1: "could-not-judge", 2: "eliminated", 3: "out"},
        "d": {1: "flagged", 2: "trained", 3: "revisited"}}
    counts = qc_counts(t).set_index("cycle")
    assert counts.loc[1, "flagged"] == 1 and counts.loc[2, "eliminated"] == 3 and counts.loc[3, "revisited"] == 1
    assert counts.loc[1, "n_trained"] == 12 and counts.loc[3, "sites_out"] == 1 and counts.loc[2, "sites_flagged"] == 1


@pytest.mark.slow
def test_run_page_shows_the_timeline_and_every_scan(tiny_run):
    page = parse(tiny_run / "report.html")
    assert not page.external, "the page must fetch nothing"
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert base64.b64decode(page.images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the timeline: one row per site, one cell per QC cycle, each cell's state as the logs say
    rows = page.tables["timeline-qc-table"]
    eliminated = pd.read_csv(tiny_run / "qc" / "eliminated.csv")
    cycles = sorted(pd.read_csv(tiny_run / "qc" / "train_log.csv")["cycle"].unique())
    states = {r[0][0]: [a["data-state"] for _, a in r[1:]] for r in rows}
    assert set(states) == set(pd.read_csv(tiny_run / "qc" / "train_log.csv")["site"])
    assert all(len(s) == len(cycles) for s in states.values())
    audited = eliminated[eliminated["stage"] == "audit"]
    for site in audited["site"].unique():  # the audit's eliminations show in the arm's first cycle
        assert states[site][0] == "eliminated"
    inverted = audited.groupby("site").size().idxmax()  # the inverted site: every training scan audited out
    assert set(states[inverted][1:]) == {"out"}
    # the per-scan table: every checked scan and every audit finding, one row each
    scans = page.tables["scans-qc-table"]
    issues, audit = pd.read_csv(tiny_run / "qc" / "scan_issues.csv"), pd.read_csv(tiny_run / "qc" / "audit.csv")
    assert len(scans) == len(issues) + len(audit) and len(audit) >= 5
    assert sorted(r[0][0] for r in scans) == sorted([*issues["subject"], *audit["subject"]])
    # the final metrics: one row per arm, AUROC with its interval as in metrics.csv
    metrics = pd.read_csv(tiny_run / "metrics.csv")
    final = {r[0][0]: r for r in page.tables["final-table"]}
    assert set(final) == {"clean", "qc"}
    last = metrics[(metrics["group"] == "all") & (metrics["arm"] == "qc")].iloc[-1]
    assert final["qc"][5][0] == f"{last.auroc:.3f} [{last.auroc_lo:.3f}, {last.auroc_hi:.3f}]"


@pytest.mark.slow
def test_study_page_has_the_curves_and_paired_differences(tiny_run, tmp_path):
    from fedqc.analysis.study import write_study

    for seed in (0, 1):
        shutil.copytree(tiny_run, tmp_path / f"seed_{seed}")
    write_study(tmp_path, {0: tmp_path / "seed_0", 1: tmp_path / "seed_1"}, "test")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = parse(tmp_path / "report.html")
    main = page.tables["main-table"]  # a row per figure, a column per arm
    assert [r[0][0] for r in main][:2] == ["auroc", "auroc_last3"] and {len(r) for r in main} == {3}
    pairs = {r[0][0] for r in page.tables["paired-table"]}
    assert pairs == set(pd.read_csv(tmp_path / "paired.csv")["pair"])
    assert len(page.tables["study-table"]) == 4 and len(page.images) == 1  # study_auroc.png
    assert any(link.endswith("seed_0/report.html") for link in (tmp_path / "report.html").read_text().split('"'))


def test_report_of_a_folder_that_is_none_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path} is not a run (config.yaml), a study (study.csv) or a sweep (sweep.csv) folder"]


def tracked_copy(run: Path, folder: Path, tracking: dict) -> Path:
    """A copy of ``run`` whose config tracks with ``tracking``."""
    shutil.copytree(run, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "tracking": tracking}))
    return folder


@pytest.mark.slow
def test_mlflow_reads_back_params_metrics_qc_counts_and_artifacts(tiny_run, tmp_path):
    """`fedqc infer` on a run whose config says `tracking: {backend: mlflow}` logs it into the run folder."""
    pytest.importorskip("mlflow", reason="the optional extra fedqc[tracking] is not installed")
    from mlflow.tracking import MlflowClient

    tiny_run = tracked_copy(tiny_run, tmp_path / "run", {"backend": "mlflow"})
    result = CliRunner().invoke(app, ["infer", "--run", str(tiny_run), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tiny_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.lr"] == "0.001" and run.data.params["qc.audit"] == "True"
    metrics = pd.read_csv(tiny_run / "metrics.csv")
    for arm in ("clean", "qc"):
        m = metrics[(metrics["group"] == "all") & (metrics["arm"] == arm)]
        history = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, f"{arm}/auroc"))
        assert [h[0] for h in history] == m["cycle"].tolist()
        assert [h[1] for h in history] == pytest.approx(m["auroc"].tolist())
    eliminated = client.get_metric_history(run.info.run_id, "qc/qc/eliminated")
    assert sum(h.value for h in eliminated) == len(pd.read_csv(tiny_run / "qc" / "eliminated.csv"))
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "report.md", "metrics.csv", "config.yaml", "qc"} <= top
    assert "qc/scan_issues.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "qc")}
    assert (tiny_run / "mlartifacts").is_dir()  # the default store keeps everything in the run folder
    # logging the run again replaces its record
    from fedqc.analysis.tracking import track_run

    track_run(tiny_run)
    assert len(client.search_runs([experiment.experiment_id])) == 1


@pytest.mark.slow
def test_tensorboard_reads_back_the_scalars(tiny_run, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra fedqc[tracking] is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedqc.analysis.tracking import track_run

    run = tracked_copy(tiny_run, tmp_path / "run", {"backend": "tensorboard", "uri": "tb"})
    where = track_run(run)
    assert where == str(run / "tb" / "run")
    events = EventAccumulator(where)
    events.Reload()
    metrics = pd.read_csv(run / "metrics.csv")
    qc = metrics[(metrics["group"] == "all") & (metrics["arm"] == "qc")]
    scalars = events.Scalars("qc/sensitivity")
    assert [s.step for s in scalars] == qc["cycle"].tolist()
    assert [s.value for s in scalars] == pytest.approx(qc["sensitivity"].tolist())
    assert {"config/text_summary", "report/text_summary"} <= set(events.Tags()["tensors"])


@pytest.mark.parametrize("tracking, message", [
    ({"backend": "wandb"}, "tracking.backend: 'wandb' is not one of ('none', 'mlflow', 'tensorboard')"),
    ({"backend": "mlflow", "uri": "runs/db"}, "tracking.uri: an MLflow tracking URI such as sqlite:///path/mlflow.db"),
    ({"backend": "tensorboard", "uri": "http://host"}, "tracking.uri: tensorboard writes to a local folder"),
    ({"backend": "mlflow", "server": "x"}, "tracking.server: unknown key (allowed: backend, experiment, uri)"),
])
def test_bad_tracking_config_is_one_line(tiny_cohort, tmp_path, tracking, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"name": "bad", "manifest": str(tiny_cohort / "manifest.csv"),
                                      "engine": "inprocess", "qc": {"start": "clean"}, "tracking": tracking}))
    result = CliRunner().invoke(app, ["simulate", "--config", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and problems[0].startswith(f"  - {message}")


def test_a_missing_tracking_package_names_the_extra(monkeypatch):
    import importlib.util

    from fedqc.config import parse_config
    from fedqc.errors import ConfigError

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find(name, *a))
    with pytest.raises(ConfigError) as err:
        parse_config({"name": "x", "manifest": "m.csv", "qc": {"start": "clean"}, "tracking": {"backend": "mlflow"}},
                     check_files=False)
    assert err.value.problems == ["tracking.backend: mlflow needs the optional extra: pip install 'fedqc[tracking]'"]


def chromium() -> str:
    """Debian's chromium (`.ci/run` installs it): on CI a missing browser fails the test, elsewhere skips it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    message = "no headless Chromium on PATH (Debian: apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI=true needs it")
    pytest.skip(message)


def browse(page: Path, tmp_path: Path, *extra: str) -> tuple[str, list[str]]:
    """Load ``page`` from a file:// URL in headless Chromium: the DOM after its scripts ran, and the console's
    messages (errors and warnings included)."""
    result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *extra,
                             page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def test_the_console_check_sees_a_script_error(tmp_path):
    """The check below can fail: a page whose script throws shows in the console lines."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>notDefined();</script></body></html>")
    _, console = browse(page, tmp_path, "--dump-dom")
    assert any("notDefined" in line for line in console)


@pytest.mark.slow
def test_report_in_a_browser(tiny_run, tmp_path):
    """The run's report in headless Chromium: no console message, the script ran, the timeline and the per-scan
    table are in the DOM; sorting and filtering work (a copy of the page with a script that clicks and types);
    a screenshot is written."""
    dom, console = browse(tiny_run / "report.html", tmp_path, "--dump-dom")
    assert console == []
    parsed = Tables()
    parsed.feed(dom)
    assert 'data-script="ready"' in dom
    assert len(parsed.tables["timeline-qc-table"]) == len(set(pd.read_csv(tiny_run / "qc" / "train_log.csv")["site"]))
    assert len(parsed.tables["scans-qc-table"]) == len(pd.read_csv(tiny_run / "qc" / "scan_issues.csv")) + len(
        pd.read_csv(tiny_run / "qc" / "audit.csv"))
    # sorting by the subject column, descending (two clicks), then a filter on one site
    drive = """<script>
      var th = document.querySelector("#scans-qc-table th"); th.click(); th.click();
      var box = document.querySelector('input[data-table="scans-qc-table"]'); box.value = "beta";
      box.dispatchEvent(new Event("input"));
      var rows = Array.prototype.slice.call(document.querySelectorAll("#scans-qc-table tbody tr"));
      document.body.setAttribute("data-order", rows.map(function (r) { return r.cells[0].textContent; }).join(","));
      document.body.setAttribute("data-shown", rows.filter(function (r) { return r.style.display !== "none"; })
        .map(function (r) { return r.cells[0].textContent; }).join(","));
    </script></body>"""
    driven = tmp_path / "driven.html"
    driven.write_text((tiny_run / "report.html").read_text().replace("</body>", drive))
    dom, console = browse(driven, tmp_path, "--dump-dom")
    assert console == []
    order = re.search(r'data-order="([^"]*)"', dom).group(1).split(",")
    shown = re.search(r'data-shown="([^"]*)"', dom).group(1).split(",")
    assert order == sorted(order, reverse=True)
    scans = pd.concat([pd.read_csv(tiny_run / "qc" / f) for f in ("scan_issues.csv", "audit.csv")])
    assert sorted(shown) == sorted(scans.loc[scans["site"] == "beta", "subject"])
    shot = tmp_path / "report.png"
    browse(tiny_run / "report.html", tmp_path, f"--screenshot={shot}", "--window-size=1280,1600",
           "--hide-scrollbars")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

"""End-to-end runs on real MNIST samples: store rows, skip stored work, resume after SIGKILL."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from robustgen_bench.config import load_suite
from robustgen_bench.export import export_csv
from robustgen_bench.runner import plan, run_suite
from robustgen_bench.store import EXPORT_COLUMNS, read_manifest, read_results

SUITE = """\
name: e2e
dataset: {{name: mnist, split: test, n: {n}, seed: 1}}
models: [mnist/tiny-cnn, mnist/tiny-noisy]
run: {{batch_size: {bs}, verify_draws: 3}}
attacks:
  - {{id: pgd, library: foolbox, attack: LinfPGD, threat: linf, epsilon: [0.05, 0.3], steps: {steps}, rel_stepsize: 0.25}}
"""


def suite_file(tmp_path: Path, n: int = 12, bs: int = 4, steps: int = 5) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(SUITE.format(n=n, bs=bs, steps=steps))
    return p


def test_run_stores_one_row_per_cell_and_sample(tmp_zoo, tmp_path):
    s = load_suite(suite_file(tmp_path))
    out = run_suite(s, tmp_path / "run")
    df = read_results(out)
    assert len(plan(s)) == 2 * (1 + 2)
    assert len(df) == 2 * 3 * 12
    assert not df.duplicated(["cell_key", "sample_index"]).any()
    clean = df[df.attack == "clean"]
    assert clean.adv_correct.mean() > 0.7  # the tiny CNN is ~95% accurate
    pgd = df[df.attack == "pgd"]
    # a bigger budget can only make the (deterministic) model less robust on these samples
    det = pgd[pgd.model == "mnist/tiny-cnn"].pivot(index="sample_index", columns="epsilon",
                                                   values="adv_correct")
    assert det[0.3].sum() <= det[0.05].sum() and det[0.3].mean() < 0.5
    found = pgd.dropna(subset=["distance"])
    assert (found.distance <= found.epsilon + 1e-6).all()
    # clean predictions of attacked rows are the stored clean cell's
    merged = pgd.merge(clean[["model", "sample_index", "clean_pred"]], on=["model", "sample_index"])
    assert (merged.clean_pred_x == merged.clean_pred_y).all()
    m = read_manifest(out)
    assert m["dataset"]["indices_hash"] and m["suite_hash"] == s.hash()
    assert {c["model"] for c in m["cells"]} == set(s.models)
    assert "torch" in m["versions"] and all(len(x["weights_sha256"]) == 1 for x in m["models"])


def test_rerun_skips_stored_work_and_changed_config_gets_new_cells(tmp_zoo, tmp_path):
    out = tmp_path / "run"
    s = load_suite(suite_file(tmp_path))
    run_suite(s, out)
    before = read_results(out)
    t0 = time.perf_counter()
    run_suite(s, out)
    assert time.perf_counter() - t0 < 5  # nothing recomputed: no model is even built
    pd.testing.assert_frame_equal(before, read_results(out))
    changed = load_suite(suite_file(tmp_path), overrides=["attacks.pgd.steps=3"])
    run_suite(changed, out)
    # the manifest records the command-line overrides that produced the run's suite hash
    m = read_manifest(out)
    assert m["command_line"] == {"set": ["attacks.pgd.steps=3"], "limit": None}
    assert m["suite_hash"] == changed.hash() != s.hash()
    after = read_results(out)
    new_keys = {c.key for c in plan(changed)} - {c.key for c in plan(s)}
    assert len(new_keys) == 4  # 2 models x 2 budgets; the clean cells are shared
    assert len(after) == len(before) + 4 * 12
    old = after[after.cell_key.isin(set(before.cell_key))]
    pd.testing.assert_frame_equal(old.reset_index(drop=True), before)


def test_export_csv_columns_and_values(tmp_zoo, tmp_path):
    out = run_suite(load_suite(suite_file(tmp_path, n=8)), tmp_path / "run")
    text = export_csv(out)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0].keys()) == EXPORT_COLUMNS
    assert len(rows) == 2 * 3 * 8
    assert {r["adv_correct"] for r in rows} <= {"0", "1"}
    assert all(r["distance"] == "" for r in rows if r["attack"] == "clean")
    cli = subprocess.run([sys.executable, "-m", "robustgen_bench.cli", "export", str(out),
                          "--format", "csv"], capture_output=True, text=True, timeout=120,
                         env={**os.environ})
    assert cli.returncode == 0 and cli.stdout == text


def test_export_has_the_run_as_last_run_not_every_stored_row(tmp_zoo, tmp_path):
    """A suite re-run into the same directory with another model list (or a --limit prefix)
    keeps the old rows in the store; the export, like the tables, has only the new run's."""
    out = run_suite(load_suite(suite_file(tmp_path, n=8)), tmp_path / "run")
    assert len(read_results(out)) == 2 * 3 * 8
    one = tmp_path / "one.yaml"
    one.write_text(SUITE.format(n=4, bs=4, steps=5).replace(
        "models: [mnist/tiny-cnn, mnist/tiny-noisy]", "models: [mnist/tiny-cnn]"))
    run_suite(load_suite(one), out)
    assert len(read_results(out)) == 2 * 3 * 8  # nothing attacked again, nothing deleted
    rows = list(csv.DictReader(io.StringIO(export_csv(out))))
    assert {r["model"] for r in rows} == {"mnist/tiny-cnn"} and len(rows) == 3 * 4


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_zoo, tmp_path):
    n, bs = 60, 2
    suite = suite_file(tmp_path, n=n, bs=bs, steps=10)
    total = 2 * 3 * n
    cmd = [sys.executable, "-m", "robustgen_bench.cli", "run", str(suite)]
    env = {**os.environ, "RGBENCH_ZOO": str(tmp_zoo)}

    killed_dir = tmp_path / "killed"
    db = killed_dir / "results.sqlite"
    proc = subprocess.Popen(cmd + ["--run-dir", str(killed_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and _count(db) < n + 6:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _count(db)
    assert 0 < partial < total

    resumed = subprocess.run(cmd + ["--run-dir", str(killed_dir)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    clean_dir = tmp_path / "clean"
    full = subprocess.run(cmd + ["--run-dir", str(clean_dir)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert full.returncode == 0, full.stderr

    a, b = read_results(killed_dir), read_results(clean_dir)
    assert len(a) == total and not a.duplicated(["cell_key", "sample_index"]).any()
    pd.testing.assert_frame_equal(a, b)


def test_runtime_failure_exits_1_with_message(tmp_zoo, tmp_path):
    # corrupt the weights after the suite validated: sha256 check fails at run time
    (tmp_zoo / "mnist/tiny-cnn/weights.safetensors").write_bytes(b"not weights")
    p = suite_file(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "robustgen_bench.cli", "run", str(p), "--run-dir",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr  # a broken zoo entry is bad input
    assert "sha256 mismatch" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_is_a_runtime_failure(tmp_zoo, tmp_path):
    p = suite_file(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "robustgen_bench.cli", "run", str(p), "--run-dir",
                           str(tmp_path / "r"), "--data-dir", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RGBENCH_NO_DOWNLOAD": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "cannot load mnist" in proc.stderr and "Traceback" not in proc.stderr


def test_attack_cells_run_batch_major_so_a_stopped_run_leaves_a_complete_prefix(tmp_zoo, tmp_path):
    s = load_suite(suite_file(tmp_path, n=8, bs=4, steps=2))
    order: list[str] = []

    class _Bar:
        def __init__(self, label: str) -> None:
            self.label = label

        def advance(self, n: int) -> None:
            order.append(self.label)

        def close(self) -> None:
            pass

    run_suite(s, tmp_path / "run", progress=lambda label, total, done: _Bar(label))
    cnn = "mnist/tiny-cnn · pgd (L∞ ε="
    assert order[:4] == ["mnist/tiny-cnn · clean"] * 2 + ["mnist/tiny-noisy · clean"] * 2
    # batch 0 under both budgets before batch 1 under either
    assert order[4:8] == [cnn + "0.05)", cnn + "0.3)", cnn + "0.05)", cnn + "0.3)"]
    # so stopping here would leave samples of batch 0 finished in every cell of the model:
    # a --limit run over that prefix attacks nothing and reports on complete cells
    first = read_results(tmp_path / "run")
    prefix = load_suite(suite_file(tmp_path, n=8, bs=4, steps=2), limit=4)
    t0 = time.perf_counter()
    run_suite(prefix, tmp_path / "run")
    assert time.perf_counter() - t0 < 5
    pd.testing.assert_frame_equal(first, read_results(tmp_path / "run"))


def test_progress_counts_stored_samples_once_per_cell_after_a_partial_batch(tmp_zoo, tmp_path):
    # A --limit 3 run stores 3 samples of batch 0 (size 4); the full run redoes that batch.
    run_suite(load_suite(suite_file(tmp_path, n=8, bs=4, steps=2), limit=3), tmp_path / "run")
    bars: list[dict] = []

    class _Bar:
        def __init__(self, label: str, total: int, done: int) -> None:
            self.state = {"label": label, "total": total, "count": done, "closed": 0}
            bars.append(self.state)

        def advance(self, n: int) -> None:
            self.state["count"] += n

        def close(self) -> None:
            self.state["closed"] += 1

    run_suite(load_suite(suite_file(tmp_path, n=8, bs=4, steps=2)), tmp_path / "run",
              progress=lambda label, total, done: _Bar(label, total, done))
    assert len(bars) == 2 * 3 and len({b["label"] for b in bars}) == 6  # one bar per cell
    assert all(b["count"] == b["total"] == 8 and b["closed"] == 1 for b in bars), bars
    df = read_results(tmp_path / "run")
    assert len(df) == 6 * 8 and not df.duplicated(["cell_key", "sample_index"]).any()

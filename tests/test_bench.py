"""``clm-workers bench`` keeps working: its structure is tested, never its times."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clm_workers.bench.machine import StartCosts, describe_machine
from clm_workers.bench.model import STRATEGIES, RunResult, Scenario
from clm_workers.bench.output import BEGIN, END, write_outputs
from clm_workers.bench.procstat import process_cpu_seconds
from clm_workers.bench.runner import BenchOptions, BenchResult, plan_runs, with_scenarios
from clm_workers.bench.summary import bounds, check_targets, percentile, summarise
from procs import killed_at_exit

COSTS = StartCosts(spawn_wall=0.01, spawn_cpu=0.01, worker_wall=0.03, worker_cpu=0.03)


def clm_workers(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clm_workers.cli", *args],
        capture_output=True, text=True, timeout=180, env=dict(os.environ),
    )


def test_quick_bench_runs_every_strategy_on_real_workers(tmp_path):
    result = clm_workers("bench", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr

    for strategy in STRATEGIES:
        assert f"`{strategy}`" in result.stdout
    assert "### Targets" in result.stdout
    assert "issue" not in result.stdout.replace("issued", "")
    assert "### Where the time goes" in result.stdout

    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["command"] == f"clm-workers bench --quick --out {tmp_path}"
    assert data["machine"]["cores"] >= 1
    assert {(c["scenario"], c["workers"]) for c in data["cells"]} == {("io", 4), ("cpu", 4)}
    for cell in data["cells"]:
        assert set(cell["strategies"]) == set(STRATEGIES)
        assert cell["bound"] > 0 and cell["bound_with_worker_start"] >= cell["bound"]
    assert len(data["runs"]) == 2 * len(STRATEGIES)
    for run in data["runs"]:
        assert run["registered"] == run["workers"] == 4, run
        assert len(run["detection"]) == 4
        assert 0 < run["first"] <= run["wall"]
        assert run["queries"] >= 1
        assert len(run["worker_cpu"]) == 4
        assert 0 < run["spawn_done"] < run["own_last"] <= run["wall"]
        assert 0 < run["own_first"] <= run["own_last"]

    markdown = (tmp_path / "benchmarks.md").read_text()
    assert BEGIN in markdown and END in markdown and "| `clm-workers` |" not in markdown.split(BEGIN)[0]
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (tmp_path / "benchmarks.png").exists() == has_matplotlib


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "8,x"], "--sizes: 'x' is not allowed"),
        (["--sizes", "0"], "--sizes: 0 is not allowed"),
        (["--repeats", "0"], "--repeats: 0 is not allowed"),
        (["--concurrency", "many"], "--concurrency: 'many' is not allowed"),
        (["--scenarios", "io,disk"], "--scenarios: 'io,disk' is not allowed; expected a comma-separated"),
    ],
)
def test_bad_bench_flag_is_one_line_exit_2(args, message):
    result = clm_workers("bench", *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"clm-workers: error: {message}")
    assert result.stdout == ""


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    result = clm_workers("bench", "--quick", "--out", str(target))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"clm-workers: error: --out: '{target}' is not allowed; expected a folder (created if missing)"
    )


def test_scenarios_can_be_chosen():
    options = with_scenarios(BenchOptions(), "cpu")
    assert [s.name for s in options.scenarios] == ["cpu"]
    assert [s.name for s in with_scenarios(BenchOptions.quick_run(), "io,cpu").scenarios] == ["io", "cpu"]


def test_runs_are_interleaved_and_the_order_rotates():
    options = BenchOptions(sizes=(8, 16), repeats=3, budget=None)
    runs, notes = plan_runs(options, machine_cores=2)
    assert notes == []
    assert len(runs) == 3 * 2 * 2 * len(STRATEGIES)
    # Each group of len(STRATEGIES) consecutive runs is one cell with every strategy once.
    groups = [runs[i:i + len(STRATEGIES)] for i in range(0, len(runs), len(STRATEGIES))]
    for group in groups:
        assert sorted(r.strategy for r in group) == sorted(STRATEGIES)
        assert len({(r.cell, r.repeat) for r in group}) == 1
    firsts = {group[0].strategy for group in groups}
    assert len(firsts) == 3  # three repeats, three different strategies first


def test_over_budget_only_long_sequential_runs_are_cut_to_one_repeat():
    options = BenchOptions(repeats=3, budget=60.0)
    runs, [note] = plan_runs(options, machine_cores=2)
    sequential = [r for r in runs if r.strategy == "sequential"]
    long_cells = {r.cell for r in sequential if r.estimate > 30}
    assert long_cells
    for cell in long_cells:
        assert [r.repeat for r in sequential if r.cell == cell] == [0]
    for strategy in STRATEGIES[1:]:
        assert sum(r.strategy == strategy for r in runs) == 3 * 2 * 4
    assert "sequential ran once" in note and "--full-sequential" in note


def test_bounds_are_the_ideal_and_add_the_workers_own_start():
    io = bounds(Scenario("io", boot_delay=1.0), 32, cores=2, costs=COSTS)
    assert io.ideal == pytest.approx(1.0 + COSTS.spawn_wall)
    assert io.machine == pytest.approx(1.0 + 32 * COSTS.worker_cpu / 2)
    cpu = bounds(Scenario("cpu", boot_cpu=0.2), 32, cores=2, costs=COSTS)
    assert cpu.ideal == pytest.approx(32 * 0.2 / 2)
    assert cpu.machine == pytest.approx(32 * (0.2 + COSTS.worker_cpu) / 2)


def test_percentile_is_nearest_rank():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def _synthetic_result(tmp_path: Path) -> BenchResult:
    options = BenchOptions(sizes=(32,), repeats=1, out=tmp_path)
    runs = [
        RunResult(strategy, scenario, 32, 0, wall, first=wall / 2, registered=32, detection=[0.005] * 32,
                  cpu=0.1, queries=100, poll_interval=0.01 if strategy.startswith("clm") else 0.5)
        for scenario, walls in (("io", (48.0, 6.0, 1.2, 4.3)), ("cpu", (16.0, 4.5, 3.6, 3.5)))
        for strategy, wall in zip(STRATEGIES, walls, strict=True)
    ]
    result = BenchResult(options, describe_machine(), COSTS, "2026-01-01 00:00 UTC", runs=runs)
    result.cells = summarise(runs, options.scenarios, 2, COSTS)
    result.targets = check_targets(result.cells)
    return result


def test_targets_are_checked_on_the_default_mode(tmp_path):
    checks = {c.target: c for c in _synthetic_result(tmp_path).targets}
    assert checks["I/O N=32: wall <= 1.3 s"].met is True
    assert checks["I/O N=32: >= 3x faster than threadpool"].measured == "5.0x"
    assert checks["I/O N=32: >= 20x faster than sequential"].met is True
    [cpu] = [c for t, c in checks.items() if t.startswith("CPU N=32")]
    assert cpu.measured == "1.12x" and cpu.met is True


def test_rewriting_the_report_keeps_the_hand_written_text(tmp_path):
    md = tmp_path / "benchmarks.md"
    md.write_text(f"# Benchmarks\n\nAnalysis above.\n\n{BEGIN}\nold figures\n{END}\n\n## Analysis below\n")
    write_outputs(_synthetic_result(tmp_path), tmp_path)
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nAnalysis above.\n\n" + BEGIN)
    assert "old figures" not in text and "| `threadpool` |" in text
    assert text.endswith(f"{END}\n\n## Analysis below\n")
    assert json.loads((tmp_path / "benchmarks.json").read_text())["cells"][0]["workers"] == 32


def test_process_cpu_counts_every_thread_finer_than_a_clock_tick():
    """A forked worker's 10-20 ms must not read as 0.01 or 0.02: the bound is made of them."""
    code = (
        "import threading, time\n"
        "def spin():\n"
        "    end = time.thread_time() + 0.2\n"
        "    while time.thread_time() < end: pass\n"
        "t = threading.Thread(target=spin); t.start(); t.join(0)\n"
        "spin(); t.join(); print('spun', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    with killed_at_exit(child):
        assert child.stdout is not None and child.stdout.readline() == "spun\n"
        seconds = process_cpu_seconds(child.pid)
        assert seconds is not None and seconds >= 0.4  # both threads' 0.2 s
        assert round(seconds * 100, 6) != round(seconds * 100)  # not a whole number of 10 ms ticks
    assert process_cpu_seconds(child.pid) is None

"""The bench's real-CLM scenario on its smallest cell: every strategy's workers get idle and are measured."""

from __future__ import annotations

import math
from pathlib import Path

from clm_workers.bench import clm_output, realclm


def test_the_real_clm_scenario_measures_every_strategy(tmp_path: Path) -> None:
    result = realclm.run_clm_bench(sizes=(2,), repeats=1, concurrency=2, progress=lambda line: None)
    by = {run.strategy: run for run in result.runs}
    assert sorted(by) == sorted(realclm.STRATEGIES)
    for run in by.values():
        assert run.idle == 2 and not math.isnan(run.wall) and run.wall > 0, run
        assert len(run.worker_cpu) == len(run.worker_pss) == 2, run  # both workers found and measured
    assert by["forkserver"].template_cpu is not None and by["forkserver"].template_pss is not None
    assert by["clm"].template_cpu is None
    # A forked worker shares its template's pages: far less memory of its own than a spawned one.
    assert max(by["forkserver"].worker_pss) < min(by["spawn"].worker_pss)
    cells = {c.strategy: c for c in result.cells}
    assert all(c.bound > 0 for c in cells.values())
    written = clm_output.write_outputs(result, tmp_path)
    text = (tmp_path / "benchmarks.md").read_text()
    begin, end = clm_output.markers(result.clm_version)
    assert text.count(begin) == text.count(end) == 1
    # Written again, the section is replaced, not repeated.
    clm_output.write_outputs(result, tmp_path)
    assert (tmp_path / "benchmarks.md").read_text().count(begin) == 1
    assert (tmp_path / f"benchmarks-clm-{result.clm_version}.json") in written

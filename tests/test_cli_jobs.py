"""``clm-workers submit``, ``jobs`` and ``jobs show``: feed a running pool, see why a job failed.

A real pool of simulated workers takes the jobs; a job whose input file is
missing fails in the worker (``FileNotFoundError``), with a traceback.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from contextlib import closing

import pytest

from clitools import StartProcess, clm_workers, db_rows, sim_pools, write_config
from clm_workers import schema
from terminal import TerminalProcess

JOB_KEYS = {"id", "job_type", "status", "priority", "input_file", "output_file", "worker_id", "worker",
            "attempts", "max_attempts", "created_at", "started_at", "completed_at", "age", "duration",
            "error", "session_id", "payload", "result", "traceback"}


@pytest.fixture
def pool(tmp_path):
    write_config(tmp_path, sim_pools(notebook=1, plantuml=1))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        yield start
        start.popen.send_signal(signal.SIGINT)
        assert start.wait() == 0, start.stderr


def test_submit_wait_then_jobs_and_jobs_show(tmp_path, pool):
    (tmp_path / "in.txt").write_text("slide\n")
    done = clm_workers("submit", "notebook", "in.txt", "out/in.txt", "--wait", "30", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert set(job) == JOB_KEYS
    assert job["status"] == "completed" and job["worker"] == "notebook#0" and job["attempts"] == 1
    assert job["result"] == {"bytes": 6} and job["created_at"].endswith("Z")
    assert (tmp_path / "out" / "in.txt").read_text() == "slide\n"
    assert re.search(r"✓ job 1 completed by notebook#0, \d+\.\d\d s after it was queued", done.stderr)

    failed = clm_workers("submit", "plantuml", "missing.puml", "out/x.png", "--wait", "30", cwd=tmp_path)
    assert failed.returncode == 1
    [line] = [line for line in failed.stderr.splitlines() if line.startswith("✗")]
    assert line.startswith("✗ job 2 failed (plantuml#0): FileNotFoundError: [Errno 2] No such file")
    assert line.endswith("; details: clm-workers jobs show 2")
    assert failed.stdout == ""

    listed = json.loads(clm_workers("jobs", "--json", cwd=tmp_path).stdout)
    assert [(j["id"], j["status"], j["worker"]) for j in listed] == [
        (1, "completed", "notebook#0"), (2, "failed", "plantuml#0")]
    assert listed[1]["error"].startswith("FileNotFoundError") and listed[1]["traceback"] is None
    only_failed = json.loads(clm_workers("jobs", "--status", "failed", "--json", cwd=tmp_path).stdout)
    assert [j["id"] for j in only_failed] == [2]
    by_type = json.loads(clm_workers("jobs", "--type", "notebook", "--json", cwd=tmp_path).stdout)
    assert [j["id"] for j in by_type] == [1]

    table = clm_workers("jobs", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if re.match(r"\s+\d+\s+(notebook|plantuml)\s", line)]
    assert len(rows) == 2, table.stdout
    assert re.search(r"1\s+notebook\s+completed\s+notebook#0\s+1/3\s.*\s<2 s\s", rows[0]), rows[0]
    assert re.search(r"2\s+plantuml\s+failed\s+plantuml#0\s+1/3\s.*FileNotFoundError", rows[1]), rows[1]
    assert "why one failed: clm-workers jobs show ID" in table.stdout

    shown = clm_workers("jobs", "show", "2", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback (most recent call last):" in shown.stdout and "missing.puml" in shown.stdout
    assert re.search(r"worker\s+plantuml#0 \(row \d+\)", shown.stdout)
    as_json = json.loads(clm_workers("jobs", "show", "2", "--json", cwd=tmp_path).stdout)
    assert as_json["traceback"].startswith("Traceback") and as_json["status"] == "failed"


def test_the_job_list_is_one_line_per_job_at_80_columns(tmp_path, pool):
    clm_workers("submit", "plantuml", "no/such/folder/and/a/rather/long/name.puml", "out.png", "--wait", "30",
                cwd=tmp_path)
    terminal = TerminalProcess(tmp_path, "jobs", columns=80)
    try:
        assert terminal.wait() == 0
    finally:
        terminal.close()
    lines = terminal.text().splitlines()
    [row] = [line for line in lines if re.match(r"\s+1\s+plantuml\s", line)]
    assert row.rstrip().endswith("…") and "FileNotFoundError" in row, lines
    assert all(len(line) <= 80 for line in lines)


def test_submit_without_a_worker_of_that_type_says_so(tmp_path, pool):
    result = clm_workers("submit", "drawio", "a.drawio", "a.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "clm-workers: job 1 queued (drawio: a.drawio -> a.png)" in result.stderr
    assert "no drawio worker runs" in result.stderr
    # No session: any pool's worker of the type may take it (where CLM's jobs table has the column).
    assert db_rows(tmp_path / "jobs.db", "SELECT status FROM jobs") == [("pending",)]
    assert json.loads(clm_workers("jobs", "show", "1", "--json", cwd=tmp_path).stdout)["session_id"] is None


def _empty_database(tmp_path):
    db = tmp_path / "jobs.db"
    with closing(schema.connect(db)) as conn:
        schema.ensure_schema(conn)
    return db


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "show", "99"], "ID: 99 is not allowed; expected the id of a job of {db} (it has no jobs)"),
        (["jobs", "show", "x"], "ID: 'x' is not allowed; expected a whole number"),
        (["jobs", "--status", "done"], "--status: 'done' is not allowed; expected one of 'pending', "),
        (["jobs", "--limit", "0"], "--limit: 0 is not allowed; expected a whole number from 1 to 10000"),
        (["submit", "notebook", "a", "b", "--payload", "[1]"], "--payload: '[1]' is not allowed; "
                                                               "expected a JSON object"),
        (["submit", "notebook", "a", "b", "--payload", "{nope"], "--payload: '{nope' is not allowed"),
        (["submit", "note book", "a", "b"], "TYPE: 'note book' is not allowed; expected a name of up to 64"),
        (["submit", "notebook", "a", "b", "--wait", "0"], "--wait: 0.0 is not allowed"),
        (["submit", "notebook", " ", "b"], "INPUT: ' ' is not allowed; expected a file path"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    db = _empty_database(tmp_path)
    result = clm_workers(*args, "--db", str(db))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("clm-workers: error: " + message.replace("{db}", str(db))), line
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_jobs_of_a_file_that_is_not_a_database_is_bad_input(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    result = clm_workers("jobs", "--db", str(tmp_path / "notes.txt"))
    assert result.returncode == 2 and "expected a CLM jobs database" in result.stderr
    nothing = clm_workers("submit", "notebook", "a", "b", "--db", str(tmp_path / "none.db"))
    assert nothing.returncode == 2 and not (tmp_path / "none.db").exists()

"""A worker package laid out as CLM's are: ``__main__``, a module of settings read when imported, a heavy one.

Run as ``python -m workers_for_tests.envworker``.  Report:
``$TEST_REPORT_DIR/<WORKER_ID>.import.json``: what :mod:`.settings` saw when
it was imported and which pid imported it, which pid imported :mod:`.heavy`
and :mod:`workers_for_tests.preloaded`, this worker's pid, and a draw of
``random``.
"""

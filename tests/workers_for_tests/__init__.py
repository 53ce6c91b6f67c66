"""Tiny worker modules for the executor tests (run as ``python -m workers_for_tests.<name>``).

They stand in for real CLM workers: no database, standard library only.
"""

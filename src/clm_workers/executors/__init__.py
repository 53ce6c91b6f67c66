"""Executors start and stop worker processes; they are blocking and know no database."""

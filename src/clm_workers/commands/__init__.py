"""The ``clm-workers`` subcommands that run a pool or look into one: start, status, jobs (and
submit), logs, stop.

Each module is imported only by the subcommand that needs it (``cli`` stays
quick to start, and ``--help`` imports neither trio nor the docker SDK).
"""

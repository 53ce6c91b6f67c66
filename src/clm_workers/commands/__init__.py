"""The ``clm-workers`` subcommands that run a pool or inspect one: start, status, stop.

Each module is imported only by the subcommand that needs it (``cli`` stays
quick to start and ``--help`` never imports trio or the docker SDK).
"""

"""``clm-workers bench``: every startup strategy on the same machine, same workers, same run.

Four strategies start real simulated workers (``python -m clm_workers.sim``)
through the real :class:`~clm_workers.executors.direct.DirectExecutor`:

1. ``sequential``: CLM 0.3, start one worker, poll its row every 0.5 s, then the next;
2. ``threadpool``: the original proposal, ``ThreadPoolExecutor(max_workers=10)``
   running start + 0.5 s polling per worker;
3. ``clm-workers``: :class:`~clm_workers.manager.WorkerPoolManager`, ``slot_mode="spawn"``;
4. ``clm-workers/reg``: the same with ``slot_mode="registration"``.

The baselines (1, 2) live in :mod:`.baselines`; they are yardsticks, not product code.
Modules: :mod:`.model` (cells, results), :mod:`.strategies` (one run of each),
:mod:`.machine` (machine facts and the spawn cost), :mod:`.runner` (the
interleaved plan), :mod:`.summary` (statistics and targets), :mod:`.output`
(markdown, JSON) and :mod:`.plot` (the PNG, needs the ``bench`` extra).
The command line enters through :func:`.runner.run_bench`.
"""


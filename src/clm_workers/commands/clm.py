"""``clm-workers clm ARGS...``: CLM's own command line, in this process, on clm-workers' pools.

``clm-workers clm build course.xml`` is ``clm build course.xml`` with
:func:`clm_workers.clm.install` done first: every pool CLM's build starts is
a clm-workers pool.  Everything else (arguments, output, logging, exit code)
is CLM's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..clm.installed import DISTRIBUTION, installed_clm

EXIT_BAD_INPUT = 2


def run_clm(args: Sequence[str]) -> int:
    """Run CLM's ``clm`` with ``args``; its exit code (2, with one line, when CLM is not installed)."""
    main = installed_clm().console_script("clm")
    if main is None:
        print(f"clm-workers: error: clm: CLM is not installed here ({sys.executable}); expected "
              f"the {DISTRIBUTION} package: pip install '{DISTRIBUTION}[notebook,plantuml]'",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from ..clm import install

    install()
    try:
        main(list(args), prog_name="clm")
    except SystemExit as exc:  # click ends every run so
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return 0

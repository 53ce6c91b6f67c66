"""``python -m clm_workers``: the ``clm-workers`` command."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still starting the command
    sys.exit(130)

sys.exit(main())

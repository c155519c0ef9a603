"""``python -m adapterhub.cli ...`` (e.g. under ``torchrun``): the same as the ``adapterhub`` command."""

import sys

from adapterhub.cli import main

sys.exit(main())

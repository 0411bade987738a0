"""``python -m corrmm.cli`` is the same as ``python -m corrmm`` and the ``corrmm`` command."""
import sys

from . import main

sys.exit(main())

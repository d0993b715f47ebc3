"""``python -m control.cli``: the same as the ``imctl`` script."""

import sys

from control.cli.entry import main

sys.exit(main())

import sys

from load.gen.cli import main

sys.exit(main())

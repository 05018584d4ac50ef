"""`python -m kerneld ...` is the `kerneld` command (see kerneld.cli)."""

import sys

from kerneld.cli import main

sys.exit(main())

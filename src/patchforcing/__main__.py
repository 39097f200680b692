"""`python -m patchforcing ...` (what `torchrun -m patchforcing train ...` runs)."""

import sys

from patchforcing.cli import main

sys.exit(main())

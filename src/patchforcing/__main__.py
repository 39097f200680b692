"""`python -m patchforcing ...` (what `torchrun -m patchforcing train ...` runs)."""

import sys

from patchforcing.commands import main

sys.exit(main())

"""`python -m patchforcing ...` (what `torchrun -m patchforcing train ...` runs)."""

from patchforcing.commands import console_main

console_main()

"""`python -m trainlab ...` is the same as the `trainlab` console script (torchrun uses this form)."""

from trainlab.cli import main

main()

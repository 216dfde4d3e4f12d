"""`python -m diffsolve ...` runs the `diffsolve` command line."""
import sys

from diffsolve.cli import main

sys.exit(main())

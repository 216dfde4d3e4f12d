"""`python -m diffsolve ...` runs the `diffsolve` command line."""
import sys

from .cli import main

sys.exit(main())

"""`python -m petcd` runs the server, like the `petcd` console script."""

import sys

from petcd.cli.main import main

sys.exit(main())

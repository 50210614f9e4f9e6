"""`python -m meshplug`: the same as the `meshplug` console command."""

import sys

from meshplug import cli

sys.exit(cli.main())

"""``python -m bayesprompt`` runs the command line."""

import sys

from bayesprompt.cli import main

sys.exit(main())

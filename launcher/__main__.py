"""``python3 -m launcher`` is the ``faramesh-sandbox`` command."""

import sys

from launcher.cli import main

sys.exit(main())

"""``python3 -m launcher`` is the ``faramesh-sandbox`` command."""

import sys

from launcher.import_path import drop_working_directory

drop_working_directory()

from launcher.cli import main  # noqa: E402 - after the working directory left sys.path

sys.exit(main())

"""``python -m akeeba_backupd``: the same as the ``akeeba-backupd`` console script."""

import sys

from akeeba_backupd.cli import main

sys.exit(main())

"""python -m zapckpt: the `zap` command (zapckpt/client.py)."""

import sys

from zapckpt.client import main

sys.exit(main())

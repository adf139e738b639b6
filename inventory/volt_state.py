#!/usr/bin/env python3
"""Dynamic inventory: the instance recorded in .volt/state.json (or $VOLT_DIR), as group `volt`."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from volt_ansible.inventory import build, print_inventory  # noqa: E402

if __name__ == "__main__":
    volt_dir = Path(os.environ.get("VOLT_DIR") or ROOT / ".volt").absolute()
    sys.exit(print_inventory(build(volt_dir), sys.argv[1:]))

"""The import contracts of pyproject.toml ([tool.importlinter]) hold.

poisonjax's layers (a module imports only from the layers below it) and no
import cycle inside a package, checked by `lint-imports` from the sources
alone (nothing is imported), in a second or two.
"""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_hold():
  lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
  lint = lint or shutil.which("lint-imports")
  assert lint, "no lint-imports: install the dev extra (pip install -e '.[dev]')"
  res = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
  assert "0 broken" in res.stdout

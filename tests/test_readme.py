"""README's methods table is generated from the configs; it must not drift from them."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_methods_table_matches_configs():
  table = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "methods_table.py")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
  assert table in open(os.path.join(ROOT, "README.md")).read()

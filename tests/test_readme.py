"""The README and docs/ say what the code does: links, layout, commands, demo output.

The fast tests check that every relative link in README.md and docs/*.md
(and docs/results/README.md) names an existing file, that every path in the
README's layout exists, and that the README's test command is the one
.ci/run runs. The slow one runs `poisonjax demo` as a user does and fails
when its output differs from the README's demo block.
"""

import os
import re
import subprocess
import sys

import pytest

from train_common import ROOT

README = os.path.join(ROOT, "README.md")
TEST_COMMAND = ".venv/bin/python -m pytest -q"
DEMO_MARK = "<!-- demo-output"
# The one field of the demo's output that differs run to run: the wall time
# on its last line ("plot: runs/demo/demo.png   wall time: 219s").
WALL_TIME = re.compile(r"wall time: \d+s")
# TensorFlow's start-up notices (cli.quiet_tensorflow_start keeps them out).
TF_NOTICES = ("Could not find cuda drivers", "oneDNN custom operations",
              "absl::InitializeLog", "cpu_feature_guard", "cudart_stub")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _docs():
  docs = os.path.join(ROOT, "docs")
  pages = [README, os.path.join(docs, "results", "README.md")]
  pages += [os.path.join(docs, f) for f in sorted(os.listdir(docs)) if f.endswith(".md")]
  return pages


def _without_code(text):
  """The text outside fenced code blocks and inline code spans."""
  text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
  return re.sub(r"`[^`\n]*`", "", text)


def _fenced_blocks(text):
  """(line index where the block starts, its lines) of each ``` block."""
  lines, blocks, start = text.splitlines(), [], None
  for i, line in enumerate(lines):
    if line.startswith("```"):
      if start is None:
        start = i
      else:
        blocks.append((start, lines[start + 1:i]))
        start = None
  return blocks


def test_relative_links_name_existing_files():
  missing = []
  for page in _docs():
    for target in _LINK.findall(_without_code(_read(page))):
      if re.match(r"^[a-z]+:", target) or target.startswith("#"):
        continue  # A web address, or an anchor on the same page.
      path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
      if not os.path.exists(path):
        missing.append(f"{os.path.relpath(page, ROOT)}: {target}")
  assert not missing, missing


def test_readme_layout_names_existing_paths():
  text = _read(README)
  layout = text[text.index("## Layout"):]
  start, lines = _fenced_blocks(layout)[0]
  paths = [l.split()[0] for l in lines if l and not l.startswith(" ")]
  assert len(paths) > 10, paths
  missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
  assert not missing, f"README layout names paths that do not exist: {missing}"


def test_readme_first_commands_are_the_demo_and_the_ci_test_command():
  text = _read(README)
  _, first = _fenced_blocks(text)[0]
  commands = [l for l in first if l and not l.startswith("#")]
  assert "poisonjax demo" in commands[0], commands
  assert commands[1].endswith(TEST_COMMAND), commands
  ci = _read(os.path.join(ROOT, ".ci", "run")).splitlines()
  assert TEST_COMMAND in ci, "the README's test command is not .ci/run's"


def readme_demo_block():
  """The README's demo block: the fenced block after the demo-output mark."""
  text = _read(README)
  after = text[text.index(DEMO_MARK):]
  return "\n".join(_fenced_blocks(after)[0][1])


@pytest.mark.slow
def test_readme_demo_block_is_what_the_demo_prints(tmp_path):
  """`poisonjax demo` as the README runs it, from an empty cache (~5-10 min).

  It runs in an empty directory, so its default --workdir is runs/demo as
  in the README. Its output must end with the README's block, equal line
  for line once the wall time (WALL_TIME) is set aside; and neither stream
  may hold a TensorFlow start-up notice. One CPU device, as a user has.
  """
  env = dict(os.environ, POISONJAX_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  for name in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL"):  # The CLI's own defaults.
    env.pop(name, None)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-m", "poisonjax.cli", "demo"],
                        cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for notice in TF_NOTICES:
    assert notice not in proc.stdout + proc.stderr, notice
  norm = lambda s: WALL_TIME.sub("wall time: <seconds>s", s).rstrip().splitlines()
  want, got = norm(readme_demo_block()), norm(proc.stdout)
  tail = got[-len(want):]
  diff = [f"README: {w!r}\n  demo: {g!r}" for w, g in zip(want, tail) if w != g]
  assert tail == want, "the README's demo block differs from the demo's output:\n" + \
      "\n".join(diff or [proc.stdout[-3000:]])

"""Run the shell commands of README.md's "Using it from C" section, as written.

They run in a temporary directory that stands for the checkout root the
README assumes: a copy of csrc/ and VERSION, and app.c, the section's ```c
block as written (the README tells the reader to save it as app.c).  HOME is
that directory too, so `make -C csrc install PREFIX=$HOME/.local` installs
into it.  First app.c is compiled alone, against the checkout's header, with
-std=c11 -Wall -Wextra -pedantic -Werror: the program a reader copies is
clean C11.  Then the commands: the lines of the section's ```sh blocks, in
order, then its inline `cc ...` commands; each must succeed as a whole (a
failure left of `&&` too), or the run stops there.  `python` in them is the
interpreter running this script (its folder goes first on PATH), which must
have pmem_metrics installed.

    python3 .ci/readme_c.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Using it from C"


def section(readme: str) -> list[str]:
    lines = readme.splitlines()
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
    return lines[start + 1 : end]


def blocks(lines: list[str], lang: str) -> list[list[str]]:
    """The fenced blocks of *lang*, each as its lines."""
    found: list[list[str]] = []
    block: list[str] | None = None
    for line in lines:
        if block is None and line.strip() == f"```{lang}":
            block = []
        elif block is not None and line.strip() == "```":
            found.append(block)
            block = None
        elif block is not None:
            block.append(line)
    return found


def prose(lines: list[str]) -> list[str]:
    """The lines outside fenced blocks."""
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def main() -> int:
    lines = section((REPO / "README.md").read_text())
    (example,) = blocks(lines, "c")
    commands = [line for block in blocks(lines, "sh") for line in block if line.strip()]
    commands += re.findall(r"`(cc [^`]+)`", " ".join(prose(lines)))
    if not any("pkg-config" in c for c in commands):
        raise SystemExit(f"README.md: no pkg-config command under {SECTION!r}")

    # Each command grouped, so that its status is the whole line's (a comment
    # at its end included), then checked.
    strict = "cc -std=c11 -Wall -Wextra -pedantic -Werror -Icsrc -c app.c -o app-strict.o"
    script = ["set -uo pipefail", f"printf '+ %s\\n' '{strict}'", strict + " || exit 1"]
    for command in commands:
        quoted = "'" + command.replace("'", "'\\''") + "'"
        script += [
            f"printf '+ %s\\n' {quoted}",
            f"{{ {command}",
            f"}} || {{ status=$?; printf 'README line failed (status %s): %s\\n' $status {quoted}; "
            "exit 1; }",
        ]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "csrc", root / "csrc", ignore=shutil.ignore_patterns("build"))
        shutil.copy(REPO / "VERSION", root / "VERSION")
        (root / "app.c").write_text("\n".join(example) + "\n")
        (root / "readme.sh").write_text("\n".join(script) + "\n")
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        env = {**os.environ, "HOME": str(root), "PATH": path}
        return subprocess.run(["bash", "readme.sh"], cwd=root, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

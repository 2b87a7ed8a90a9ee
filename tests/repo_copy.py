"""A copy of the repository's tracked files in a new git repository, for tests that run DVC."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]


def dvc_env(clone: Path) -> dict:
    """The test's Python first on PATH (DVC runs `python`), importing the clone's own package."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": path, "PYTHONPATH": str(clone)}


def run_in(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd`` in the copy; a failure shows its output."""
    done = subprocess.run(cmd, cwd=cwd, env=dvc_env(cwd), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def tracked_copy(clone: Path) -> Path:
    """Copy the working tree's tracked files (as they are now, edits included) into ``clone``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    return clone


def commit_copy(clone: Path) -> Path:
    """Make the copy a git repository of one commit, without the original's dvc.lock."""
    (clone / "dvc.lock").unlink(missing_ok=True)
    run_in(["git", "init", "-q"], clone)
    run_in([*GIT, "add", "-A"], clone)
    run_in([*GIT, "commit", "-qm", "clone"], clone)
    return clone

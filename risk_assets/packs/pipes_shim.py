"""Run a migrated cron script unchanged under Dagster Pipes: ``python -m risk_assets.packs.pipes_shim
script.py``.

The script knows nothing of Dagster. This shim opens the Pipes session the ``Pack`` component
started, runs the script with the same interpreter, forwards every line it prints (stdout and
stderr) to the run log as it comes, and exits with the script's exit code, so a non-zero exit
fails the Dagster run exactly as it used to fail the cron job.
"""

from __future__ import annotations

import os
import subprocess
import sys

from dagster_pipes import open_dagster_pipes


def main(argv: list[str]) -> int:
    script = argv[1]
    with open_dagster_pipes() as pipes:
        pipes.log.info(f"running {script} (pid {os.getpid()})")
        proc = subprocess.Popen(
            [sys.executable, script, *argv[2:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            pipes.log.info(f"[{os.path.basename(script)}] {line.rstrip()}")
        code = proc.wait()
        if code != 0:
            pipes.log.error(f"{script} exited with code {code}")
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))

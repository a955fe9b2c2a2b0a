"""Deploy the job scripts to EMR: the scripts, the bootstrap action and the ``--py-files`` zip.

    uv run python -m near_assets.spark_jobs.deploy build-zip dist/platform.zip
    EMR_SCRIPTS_S3=s3://bucket/platform/jobs/ uv run python -m near_assets.spark_jobs.deploy deploy

Runs on the Dagster side only (it imports ``resources.spark``); it is not a job script.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from near_assets.spark_jobs import JOB_SCRIPTS, JOBS_DIR
from resources.spark import SparkResource

PACKAGE = JOBS_DIR.parent
BOOTSTRAP = PACKAGE.parent / "deploy" / "emr" / "bootstrap.sh"
"""EMR bootstrap action (every node): Python 3.11 and the libraries the job scripts import."""


PACKAGE_DATA = ("*.py", "*.json")
"""What the zip takes from each package: modules and the data they read as package resources
(``near_assets/science/home_calibration.json``, the home model's calibration table)."""


def build_py_files(dest: str | os.PathLike[str]) -> Path:
    """Zip what the cluster imports: the ``near_assets`` package (modules and package data)
    and ``dagster_pipes``."""
    import dagster_pipes

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    roots = [PACKAGE, Path(dagster_pipes.__file__).parent]
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for root in roots:
            paths = {p for pattern in PACKAGE_DATA for p in root.rglob(pattern)}
            for path in sorted(paths):
                if "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(root.parent).as_posix())
    return dest


def deploy_scripts(
    spark: SparkResource, zip_path: str | os.PathLike[str] | None = None
) -> list[str]:
    """Upload the job scripts, the bootstrap action and the ``--py-files`` zip to S3."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = build_py_files(zip_path or Path(tmp, "platform.zip"))
        return spark.upload([*JOB_SCRIPTS, BOOTSTRAP], archive)


def main(argv: Sequence[str] | None = None) -> int:
    """``deploy`` (to ``EMR_SCRIPTS_S3``) | ``build-zip PATH``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m near_assets.spark_jobs.deploy", description=main.__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("deploy", help="upload job scripts, bootstrap and zip to EMR_SCRIPTS_S3")
    build = sub.add_parser("build-zip", help="build the --py-files zip locally")
    build.add_argument("path", nargs="?", default="dist/platform.zip")
    args = parser.parse_args(argv)
    if args.command == "build-zip":
        print(build_py_files(args.path))
    else:
        for uri in deploy_scripts(SparkResource.from_env()):
            print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one ``main()`` of the dagster-pipes job scripts (shipped in the ``--py-files`` zip).

A job script parses its arguments, runs with a Pipes log, reports its summary as a custom
message and prints a short JSON line to stderr (in the step's stderr on EMR)::

    def main(argv=None) -> int:
        return pipes_main(parse_args, run, argv, brief=lambda s: {"seconds": s["seconds"]})

Pipes parameters come from environment variables (local subprocess, EMR Serverless) or from
``--dagster-pipes-context/--dagster-pipes-messages`` arguments (EMR steps); on S3 the context is
read and messages written with boto3. Run without Dagster, the script just prints its summary.
Imports ``dagster_pipes`` only, never ``dagster``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def pipes_io(loader: Any) -> tuple[Any, Any]:
    """Context loader and message writer for the params ``loader`` found (None: the defaults)."""
    from dagster_pipes import PipesS3ContextLoader, PipesS3MessageWriter

    on_s3_ctx = "bucket" in loader.load_context_params()
    on_s3_msg = "bucket" in loader.load_messages_params()
    if not (on_s3_ctx or on_s3_msg):
        return None, None
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    return (
        PipesS3ContextLoader(client) if on_s3_ctx else None,
        PipesS3MessageWriter(client, interval=5) if on_s3_msg else None,
    )


def open_pipes():
    """Open dagster-pipes from CLI arguments (EMR steps) or environment variables (elsewhere)."""
    from dagster_pipes import PipesCliArgsParamsLoader, PipesEnvVarParamsLoader, open_dagster_pipes

    cli = PipesCliArgsParamsLoader()
    loader = cli if cli.is_dagster_pipes_process() else PipesEnvVarParamsLoader()
    if not loader.is_dagster_pipes_process():
        return open_dagster_pipes()
    context_loader, message_writer = pipes_io(loader)
    return open_dagster_pipes(
        params_loader=loader, context_loader=context_loader, message_writer=message_writer
    )


def pipes_main(
    parse_args: Callable[[Sequence[str] | None], Any],
    run: Callable[[Any, Callable[[str], None]], Mapping[str, Any]],
    argv: Sequence[str] | None = None,
    brief: Callable[[Mapping[str, Any]], Any] = dict,
) -> int:
    """``run(parse_args(argv), log)`` inside Pipes; its summary reported as a custom message and
    ``brief(summary)`` printed to stderr as JSON. Returns the exit code (0)."""
    args = parse_args(argv)
    with open_pipes() as pipes:
        summary = run(args, pipes.log.info)
        pipes.report_custom_message(summary)
    print(json.dumps(brief(summary), default=str), file=sys.stderr)
    return 0


def load_spec(spark: Any, arg: str) -> dict[str, Any]:
    """A job spec: inline JSON, or ``@<uri>`` of a JSON object the orchestrator wrote (a
    backfill's spec outgrows EMR's step-argument limit), read through Spark's file systems."""
    if not arg.startswith("@"):
        return json.loads(arg)
    rows = spark.read.text(arg[1:], wholetext=True).collect()
    return json.loads("".join(r["value"] for r in rows))

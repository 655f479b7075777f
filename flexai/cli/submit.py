"""``flexai submit [OPTIONS] -- CMD``, ``flexai jobs`` and ``flexai cancel JOB``: run a
command in a slice on the pool's chosen node, list the pool's jobs, cancel one.

``submit`` streams the job's stdout and stderr here and exits with its exit status; Ctrl-C
cancels it on its node. With no pool on this machine it starts the embedded one (a local
head and agent; ``flexai pool down`` stops it). This module only wires flexai.pool.client to
the command line: it must never judge a value itself.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from .._ffi import BadValueError, FlexaiError
from ..spec import format_bytes, variable
from ._output import EXIT_BAD_VALUE, EXIT_FAILURE, columns, error, fail, warn


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``submit``, ``jobs`` and ``cancel`` to the ``flexai`` parser."""
    s = sub.add_parser("submit", help="run a command in a slice somewhere in the pool",
                       usage="flexai submit [--gpu-memory SIZE] [--gpu-compute PERCENT] "
                             "[--priority P] [--gpu-model NAME] [--local-only] [--remote-ok] "
                             "-- CMD [ARGS...]",
                       description="Run CMD inside a slice on the node the pool's policy "
                                   "chooses (this one when it fits), stream its output here "
                                   "and exit with its status. A job that does not fit now "
                                   "waits in the queue. Ctrl-C cancels it. With no pool "
                                   "running, a local one is started (stop it with flexai pool "
                                   "down).")
    # the options flexai run has too keep their names from the library's table
    s.add_argument(variable("gpu_memory").option, dest="gpu_memory", metavar="SIZE",
                   help=f"GPU memory quota (e.g. {variable('gpu_memory').example})")
    s.add_argument(variable("gpu_compute").option, dest="gpu_compute", metavar="PERCENT",
                   type=_percent, help="compute share of one GPU, 1..100 (default 100 with a "
                                       "GPU)")
    s.add_argument(variable("priority").option, dest="priority", default="normal",
                   metavar="P", help="high, normal, low or best-effort (default normal)")
    s.add_argument("--gpu-model", metavar="NAME", action="append",
                   help="accept only this GPU model (repeatable; see flexai pool status)")
    s.add_argument("--gpus", type=int, metavar="N",
                   help="0: CPU only; 1: a slice of one GPU (default with memory/compute); "
                        "more: whole GPUs on one node")
    s.add_argument("--local-only", action="store_true",
                   help="run on this machine's node only (wait rather than go remote)")
    s.add_argument("--remote-ok", action="store_true",
                   help="on a node without a GPU: run CMD here, its CUDA driver calls going to "
                        "a remote slice on the GPU node the pool chose (see docs/remote.md)")
    s.add_argument("--env", metavar="KEY=VALUE", action="append", default=[],
                   help="set a variable in the job's environment (repeatable)")
    s.add_argument("--detach", action="store_true",
                   help="print the job id and return at once (see flexai jobs)")
    s.add_argument("--address", metavar="HOST:PORT", help="the pool (default: this machine's)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    s.set_defaults(func=submit_main, parser=s)

    j = sub.add_parser("jobs", help="the pool's jobs: queued, running, finished, and where",
                       description="List the pool's jobs (oldest first) with their state, "
                                   "node, GPUs and exit status.")
    j.add_argument("--json", action="store_true", help="print the records as JSON")
    j.add_argument("--address", metavar="HOST:PORT", help="the pool (default: this machine's)")
    j.set_defaults(func=jobs_main)

    c = sub.add_parser("cancel", help="cancel a job of the pool",
                       description="Cancel jobs: a queued one is dropped, a running one "
                                   "stopped on its node (SIGTERM, grace, SIGKILL).")
    c.add_argument("jobs", nargs="+", metavar="JOB", help="job ids, e.g. job-3")
    c.add_argument("--address", metavar="HOST:PORT", help="the pool (default: this machine's)")
    c.set_defaults(func=cancel_main)


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percent 1..100 (e.g. 30)")
    return value


def _env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadValueError(f"--env {item!r}: expected KEY=VALUE (e.g. --env SEED=1)")
        out[key] = value
    return out


def exit_status(record: dict[str, Any]) -> int:
    """The exit status ``flexai submit`` returns for a job's final record."""
    rc = record.get("returncode")
    if record["state"] in ("exited", "killed", "cancelled", "evicted") and rc is not None:
        return rc if rc >= 0 else 128 - rc
    if record["state"] == "cancelled":
        return 128 + signal.SIGINT
    if record["state"] == "failed" and "No such file" in (record.get("reason") or ""):
        return 127
    return EXIT_FAILURE


def submit_main(args: argparse.Namespace) -> int:
    """Submit, stream, return the job's exit status."""
    from ..pool import client

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        args.parser.error("missing the command to run, e.g. flexai submit --gpu-memory 8GiB "
                          "-- python train.py")
    try:
        had_pool = client.this_node() is not None or args.address is not None
        job = client.submit(command, gpu_memory=args.gpu_memory, gpu_compute=args.gpu_compute,
                            priority=args.priority, gpu_model=args.gpu_model, gpus=args.gpus,
                            local_only=args.local_only, env=_env(args.env), cwd=os.getcwd(),
                            address=args.address, remote_ok=args.remote_ok)
    except FlexaiError as exc:
        return fail(exc)
    if not had_pool and client.this_node() is not None:
        warn(f"started a local pool (embedded) in {client.pool_dir()}; stop it with "
             "`flexai pool down`")
    if args.detach:
        print(job.id)
        return 0
    return _follow(job)


def _follow(job: Any) -> int:
    from ..pool.client import JobLostError

    def on_state(record: dict[str, Any]) -> None:
        if record["state"] == "queued":
            warn(f"{job.id} queued: {record['wait_reason'] or 'waiting for capacity'}")
        elif record["state"] == "running" and record.get("wait_reason"):
            warn(f"{job.id} started on {record['node']}")

    try:
        try:
            record = job.stream(sys.stdout.buffer, sys.stderr.buffer, on_state=on_state)
        except KeyboardInterrupt:
            warn(f"{job.id}: cancelling (Ctrl-C again to leave it running)")
            job.cancel()
            record = job.wait(timeout=30)
            warn(f"{job.id} cancelled")
            return 128 + signal.SIGINT
    except JobLostError as exc:
        return error(exc, EXIT_FAILURE)
    except (FlexaiError, TimeoutError) as exc:
        return error(exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    if record["state"] in ("failed", "lost", "evicted") or (
            record["state"] == "cancelled" and record.get("reason")):
        warn(f"{job.id} {record['state']}: {record.get('reason') or 'no reason given'}")
    return exit_status(record)


def jobs_main(args: argparse.Namespace) -> int:
    """``flexai jobs``."""
    from ..pool import client

    try:
        records = client.jobs(args.address)
    except FlexaiError as exc:
        return fail(exc)
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    rows = [["JOB", "STATE", "NODE", "GPUS", "PRIORITY", "MEMORY", "COMPUTE", "EXIT", "AGE",
             "COMMAND"]]
    now = time.time()
    for r in records:
        state = r["state"]
        if state == "evicted" and r.get("reason", "").startswith("evicted by "):
            state = r["reason"].split(" (")[0]  # "evicted by job-7": its owner sees why
        rows.append([r["id"], state, r["node"] or "-",
                     ",".join(map(str, r["gpus"])) or "-", r["priority"],
                     format_bytes(r["memory"]) if r["memory"] else "-",
                     f"{r['compute']}%" if r["compute"] else "-",
                     "-" if r["returncode"] is None else str(r["returncode"]),
                     f"{now - r['submitted_at']:.0f}s", " ".join(r["argv"])[:60]])
    print(columns(rows))
    return 0


def cancel_main(args: argparse.Namespace) -> int:
    """``flexai cancel JOB...``."""
    from ..pool import client

    status = 0
    for job_id in args.jobs:
        try:
            client.cancel(job_id, args.address)
            print(f"{job_id}: cancelled")
        except BadValueError as exc:
            status = error(exc, EXIT_BAD_VALUE)
        except FlexaiError as exc:
            return fail(exc)
    return status


def main(args: argparse.Namespace) -> int:
    """Run the chosen command."""
    return int(args.func(args))

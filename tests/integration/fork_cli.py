"""Run many ``orbitfl`` command lines as real processes, paying the import time once.

Reads a JSON list of ``{"argv": [...], "env": {...}}`` on stdin; imports the CLI and both daemons
once; then, per command line, forks a child that sets ``env`` and runs ``orbitfl.cli.main(argv)``
with its own stderr, and exits as the ``orbitfl`` script would (an uncaught exception: its
traceback on stderr and exit 1; SystemExit: its code). Prints a JSON list of
``{"rc": int, "stderr": str}``. A config error is found in the first second of start-up, so the
per-case cost is a fork, not an interpreter start with numpy, ONNX and ZeroMQ imports (about 2 s
each on the CI's cores).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

from orbitfl import cli
from orbitfl.agent import daemon as _agent  # noqa: F401 - imported before forking, on purpose
from orbitfl.ground import daemon as _ground  # noqa: F401


def run_one(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: one `orbitfl ...` process
            os.environ.update(env)
            os.dup2(err.fileno(), 2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # stdout is the parent's JSON answer
            sys.stderr = os.fdopen(2, "w", buffering=1)
            try:
                rc = cli.main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            sys.stderr.flush()
            os._exit(rc)
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return {"rc": os.waitstatus_to_exitcode(status), "stderr": text}


def main() -> None:
    cases = json.load(sys.stdin)
    json.dump([run_one(list(c["argv"]), dict(c.get("env", {}))) for c in cases], sys.stdout)


if __name__ == "__main__":
    main()

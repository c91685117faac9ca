"""``isonyc code-server``: the Dagster code location as a long-lived gRPC server whose run workers are forked warm.

Point the webserver and the daemon at it with a ``grpc_server`` entry in the workspace (instead of
``python_module``, which makes them spawn Dagster's own server)::

    load_from:
      - grpc_server: {host: 127.0.0.1, port: 4266, location_name: isonyc}

Each run the daemon (or the UI) launches then costs well under a second of CPU to start instead of several seconds
(``benchmarks/bench_launch.py``). Restart the server after changing the code or the project config.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_PORT = 4266
DEFAULT_MODULE = "isonyc_dagster.defs.definitions"


def add_parser(sub: Any) -> None:
    """Register ``isonyc code-server`` on the main parser's sub-command set."""
    s = sub.add_parser(
        "code-server",
        help="serve the Dagster code location on gRPC, with run workers forked from a warm process",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    s.add_argument(
        "--module", default=DEFAULT_MODULE, help="the code location module (default: this project's)"
    )
    s.add_argument(
        "--working-directory",
        default=None,
        help="directory the module is imported from (default: the current one)",
    )
    s.set_defaults(func=cmd_code_server)


def server_argv(args: argparse.Namespace) -> list[str]:
    """The ``dagster api grpc`` options the server takes."""
    argv = ["-m", args.module, "--host", args.host, "--port", str(args.port)]
    return argv + (["--working-directory", args.working_directory] if args.working_directory else [])


def cmd_code_server(args: argparse.Namespace) -> int:
    from isonyc_dagster.defs.codeserver import main

    main(server_argv(args))
    return 0

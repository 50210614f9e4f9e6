"""`meshplug run PLUGIN.wasm --upstream URL`: try one plugin locally in front of an app, no containers.

Builds an agent config in memory (one listener, one cluster for the upstream, the plugin from a local file)
and runs the agent until Ctrl-C, like `wasme deploy envoy` without Docker. `meshplug run --envoy-config
envoy.yaml` runs an Envoy bootstrap instead (the one you would give Envoy: listeners, routes, clusters,
wasm filters and singletons; meshplug.agent.bootstrap).
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from pathlib import Path

from meshplug import errors
from meshplug.agent import bootstrap, config, runtime

HELP = "run one plugin locally in front of an upstream URL (the agent, no containers)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", type=Path, metavar="PLUGIN.wasm", nargs="?", help="the plugin module")
    parser.add_argument("--upstream", help="where requests go, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--envoy-config",
        type=Path,
        metavar="BOOTSTRAP",
        help="run this Envoy v3 bootstrap (no PLUGIN.wasm, no --upstream)",
    )
    parser.add_argument("--config", default="", help="plugin configuration (JSON text or any string)")
    parser.add_argument("--root-id", default="", help="the plugin's root id (AssemblyScript/C++ SDKs need it)")
    parser.add_argument("--name", default="", help="plugin name (default: the file name)")
    parser.add_argument("--listen", default="127.0.0.1:10000", help="ADDRESS:PORT the proxy listens on")
    parser.add_argument("--admin", default="127.0.0.1:0", help="ADDRESS:PORT of the admin endpoint")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="plugin VM environment")
    parser.add_argument("--fail-strategy", default="FAIL_CLOSE", choices=["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"])
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _hostport(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise errors.ConfigError(f"{flag} {value!r}: expected ADDRESS:PORT")
    return host or "127.0.0.1", int(port)


def build_config(args: argparse.Namespace) -> config.AgentConfig:
    if args.envoy_config is not None:
        if args.module is not None or args.upstream:
            raise errors.ConfigError("--envoy-config runs the bootstrap as it is: give no PLUGIN.wasm or --upstream")
        return bootstrap.load(args.envoy_config)
    if args.module is None or not args.upstream:
        raise errors.ConfigError("give PLUGIN.wasm and --upstream URL (or --envoy-config BOOTSTRAP)")
    up = urllib.parse.urlsplit(args.upstream)
    if up.scheme != "http" or not up.hostname:
        raise errors.ConfigError(f"--upstream {args.upstream!r}: expected http://HOST[:PORT]")
    if not args.module.is_file():
        raise errors.ConfigError(f"{args.module}: no such file")
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.ConfigError(f"--env {item!r}: expected K=V")
        env[key] = value
    if args.config:
        try:
            configuration: object = json.loads(args.config)
        except ValueError:
            configuration = args.config  # not JSON: passed to the plugin verbatim
    else:
        configuration = ""
    address, port = _hostport(args.listen, "--listen")
    admin_address, admin_port = _hostport(args.admin, "--admin")
    raw = {
        "listeners": [{"name": "main", "address": address, "port": port, "cluster": "upstream"}],
        "clusters": [{"name": "upstream", "address": up.hostname, "port": up.port or 80}],
        "admin": {"address": admin_address, "port": admin_port},
        "plugins": [
            {
                "name": args.name or args.module.stem,
                "root_id": args.root_id,
                "module": {"file": str(args.module.resolve())},
                "configuration": configuration,
                "vm_env": env,
                "fail_strategy": args.fail_strategy,
            }
        ],
    }
    return config.parse(raw, base=Path.cwd())


def run(args: argparse.Namespace) -> int:
    return runtime.serve(build_config(args), log_level=args.log_level)

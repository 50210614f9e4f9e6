"""`meshplug operator`: run the WasmPlugin operator (kopf) with its module fetcher and module server.

Called by meshplug.cli. Credentials: ``--kubeconfig`` (else $KUBECONFIG, else in-cluster). The module server
listens on ``--module-listen`` and pods reach it as ``--module-host``:``--module-port`` (the Service).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from pathlib import Path

import kubernetes

from meshplug import fetch
from meshplug.controller import apply, handlers, reconcile
from meshplug.fetch import serve
from meshplug.render import model

HELP = "run the WasmPlugin operator: fetch, validate, render and apply plugins; serve modules"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    parser.add_argument("--module-listen", default="0.0.0.0:8080", help="module server bind address HOST:PORT")
    parser.add_argument(
        "--module-host",
        default="meshplug-modules.meshplug-system.svc.cluster.local",
        help="the module server's Service name as pods reach it",
    )
    parser.add_argument("--module-port", type=int, default=8080, help="the module server's Service port")
    parser.add_argument("--file-root", action="append", type=Path, default=[], help="allow file:// below this dir")
    parser.add_argument("--cache-dir", type=Path, help="module cache directory")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://127.0.0.1:8081/healthz")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kubeconfig = args.kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf logs in from the same file
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = kubernetes.client.ApiClient()
    options: dict[str, object] = {"file_roots": tuple(args.file_root)}
    if args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    fetcher = fetch.Fetcher(fetch.FetchOptions(**options))  # type: ignore[arg-type]
    token = os.environ.get("MESHPLUG_MODULE_TOKEN") or secrets.token_hex(24)
    host, _, port = args.module_listen.rpartition(":")
    server = serve.ModuleServer(fetcher.cache, token=token, host=host or "0.0.0.0", port=int(port))  # noqa: S104
    reconciler = reconcile.Reconciler(
        apply.Writer(api), fetcher, model.ModuleServer(host=args.module_host, port=args.module_port, token=token)
    )
    with server:
        try:
            handlers.run_operator(reconciler, namespaces=args.namespace, liveness_endpoint=args.liveness)
        finally:
            fetcher.close()
            api.close()
    return 0

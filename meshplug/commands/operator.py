"""`meshplug operator`: run the WasmPlugin operator (kopf) with its module fetcher and module server.

Called by meshplug.cli. Credentials: ``--kubeconfig`` (else $KUBECONFIG, else in-cluster). The module server
listens on ``--module-listen`` and pods reach it as ``--module-host``:``--module-port`` (the Service).
Prometheus metrics and /healthz on ``--metrics-listen`` (standby replicas serve them too). With
``--lease-namespace`` (default: $POD_NAMESPACE) only the replica holding the Lease reconciles.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

import kubernetes

from meshplug import fetch
from meshplug.commands import fetch as fetch_command
from meshplug.controller import apply, handlers, reconcile, signing
from meshplug.controller import metrics as metrics_mod
from meshplug.controller.delivery import agent as agent_delivery
from meshplug.fetch import serve
from meshplug.render import model

HELP = "run the WasmPlugin operator: fetch, validate, render and apply plugins; serve modules"
EPILOG = """\
WasmPlugin (meshplug.io/v1alpha1) takes Istio's WasmPlugin fields plus:
  dataPlane: istio | agent        istio (default): EnvoyFilter + ConfigMap on Istio sidecars;
                                  agent: pushed to meshplug's in-pod agent (Ready = every agent confirmed)
  pluginConfigSchema: {...}       JSON Schema that pluginConfig must satisfy (checked at admission)
      pluginConfigSchema: {type: object, required: [header], properties: {header: {type: string}}}
  matchRules: [...]               HTTP only: run only where a rule matches (hosts AND paths), with the
                                  first matching rule's pluginConfig (istio plane) or the plugin's own
      matchRules:
        - hosts: [api.example.com, "*.example.org"]
          pluginConfig: {header: x-api}
        - paths: [{prefix: /v1/}, {exact: /healthz}]

  verificationKey: PEM            Istio's field: the module must be an oci:// image with a cosign signature
                                  under this key (tag or Sigstore bundle layout) for its manifest digest, else
                                  Ready=False SignatureInvalid and nothing is delivered (the last good stays)
Signature policy: --require-signatures refuses every module not signed under the plugin's verificationKey
or, for plugins without one, under a --trusted-key.

SIGTERM/SIGINT: stops within a few seconds, releasing the leader Lease (a standby takes over at once).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
    parser.add_argument(
        "--insecure-registry", action="append", default=[], help="registry host[:port] reached over plain HTTP"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://127.0.0.1:8081/healthz")
    parser.add_argument("--metrics-listen", default="0.0.0.0:9090", help="/metrics and /healthz HOST:PORT ('' = off)")
    parser.add_argument(
        "--agent-token-secret",
        default=agent_delivery.DEFAULT_AGENT_TOKEN_SECRET,
        help="Secret (in each plugin's namespace, key 'token') authenticating pushes to the agents",
    )
    parser.add_argument(
        "--reresolve-interval", type=float, default=300.0, help="re-check mutable tags/urls every N seconds (0 = off)"
    )
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the leader-election Lease (default $POD_NAMESPACE; unset: no election, one replica)",
    )
    parser.add_argument("--lease-duration", type=float, default=15.0, help="leader Lease duration in seconds")
    parser.add_argument(
        "--require-signatures",
        action="store_true",
        help="refuse modules without a cosign signature (under the plugin's verificationKey, else --trusted-key)",
    )
    parser.add_argument(
        "--trusted-key", type=Path, action="append", default=[], help="cosign public key (PEM) trusted by the policy"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kubeconfig = args.kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf logs in from the same file
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = kubernetes.client.ApiClient()
    reresolve = args.reresolve_interval if args.reresolve_interval > 0 else None
    options: dict[str, object] = {
        "file_roots": tuple(args.file_root),
        "reresolve_interval_s": reresolve,
        "allow_insecure_registries": tuple(args.insecure_registry),
    }
    if args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    fetcher = fetch.Fetcher(fetch.FetchOptions(**options))  # type: ignore[arg-type]
    token = os.environ.get("MESHPLUG_MODULE_TOKEN") or secrets.token_hex(24)
    host, _, port = args.module_listen.rpartition(":")
    server = serve.ModuleServer(fetcher.cache, token=token, host=host or "0.0.0.0", port=int(port))  # noqa: S104
    writer = apply.Writer(api)
    metrics = metrics_mod.Metrics()
    policy = signing.SignaturePolicy(
        required=args.require_signatures, trusted=tuple(fetch_command.public_keys(args.trusted_key))
    )
    reconciler = reconcile.Reconciler(
        writer,
        fetcher,
        model.ModuleServer(host=args.module_host, port=args.module_port, token=token),
        metrics=metrics,
        agent_token_secret=args.agent_token_secret,
        signature_policy=policy,
    )
    metrics_server = None
    if args.metrics_listen:
        mhost, _, mport = args.metrics_listen.rpartition(":")
        metrics_server = metrics_mod.MetricsServer(
            metrics,
            lambda: metrics.exposition(writer.requests()) + fetcher.metrics.exposition(),
            host=mhost or "0.0.0.0",  # noqa: S104
            port=int(mport),
        ).start()
    opts = handlers.Options(
        namespaces=tuple(args.namespace),
        liveness_endpoint=args.liveness,
        reresolve_s=reresolve,
        lease_namespace=args.lease_namespace or None,
        identity=f"{socket.gethostname()}-{os.getpid()}",
        lease_duration_s=args.lease_duration,
    )
    with server:
        try:
            code = handlers.run_operator(reconciler, opts)
        finally:
            reconciler.close()
            fetcher.close()
            api.close()
            if metrics_server is not None:
                metrics_server.stop()
    if code:
        print("meshplug operator: lost the leader Lease; exiting so a restart stands by", file=sys.stderr)
    return code

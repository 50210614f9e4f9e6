"""`meshplug operator`: run the WasmPlugin operator (kopf) with its module fetcher and module server.

Called by meshplug.cli. Credentials: ``--kubeconfig`` (else $KUBECONFIG, else in-cluster). The module server
listens twice: ``--module-tls-listen`` (HTTPS, for agents: their ServiceAccount token, checked by TokenReview)
and ``--module-listen`` (HTTP, signed URLs only, for Envoy's ``code.remote``); pods reach them as
``--module-host``:``--module-tls-port`` / ``--module-port`` (the Service). Every replica loads (or the first
creates) the identity Secret (`meshplug.controller.identity`) before anything else. Prometheus metrics and
/healthz on ``--metrics-listen`` (standby replicas serve them too). With ``--lease-namespace`` (default:
$POD_NAMESPACE) only the replica holding the Lease reconciles.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes

from meshplug import errors, fetch, limits
from meshplug.commands import fetch as fetch_command
from meshplug.controller import access, apply, handlers, identity, precompile, reconcile, signing
from meshplug.controller import metrics as metrics_mod
from meshplug.controller.delivery import proxies
from meshplug.fetch import serve
from meshplug.render import model

HELP = "run the WasmPlugin operator: fetch, validate, render and apply plugins; serve modules"
EPILOG = """\
WasmPlugin (meshplug.io/v1alpha1) takes Istio's WasmPlugin fields plus:
  dataPlane: istio | agent        istio (default): Istio's sidecars and gateways (Ready = every selected
                                  proxy loaded it, from istiod and the module server);
                                  agent: pushed to meshplug's in-pod agent (Ready = every agent confirmed)
  istioDelivery: native | configmap
                                  native: Istio's own TrafficExtension/WasmPlugin over ECDS (no pod changes);
                                  configmap: EnvoyFilter + ConfigMap mounted at pod admission by the webhook
                                  (unset: --istio-delivery)
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
or, for plugins without one, under a --trusted-key. A signed module's push carries the signature: the agent
verifies it again before loading (NACK signature_invalid otherwise). The --trusted-key keys are also copied into
every agent Secret (with none: "# meshplug: no trusted keys", and a warning when that removes keys) and injected
agents run with --trusted-keys on them: a module signed under any other key (a plugin's own verificationKey
included) is NACKed signature_untrusted, and pushed again on the backoff (the pod's Secret mount may not have a
new key yet). Chart values: signatures.require, signatures.trustedKeys; agent.requireSignatures injects agents
with --require-signatures (every pushed module must be signed under those keys, whatever the operator pushes).

SSRF guard (every connection of a module fetch, redirects and token realms included): link-local
(169.254.0.0/16, fe80::/10) and cloud-metadata addresses are always refused; loopback (127.0.0.0/8,
::1, 0.0.0.0/8) is refused unless --allow-loopback (local runs and the test bed only); --block-cidr
refuses more (repeatable, e.g. --block-cidr 10.0.0.0/8 for the cluster's own ranges). Chart values:
ssrf.allowLoopback, ssrf.blockCIDRs (the injected agents get the same).

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
    parser.add_argument(
        "--module-tls-listen", default="0.0.0.0:8443", help="module server HTTPS bind address HOST:PORT (agents)"
    )
    parser.add_argument("--module-tls-port", type=int, default=8443, help="the module server's HTTPS Service port")
    parser.add_argument("--file-root", action="append", type=Path, default=[], help="allow file:// below this dir")
    parser.add_argument("--cache-dir", type=Path, help="module cache directory")
    parser.add_argument(
        "--no-baseline-compile",
        dest="baseline_compile",
        action="store_false",
        help="agent plane: compile a new module optimized before its first push (default: baseline compiler "
        "first, the optimized artifact pushed when the background compile is done)",
    )
    parser.add_argument(
        "--extra-ca-file",
        type=Path,
        help="PEM CA certificates trusted beside the system roots for module origins and registries",
    )
    parser.add_argument(
        "--insecure-registry", action="append", default=[], help="registry host[:port] reached over plain HTTP"
    )
    parser.add_argument(
        "--allow-loopback",
        action="store_true",
        help="let module fetches reach loopback addresses (refused by default; local runs only)",
    )
    parser.add_argument(
        "--block-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="refuse module fetches to this network too (repeatable); link-local and metadata always are",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://127.0.0.1:8081/healthz")
    parser.add_argument("--metrics-listen", default="0.0.0.0:9090", help="/metrics and /healthz HOST:PORT ('' = off)")
    parser.add_argument(
        "--identity-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="the operator's own namespace, where it keeps its identity Secret (default $POD_NAMESPACE)",
    )
    parser.add_argument(
        "--identity-secret",
        default=identity.DEFAULT_IDENTITY_SECRET,
        help="the Secret the operator creates for its CA and URL signing key (shared by all replicas)",
    )
    parser.add_argument(
        "--owner-deployment", default="", help="the operator's Deployment: owner of the identity Secret"
    )
    parser.add_argument(
        "--agent-secret",
        default=identity.DEFAULT_AGENT_SECRET,
        help="the Secret the operator creates in each namespace with agents (push TLS and tokens)",
    )
    parser.add_argument(
        "--token-audience",
        default=identity.DEFAULT_AUDIENCE,
        help="audience of the agents' ServiceAccount tokens (the injected projected token's)",
    )
    parser.add_argument(
        "--allow-plaintext-push",
        action="store_true",
        help="push to agents over plain HTTP (agents with push.allow_plaintext; local runs only)",
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
        "--workers",
        type=int,
        default=limits.RECONCILE_WORKERS,
        help=f"reconciles run at once (default {limits.RECONCILE_WORKERS})",
    )
    parser.add_argument(
        "--istio-delivery",
        default="auto",
        choices=["auto", "native", "configmap"],
        help="istio data plane default: native (TrafficExtension/WasmPlugin), configmap (EnvoyFilter + ConfigMap), "
        "auto (native where the cluster serves extensions.istio.io)",
    )
    parser.add_argument(
        "--istiod-debug-url",
        action="append",
        default=[],
        help="istiod's debug endpoints (per replica; e.g. http://istiod.istio-system:15014): per-proxy status",
    )
    parser.add_argument("--istio-root-namespace", default="istio-system", help="Istio's mesh root namespace")
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
    stop = threading.Event()
    handlers.on_signals(stop)  # a SIGTERM during start-up stops it cleanly too
    api = _api_client(args)
    reresolve = args.reresolve_interval if args.reresolve_interval > 0 else None
    fetcher = fetch.Fetcher(_fetch_options(args, reresolve))
    writer = apply.Writer(api)
    trusted = tuple(fetch_command.public_keys(args.trusted_key))
    ident = identity.Identity(
        writer,
        namespace=args.identity_namespace or "",
        secret=args.identity_secret,
        agent_secret=args.agent_secret,
        owner_deployment=args.owner_deployment,
        plaintext_push=args.allow_plaintext_push,
        trusted_keys="".join(k.pem() for k in trusted).encode(),  # the agents' own list (their Secret)
    )
    try:
        ident.load()
    except errors.ApplyError as exc:
        raise errors.ConfigError(f"cannot load the identity Secret: {exc.message}") from None
    metrics = metrics_mod.Metrics()
    fetch_log = proxies.FetchLog()  # which pod downloaded which module (the istio plane's status)
    policy = signing.SignaturePolicy(required=args.require_signatures, trusted=trusted)
    # agent-plane modules, compiled once per tier
    precompiler = precompile.Precompiler(fetcher.cache.root / "compiled", tiered=args.baseline_compile)
    reconciler = reconcile.Reconciler(
        writer,
        fetcher,
        model.ModuleServer(
            host=args.module_host, port=args.module_port, token=ident.signing_key, agent_port=args.module_tls_port
        ),
        identity=ident,
        metrics=metrics,
        signature_policy=policy,
        precompiler=precompiler,
        istio_delivery=args.istio_delivery,
        istiod=proxies.Istiod(args.istiod_debug_url),
        fetch_log=fetch_log,
        root_namespace=args.istio_root_namespace,
        namespaces=tuple(args.namespace),
    )
    module_access = access.ModuleAccess(
        identity.Reviewer(writer, (args.token_audience,)),
        writer,
        cache_has=lambda sha256: fetcher.cache.blob_path(sha256).exists(),
        fetch_module=reconciler.fetch_module,
        granted=reconciler.agent.granted,
    )
    plain_host, plain_port = _listen(args.module_listen)
    tls_host, tls_port = _listen(args.module_tls_listen)
    servers = [
        serve.ModuleServer(
            fetcher.cache,
            signing_key=ident.signing_key,
            host=plain_host,
            port=plain_port,
            compiled_root=precompiler.root,
            on_request=fetch_log.record,
        ),
        serve.ModuleServer(
            fetcher.cache,
            signing_key=ident.signing_key,
            access=module_access,
            ssl_context=ident.server_context(*_names(args.module_host)),
            host=tls_host,
            port=tls_port,
            compiled_root=precompiler.root,
        ),
    ]
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
        workers=max(1, args.workers),
    )
    stop_identity = threading.Event()
    threading.Thread(
        target=ident.run, args=(stop_identity, lambda: metrics.leader), name="meshplug-identity-check", daemon=True
    ).start()
    for module_server in servers:
        module_server.start()
    try:
        code = handlers.run_operator(reconciler, opts, stop_flag=stop)
    finally:
        stop_identity.set()
        for module_server in servers:
            module_server.stop()
        reconciler.close()
        precompiler.close()
        fetcher.close()
        api.close()
        if metrics_server is not None:
            metrics_server.stop()
    if code:
        print("meshplug operator: lost the leader Lease; exiting so a restart stands by", file=sys.stderr)
    # Everything is stopped; what still runs are daemon threads abandoned on purpose (a push or a fetch blocked in
    # native code). The interpreter's finalization would stop them wherever they are and then collect objects they
    # still hold locks or SSL state of: a push blocked in a TLS handshake made it hang there. Exit here instead.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _api_client(args: argparse.Namespace) -> Any:
    kubeconfig = args.kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    config = kubernetes.client.Configuration()
    if kubeconfig is None:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    else:
        os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf logs in from the same file
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)  # type: ignore[no-untyped-call]
    # every reconcile worker and the pod cache's watches keep a connection (the client's default is 5 per CPU)
    config.connection_pool_maxsize = limits.API_CONNECTIONS
    return kubernetes.client.ApiClient(config)


def _fetch_options(args: argparse.Namespace, reresolve: float | None) -> fetch.FetchOptions:
    options: dict[str, object] = {
        "file_roots": tuple(args.file_root),
        "reresolve_interval_s": reresolve,
        "allow_insecure_registries": tuple(args.insecure_registry),
        "allow_loopback": args.allow_loopback,
        "blocked_cidrs": tuple(args.block_cidr),
    }
    if args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    if args.extra_ca_file is not None:
        options["extra_ca_file"] = args.extra_ca_file
    return fetch.FetchOptions(**options)  # type: ignore[arg-type]


def _listen(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - pods connect from outside


def _names(module_host: str) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses for the module server's certificate: the host pods use and its shorter forms."""
    try:
        ipaddress.ip_address(module_host)
    except ValueError:
        parts = module_host.split(".")
        names = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
        if "svc" in parts:  # a Service name: the cluster-domain form as well
            names.insert(0, ".".join(parts[: parts.index("svc") + 1]) + ".cluster.local")
        return list(dict.fromkeys(names)), []
    return [], [module_host]

"""`meshplug agent --config FILE` / `--envoy-config FILE`: run the in-pod agent (proxy + admin + push) from its
native config file or from an Envoy v3 static bootstrap (meshplug.agent.bootstrap reads the subset wasm
deployments use and refuses the rest with the field's path)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from meshplug import errors
from meshplug.agent import bootstrap, config, runtime, trust, workers

#: the environment variable that names the trusted keys file when --trusted-keys is not given
TRUSTED_KEYS_ENV = "MESHPLUG_TRUSTED_KEYS"
#: the environment variable that turns --require-signatures on (1, true, yes) when the flag is not given
REQUIRE_SIGNATURES_ENV = "MESHPLUG_REQUIRE_SIGNATURES"
HELP = "run the in-pod agent: reverse proxy with proxy-wasm plugins, admin and push endpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="agent config file (YAML or JSON)")
    source.add_argument(
        "--envoy-config", type=Path, help="an Envoy v3 static bootstrap (YAML or JSON) to run instead of Envoy"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--check", action="store_true", help="parse the config, print a summary and exit")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="worker processes accepting on the listeners, each with its own VMs (Envoy's --concurrency); "
        "shared data and queues are shared by all",
    )
    parser.add_argument(
        "--trusted-keys",
        type=Path,
        default=os.environ.get(TRUSTED_KEYS_ENV) or None,
        metavar="FILE",
        help="PEM public keys (cosign.pub files one after the other) that may sign pushed modules; a signed module "
        f"under another key is NACKed signature_untrusted (default ${TRUSTED_KEYS_ENV}; none: the push's key is "
        "trusted)",
    )
    parser.add_argument(
        "--require-signatures",
        action="store_true",
        default=os.environ.get(REQUIRE_SIGNATURES_ENV, "").lower() in ("1", "true", "yes"),
        help="refuse every pushed module without a cosign signature under one of --trusted-keys (NACK "
        f"signature_required), inline Lua included, whatever the operator pushes (default ${REQUIRE_SIGNATURES_ENV}; "
        "needs --trusted-keys)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a worker of `--concurrency N` (meshplug.agent.workers)


def load(args: argparse.Namespace) -> config.AgentConfig:
    cfg = bootstrap.load(args.envoy_config) if args.envoy_config is not None else config.load(args.config)
    trusted = args.trusted_keys.absolute() if args.trusted_keys is not None else None
    # a worker loads only the sets its parent accepted (the static config's among them): the parent applies the
    # requirement; the trusted keys each worker checks again
    required = bool(args.require_signatures) and not args.worker
    modules = dataclasses.replace(cfg.modules, trusted_keys=trusted, require_signatures=required)
    return dataclasses.replace(cfg, modules=modules)


def policy(cfg: config.AgentConfig) -> trust.Policy:
    """The signature policy as the agent loads it at start (ConfigError, exit 2: a trusted keys file missing or
    not a PEM bundle, or --require-signatures without one)."""
    path = cfg.modules.trusted_keys
    return trust.Policy(trust.TrustedKeys(path) if path else None, required=cfg.modules.require_signatures)


def check(cfg: config.AgentConfig) -> str:
    """What ``--check`` prints: the config's summary and the signature policy as the agent would load it at start
    (a missing, unreadable or non-PEM file is the same ConfigError, exit 2, that stops the start)."""
    singletons = f", {len(cfg.singletons)} singleton(s)" if cfg.singletons else ""
    return (
        f"config ok: {len(cfg.listeners)} listener(s), {len(cfg.clusters)} cluster(s), "
        f"{len(cfg.plugins)} plugin(s){singletons}, push {'on' if cfg.push else 'off'}; "
        f"signatures: {policy(cfg).describe()}"
    )


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    if args.check:
        print(check(cfg))
        return 0
    if args.worker:
        return workers.run_worker(cfg, args.worker, log_level=args.log_level)
    if args.concurrency < 1:
        raise errors.ConfigError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.concurrency > 1:
        source = args.envoy_config if args.envoy_config is not None else args.config
        return workers.serve(cfg, concurrency=args.concurrency, config_path=source, log_level=args.log_level)
    return runtime.serve(cfg, log_level=args.log_level)

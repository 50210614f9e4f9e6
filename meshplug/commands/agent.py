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
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a worker of `--concurrency N` (meshplug.agent.workers)


def load(args: argparse.Namespace) -> config.AgentConfig:
    cfg = bootstrap.load(args.envoy_config) if args.envoy_config is not None else config.load(args.config)
    if args.trusted_keys is None:
        return cfg
    return dataclasses.replace(cfg, modules=dataclasses.replace(cfg.modules, trusted_keys=args.trusted_keys.absolute()))


def check(cfg: config.AgentConfig) -> str:
    """What ``--check`` prints: the config's summary and the trusted keys as the agent would load them at start
    (a missing, unreadable or non-PEM file is the same ConfigError, exit 2, that stops the start)."""
    singletons = f", {len(cfg.singletons)} singleton(s)" if cfg.singletons else ""
    path = cfg.modules.trusted_keys
    if path is None:
        keys = f"trusted keys: none (--trusted-keys, ${TRUSTED_KEYS_ENV}): a signed push's own key is trusted"
    else:
        keys = trust.TrustedKeys(path).describe()
    return (
        f"config ok: {len(cfg.listeners)} listener(s), {len(cfg.clusters)} cluster(s), "
        f"{len(cfg.plugins)} plugin(s){singletons}, push {'on' if cfg.push else 'off'}; {keys}"
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

"""`meshplug agent --config FILE`: run the in-pod agent (proxy + admin + push) from a static config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from meshplug import errors
from meshplug.agent import config, runtime, workers

HELP = "run the in-pod agent: reverse proxy with proxy-wasm plugins, admin and push endpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="agent config file (YAML or JSON)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--check", action="store_true", help="parse the config, print a summary and exit")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="worker processes accepting on the listeners, each with its own VMs (Envoy's --concurrency); "
        "shared data and queues are shared by all",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a worker of `--concurrency N` (meshplug.agent.workers)


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if args.check:
        print(
            f"config ok: {len(cfg.listeners)} listener(s), {len(cfg.clusters)} cluster(s), "
            f"{len(cfg.plugins)} plugin(s), push {'on' if cfg.push else 'off'}"
        )
        return 0
    if args.worker:
        return workers.run_worker(cfg, args.worker, log_level=args.log_level)
    if args.concurrency < 1:
        raise errors.ConfigError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.concurrency > 1:
        return workers.serve(cfg, concurrency=args.concurrency, config_path=args.config, log_level=args.log_level)
    return runtime.serve(cfg, log_level=args.log_level)

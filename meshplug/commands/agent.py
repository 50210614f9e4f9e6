"""`meshplug agent --config FILE`: run the in-pod agent (proxy + admin + push) from a static config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from meshplug.agent import config, runtime

HELP = "run the in-pod agent: reverse proxy with proxy-wasm plugins, admin and push endpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="agent config file (YAML or JSON)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--check", action="store_true", help="parse the config, print a summary and exit")


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if args.check:
        print(
            f"config ok: {len(cfg.listeners)} listener(s), {len(cfg.clusters)} cluster(s), "
            f"{len(cfg.plugins)} plugin(s), push {'on' if cfg.push else 'off'}"
        )
        return 0
    return runtime.serve(cfg, log_level=args.log_level)

"""`meshplug status [PLUGIN] [-n NS | -A]`: what the operator reports for WasmPlugins, per plugin and per pod.

Reads the WasmPlugins' status from the Kubernetes API (kubectl's flags: ``--kubeconfig`` (else $KUBECONFIG, else
~/.kube/config, else in-cluster), ``--context``, ``-n``, ``-A``) and the pods each selects. Without PLUGIN: one
line per plugin (data plane, digest, Ready and its reason, pods ready/selected, age). With PLUGIN: its
conditions, then one line per selected pod: the digest it runs, its state and the reason the operator recorded
(an agent's NACK, an unreachable agent, a pod without the module volume); with ``spec.rollout``, where the canary
rollout stands, and each pod's digest is the one the rollout gives it. ``-o json|yaml`` prints the same as data.
Exit codes (`errors.exit_code_of`): 0, 1 when the named plugin is not Ready, 3 when it does not exist, 4 when the
API cannot be reached or refuses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from meshplug import errors, spec

HELP = "show WasmPlugins' status: Ready, digest, and per pod what runs and why not (kubectl-style flags)"
NOT_FOUND_EXIT = 3
API_EXIT = 4


class _ApiError(errors.MeshplugError):
    exit_code = API_EXIT
    reason = "api_unavailable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plugin", nargs="?", metavar="PLUGIN", help="one WasmPlugin: its conditions and pods")
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's, else 'default')")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", help="the kubeconfig context to use")
    parser.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")


def _client(args: argparse.Namespace) -> tuple[kubernetes.client.ApiClient, str]:
    """An API client and the default namespace of the chosen context."""
    path = args.kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    path = path or (Path.home() / ".kube" / "config")
    if path.is_file():
        try:
            contexts, current = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=str(path)
            )
            chosen = next((c for c in contexts if c["name"] == args.context), None) if args.context else current
            if args.context and chosen is None:
                raise errors.ConfigError(f"context {args.context!r} not in {path}")
            namespace = str(((chosen or {}).get("context") or {}).get("namespace") or "default")
            client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(path), context=args.context
            )
        except kubernetes.config.ConfigException as exc:
            raise errors.ConfigError(f"{path}: {exc}") from None
        return client, namespace
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        raise errors.ConfigError(f"no kubeconfig ({path} missing) and not inside a cluster") from None
    return kubernetes.client.ApiClient(), "default"


def _get(client: kubernetes.client.ApiClient, path: str, query: Mapping[str, str] | None = None) -> Any:
    """GET ``path`` as JSON; None for 404; `_ApiError` when the API refuses or cannot be reached."""
    config = client.configuration
    headers = {"Accept": "application/json"}
    for auth in config.auth_settings().values():
        if auth["in"] == "header" and auth["value"]:
            headers[auth["key"]] = auth["value"]
    url = config.host + path + (("?" + urllib.parse.urlencode(query)) if query else "")
    try:
        resp = client.call_api("GET", url, header_params=headers, _request_timeout=30)
        raw = resp.read()  # type: ignore[no-untyped-call]
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise _ApiError(f"GET {path}: {exc.status} {exc.reason}") from None
    except Exception as exc:  # urllib3's connection errors: the API cannot be reached
        raise _ApiError(f"cannot reach the Kubernetes API at {config.host}: {exc}"[:300]) from None
    if resp.status == 404:
        return None
    if resp.status >= 300:
        raise _ApiError(f"GET {path}: HTTP {resp.status}")
    return json.loads(raw)


def _condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def _age(obj: Mapping[str, Any]) -> str:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return "-"
    then = datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta, body, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    ready = _condition(obj, "Ready")
    pods = st.get("pods") or {}
    return {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "dataPlane": body.get("dataPlane") or spec.DataPlane.ISTIO.value,
        "url": body.get("url") or (body.get("wasm") or {}).get("url", ""),
        "digest": st.get("digest", ""),
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason", "") or ("Pending" if not st else ""),
        "message": ready.get("message", ""),
        "pods": f"{pods.get('ready', 0)}/{pods.get('total', 0)}" if pods else "-",
        "observedGeneration": st.get("observedGeneration"),
        "generation": meta.get("generation"),
        "age": _age(obj),
    }


def pod_digest(st: Mapping[str, Any], pod: str) -> str:
    """The digest a confirmed pod runs: the plugin's, or during a canary rollout (and after a rollback) the
    stable version's for every pod but the rollout's canaries (status.rollout)."""
    rollout = st.get("rollout") or {}
    stable = str((rollout.get("stable") or {}).get("digest") or "")
    if stable and rollout.get("phase") in ("Progressing", "RolledBack", "Aborted"):
        return str(st.get("digest") or "-") if pod in (rollout.get("canaryPods") or []) else stable
    return str(st.get("digest") or "-")


def _pod_rows(client: kubernetes.client.ApiClient, obj: Mapping[str, Any]) -> list[dict[str, str]]:
    meta, body, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    labels = ((body.get("selector") or {}).get("matchLabels")) or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    pods = _get(client, f"/api/v1/namespaces/{meta['namespace']}/pods", {"labelSelector": selector} if selector else {})
    failing = {f.get("name"): f for f in st.get("failingPods") or []}
    rows = []
    for pod in (pods or {}).get("items") or []:
        name = pod["metadata"]["name"]
        bad = failing.get(name)
        rows.append(
            {
                "pod": name,
                "state": "Failing" if bad else "Ready",
                "digest": "-" if bad else pod_digest(st, name),
                "reason": str((bad or {}).get("reason", "")),
                "message": str((bad or {}).get("message", "")),
            }
        )
    return rows


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12] if digest else "-"


def _emit(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(data, sort_keys=False).rstrip())


def run(args: argparse.Namespace) -> int:
    client, default_ns = _client(args)
    namespace = args.namespace or default_ns
    base = f"/apis/{spec.API_GROUP}/{spec.API_VERSION}"
    try:
        if args.plugin:
            obj = _get(client, f"{base}/namespaces/{namespace}/{spec.PLURAL}/{args.plugin}")
            if obj is None:
                print(f"meshplug status: WasmPlugin {namespace}/{args.plugin} not found")
                return NOT_FOUND_EXIT
            return _show_one(client, obj, args.output)
        path = f"{base}/{spec.PLURAL}" if args.all_namespaces else f"{base}/namespaces/{namespace}/{spec.PLURAL}"
        listed = _get(client, path)
        items = [summary(o) for o in ((listed or {}).get("items") or [])]
    finally:
        client.close()  # type: ignore[no-untyped-call]
    if args.output in ("json", "yaml"):
        _emit(items, args.output)
        return 0
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {namespace}"
        print(f"No WasmPlugins in {where}.")
        return 0
    head = ["NAME", "PLANE", "DIGEST", "READY", "REASON", "PODS", "AGE"]
    if args.output == "wide":
        head.append("URL")
    if args.all_namespaces:
        head.insert(0, "NAMESPACE")
    rows = [head]
    for s in items:
        row = [s["name"], s["dataPlane"], _short(s["digest"]), s["ready"], s["reason"], s["pods"], s["age"]]
        if args.output == "wide":
            row.append(s["url"])
        if args.all_namespaces:
            row.insert(0, s["namespace"])
        rows.append(row)
    print(_table(rows))
    return 0


def _show_one(client: kubernetes.client.ApiClient, obj: Mapping[str, Any], output: str) -> int:
    s = summary(obj)
    pods = _pod_rows(client, obj)
    conditions = (obj.get("status") or {}).get("conditions") or []
    code = 0 if s["ready"] == "True" else errors.MeshplugError.exit_code
    if output in ("json", "yaml"):
        rollout = (obj.get("status") or {}).get("rollout")
        _emit({**s, "conditions": conditions, "podStatus": pods, **({"rollout": rollout} if rollout else {})}, output)
        return code
    print(f"{s['namespace']}/{s['name']}  ({s['dataPlane']} plane, generation {s['generation']})")
    print(f"url      {s['url']}")
    print(f"digest   {s['digest'] or '-'}")
    print(f"ready    {s['ready']}  {s['reason']}: {s['message']}".rstrip(": "))
    rollout = (obj.get("status") or {}).get("rollout") or {}
    if rollout:
        print(f"rollout  {rollout.get('phase', '')}: {rollout.get('message', '')}".rstrip(": "))
    if conditions:
        print()
        rows = [["CONDITION", "STATUS", "REASON", "MESSAGE"]]
        rows += [
            [c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", "")] for c in conditions
        ]
        print(_table(rows))
    print()
    if pods:
        rows = [["POD", "STATE", "DIGEST", "REASON", "MESSAGE"]]
        rows += [[p["pod"], p["state"], _short(p["digest"]), p["reason"], p["message"]] for p in pods]
        print(_table(rows))
    else:
        print("no pods selected")
    return code

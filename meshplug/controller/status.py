"""A WasmPlugin's status: conditions and their bookkeeping, the retry verdicts, the status body.

Called by `meshplug.controller.reconcile` (which writes the status) and by the delivery paths
(`meshplug.controller.delivery`), which report their part as a Ready condition with pod counts. Pure: no I/O.

Conditions: ``Fetched``, ``Validated``, ``Ready``, each with a specific reason; ``lastTransitionTime`` moves only
when a condition's status changes. `Retry` means run again later (the cause may heal without a spec change);
`Permanent` means only a spec change helps.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import limits

FETCHED, VALIDATED, READY = "Fetched", "Validated", "Ready"


class Retry(Exception):
    """Run the reconcile again after `delay` seconds (the cause may heal without a spec change)."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Permanent(Exception):
    """Only a spec change can help; do not retry."""


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], new: Sequence[Condition], generation: int
) -> list[dict[str, Any]]:
    """Conditions for the status; lastTransitionTime moves only when a condition's status changes."""
    old = {c.get("type"): c for c in previous}
    out = []
    for c in new:
        prior = old.get(c.type)
        since = prior.get("lastTransitionTime") if prior and prior.get("status") == c.status else None
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message[:1024],
                "observedGeneration": generation,
                "lastTransitionTime": since or _now(),
            }
        )
    return out


#: error reasons whose CamelCase form reads better than the word-by-word one
_REASON_NAMES = {"checksum_mismatched": "ChecksumMismatch", "not_wasm": "NotWasm", "too_large": "TooLarge"}


def reason(raw: str) -> str:
    """A condition or Event reason in Kubernetes' CamelCase: ``signature_invalid`` -> ``SignatureInvalid``
    (error reasons are snake_case because they double as metric labels); CamelCase ones pass unchanged."""
    if raw in _REASON_NAMES:
        return _REASON_NAMES[raw]
    if "_" not in raw and raw[:1].isupper():
        return raw
    return "".join(part[:1].upper() + part[1:] for part in raw.replace("-", "_").split("_") if part)


def backoff(retry: int) -> float:
    first, cap = limits.RECONCILE_BACKOFF_FIRST_S, limits.RECONCILE_BACKOFF_MAX_S
    return float(min(cap, first * 2 ** min(retry, 6)))


def pods_block(ready: int, total: int) -> dict[str, Any]:
    return {"total": total, "ready": ready, "failing": total - ready, "summary": f"{ready}/{total}"}


def pruned(value: Any) -> Any:
    """``value`` as the API server stores a merge patch of it: keys set to null are absent (so a status that only
    differs by them is not written again)."""
    if isinstance(value, Mapping):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def delta(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch of ``new`` onto ``current`` without what it would not change: keys whose value the API
    server holds already are left out, nested objects as their own delta (a merge patch merges them), lists and
    other values whole. The API server ends with the same status as from ``new`` itself; a large part that did not
    change (a rollout's window of stats, the stable spec) does not ride every status write."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = current.get(key)
        if pruned(before) == pruned(value):
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            out[key] = delta(before, value)
        else:
            out[key] = value
    return out

"""Pod-template annotations that mount ConfigMap-delivered modules into Istio sidecars.

Called by the controller with a workload's current pod-template annotations; returns the annotation changes
(a merge-patch fragment: value None deletes the key) or None when nothing changes, so an unchanged plugin
never touches the template and a new module version (same ConfigMap, same volume) never forces a rollout.
Pure: no I/O.

Istio reads ``sidecar.istio.io/userVolume`` (a JSON array of Volumes; older releases wrote a JSON object
keyed by volume name, which is read and rewritten as an array) and ``sidecar.istio.io/userVolumeMount`` (a
JSON array of VolumeMounts for the istio-proxy container). Entries of other owners are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from meshplug import errors
from meshplug.render import model

USER_VOLUME = "sidecar.istio.io/userVolume"
USER_VOLUME_MOUNT = "sidecar.istio.io/userVolumeMount"

Patch = dict[str, str | None]


def _entries(annotations: Mapping[str, str], key: str) -> list[dict[str, Any]]:
    raw = annotations.get(key)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        raise errors.ApplyError(f"annotation {key} is not JSON: {raw[:80]!r}", reason="InvalidAnnotation") from None
    if isinstance(value, dict):  # legacy form: {"<name>": {<volume without name>}}
        value = [{"name": name, **spec} for name, spec in value.items() if isinstance(spec, dict)]
    if not isinstance(value, list) or not all(isinstance(v, dict) and "name" in v for v in value):
        raise errors.ApplyError(f"annotation {key} is not a JSON array of named entries", reason="InvalidAnnotation")
    return value


def _dump(entries: list[dict[str, Any]]) -> str | None:
    return json.dumps(entries, separators=(",", ":"), sort_keys=True) if entries else None


def _upsert(entries: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    out = [e for e in entries if e.get("name") != entry["name"]]
    for i, e in enumerate(entries):
        if e.get("name") == entry["name"]:
            out.insert(i, entry)
            return out
    return [*out, entry]


def volume(code: model.LocalCode) -> dict[str, Any]:
    return {"name": code.volume, "configMap": {"name": code.config_map}}


def volume_mount(code: model.LocalCode) -> dict[str, Any]:
    return {"name": code.volume, "mountPath": code.mount_dir, "readOnly": True}


def _diff(annotations: Mapping[str, str], volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> Patch | None:
    patch: Patch = {}
    for key, entries in ((USER_VOLUME, volumes), (USER_VOLUME_MOUNT, mounts)):
        new = _dump(entries)
        old = _dump(_entries(annotations, key))
        if new != old:
            patch[key] = new
    return patch or None


def with_module_volume(annotations: Mapping[str, str], code: model.LocalCode) -> Patch | None:
    """Annotation changes that mount ``code``'s ConfigMap into the sidecar; None when already mounted."""
    volumes = _upsert(_entries(annotations, USER_VOLUME), volume(code))
    mounts = _upsert(_entries(annotations, USER_VOLUME_MOUNT), volume_mount(code))
    return _diff(annotations, volumes, mounts)


def without_module_volume(annotations: Mapping[str, str], volume_name: str) -> Patch | None:
    """Annotation changes that remove the plugin's volume and mount; None when it is not there."""
    volumes = [e for e in _entries(annotations, USER_VOLUME) if e.get("name") != volume_name]
    mounts = [e for e in _entries(annotations, USER_VOLUME_MOUNT) if e.get("name") != volume_name]
    return _diff(annotations, volumes, mounts)

"""The OCI registry of the test bed (Debian `docker-registry`, CNCF distribution 2.8) and a pusher.

`start_registry()` writes a config (plain, htpasswd Basic auth, TLS with a test-CA certificate, or
Bearer token auth whose realm is the TLS origin's token endpoint) and starts `docker-registry serve`.
`Registry` speaks the distribution API with requests to push blobs and manifests (answering the same
Basic/Bearer challenges a client sees) and builds every wasm layout meshplug reads (`push_layout`).
Fixtures live in tests/testbed/fixtures_registry.py.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import subprocess
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.testbed import origin, procs

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

#: every layout meshplug reads, by the name its Layout enum gives it
LAYOUTS = (
    "docker-image",
    "oci-image",
    "wasm-content-two-layer",
    "wasm-content-single-layer",
    "cncf-wasm-artifact",
    "oras-artifact",
)


@dataclass
class Registry:
    """A running registry: ``host`` is ``localhost:<port>``; credentials if it has auth."""

    proc: procs.Proc | None
    host: str
    tls: bool
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    _auth: str | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, repo: str, ref: str) -> str:
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"oci://{self.host}/{repo}{sep}{ref}"

    def pull_secret(self) -> bytes:
        """A kubernetes.io/dockerconfigjson Secret (JSON) holding this registry's credentials."""
        auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        config = {"auths": {f"https://{self.host}": {"auth": auth}}}
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
        }
        return json.dumps(secret).encode()

    # --- the distribution API, with the auth dance -----------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if "://" in path else f"{self.scheme}://{self.host}{path}"
        verify = str(self.ca_file) if self.ca_file else True
        headers = dict(kwargs.pop("headers", {}))
        if self._auth:
            headers["Authorization"] = self._auth
        resp = requests.request(method, url, headers=headers, verify=verify, timeout=30, **kwargs)
        if resp.status_code == 401 and self.username is not None:
            self._auth = self._answer(resp.headers.get("www-authenticate", ""), verify)
            headers["Authorization"] = self._auth
            resp = requests.request(method, url, headers=headers, verify=verify, timeout=30, **kwargs)
        return resp

    def _answer(self, challenge: str, verify: str | bool) -> str:
        basic = requests.auth._basic_auth_str(self.username or "", self.password or "")
        if challenge.lower().startswith("basic"):
            return basic
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {"service": params.get("service", ""), "scope": params.get("scope", "")}
        resp = requests.get(
            params["realm"] + "?" + urllib.parse.urlencode(query),
            headers={"Authorization": basic},
            verify=verify,
            timeout=30,
        )
        resp.raise_for_status()
        return f"Bearer {resp.json()['token']}"

    def ready(self) -> bool:
        """/v2/ answers (200, or 401 with a challenge): no auth attempted, so no token realm is contacted."""
        verify = str(self.ca_file) if self.ca_file else True
        resp = requests.get(f"{self.scheme}://{self.host}/v2/", verify=verify, timeout=2)
        return resp.status_code in (200, 401)

    def push_blob(self, repo: str, data: bytes) -> dict[str, Any]:
        """Upload ``data`` (monolithic POST+PUT); its descriptor without a media type."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = self.api("POST", f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, (start.status_code, start.text)
        location = urllib.parse.urljoin(f"{self.scheme}://{self.host}", start.headers["Location"])
        sep = "&" if "?" in location else "?"
        done = self.api(
            "PUT",
            f"{location}{sep}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, (done.status_code, done.text)
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repo: str, ref: str, manifest: dict[str, Any]) -> str:
        body = json.dumps(manifest, separators=(",", ":")).encode()
        resp = self.api(
            "PUT", f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": manifest["mediaType"]}
        )
        assert resp.status_code == 201, (resp.status_code, resp.text)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        assert resp.headers.get("Docker-Content-Digest") == digest
        return digest

    def delete_tag_target(self, repo: str, digest: str) -> None:
        resp = self.api("DELETE", f"/v2/{repo}/manifests/{digest}")
        assert resp.status_code == 202, (resp.status_code, resp.text)

    # --- layouts ---------------------------------------------------------------------------------------
    def push_layout(self, layout: str, repo: str, tag: str, wasm: bytes) -> str:
        """Push ``wasm`` in ``layout`` (one of LAYOUTS) as ``repo:tag``; the manifest digest."""
        manifest: dict[str, Any] = {"schemaVersion": 2}
        if layout in ("docker-image", "oci-image"):
            docker = layout == "docker-image"
            layer_type = (
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                if docker
                else "application/vnd.oci.image.layer.v1.tar+gzip"
            )
            base = self.push_blob(repo, targz({"etc/os-release": b"ID=scratch\n"}))
            top = self.push_blob(repo, targz({"plugin.wasm": wasm}))
            config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
            manifest["mediaType"] = DOCKER_MANIFEST if docker else OCI_MANIFEST
            manifest["config"] = {
                **self.push_blob(repo, config),
                "mediaType": "application/vnd.docker.container.image.v1+json"
                if docker
                else "application/vnd.oci.image.config.v1+json",
            }
            manifest["layers"] = [{**base, "mediaType": layer_type}, {**top, "mediaType": layer_type}]
        elif layout in ("wasm-content-two-layer", "wasm-content-single-layer"):
            manifest["mediaType"] = OCI_MANIFEST
            config = json.dumps(
                {"type": "envoy_proxy", "abiVersions": ["v0-4689a30309abf31aee9ae36e73d34b1bb182685f"]}
            ).encode()
            manifest["config"] = {
                **self.push_blob(repo, config),
                "mediaType": "application/vnd.module.wasm.config.v1+json",
            }
            content = {**self.push_blob(repo, wasm), "mediaType": "application/vnd.module.wasm.content.layer.v1+wasm"}
            manifest["layers"] = [content]
            if layout == "wasm-content-two-layer":
                descriptor = self.push_blob(repo, json.dumps({"rootIds": ["root"]}).encode())
                runtime_config = "application/vnd.module.wasm.runtime.config.v1+json"
                manifest["layers"].append({**descriptor, "mediaType": runtime_config})
        elif layout == "cncf-wasm-artifact":
            manifest["mediaType"] = OCI_MANIFEST
            config = json.dumps({"architecture": "wasm", "os": "wasip1", "layerDigests": []}).encode()
            manifest["config"] = {**self.push_blob(repo, config), "mediaType": "application/vnd.wasm.config.v0+json"}
            manifest["layers"] = [{**self.push_blob(repo, wasm), "mediaType": "application/wasm"}]
        elif layout == "oras-artifact":
            manifest["mediaType"] = OCI_MANIFEST
            manifest["config"] = {**self.push_blob(repo, b"{}"), "mediaType": "application/vnd.unknown.config.v1+json"}
            manifest["layers"] = [
                {
                    **self.push_blob(repo, wasm),
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"},
                }
            ]
        else:
            raise ValueError(f"unknown layout {layout!r}")
        return self.push_manifest(repo, tag, manifest)


def targz(files: dict[str, bytes]) -> bytes:
    return gzip.compress(origin.tar_of(files), mtime=0)


def start_registry(
    name: str,
    workdir: Path,
    log_dir: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    ca_file: Path | None = None,
    htpasswd: tuple[str, str] | None = None,
    token: dict[str, str] | None = None,
    bind: str = "127.0.0.1",
    port: int = 0,
    argv_prefix: Sequence[str] = (),
) -> Registry:
    """Start ``docker-registry serve`` on a free port with the given auth/TLS; wait until /v2/ answers.

    ``token``: {"realm", "service", "issuer", "rootcertbundle"} of the Bearer token auth; with it,
    ``htpasswd`` only names the credentials the token endpoint accepts. ``bind``, ``port`` and ``argv_prefix``
    (e.g. a network namespace's nsenter) place it elsewhere; ``localhost:<port>`` must still reach it.
    """
    binary = procs.which_or_fail("docker-registry", "install it with scripts/install-system-deps.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or procs.free_port()
    http: dict[str, Any] = {"addr": f"{bind}:{port}", "secret": "meshplug-test-secret"}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": http,
    }
    if token is not None:
        config["auth"] = {"token": token}
    elif htpasswd is not None:
        line = subprocess.run(
            [procs.which_or_fail("htpasswd", "install apache2-utils"), "-nbB", *htpasswd],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (workdir / "htpasswd").write_text(line + "\n")
        config["auth"] = {"htpasswd": {"realm": "meshplug-test", "path": str(workdir / "htpasswd")}}
    (workdir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    registry = Registry(
        proc=None,
        host=f"localhost:{port}",
        tls=tls is not None,
        ca_file=ca_file,
        username=htpasswd[0] if htpasswd else None,
        password=htpasswd[1] if htpasswd else None,
    )
    registry.proc = procs.start(
        name,
        [*argv_prefix, binary, "serve", str(workdir / "config.yml")],
        log_dir=log_dir,
        ready=registry.ready,
        ports={"http": port},
    )
    return registry

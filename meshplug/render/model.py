"""Inputs and outputs of the renderers: the module to deliver, where the operator serves modules, how code is reached.

Built by the controller from a fetched and validated `Artifact` (render never reads the network or the API);
read by `meshplug.render.envoy`, `meshplug.render.istio`, `meshplug.render.podtemplate` and `meshplug.render.agent`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from meshplug import limits
from meshplug.fetch import serve
from meshplug.fetch.artifact import Evidence

_SHA256 = re.compile(r"^[a-f0-9]{64}$")

#: labels and annotations the operator puts on what it generates (cleanup finds them by label)
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "meshplug"
PLUGIN_LABEL = "meshplug.io/plugin"
#: the kind of the meshplug resource an object was rendered for (a WasmPlugin and a TrafficExtension may share a name)
KIND_LABEL = "meshplug.io/kind"
DIGEST_ANNOTATION = "meshplug.io/digest"
#: where sidecars mount ConfigMap-delivered modules: <MODULE_MOUNT_ROOT>/<plugin name>/<sha256>.wasm (a
#: TrafficExtension's under TE_MOUNT_ROOT, so no WasmPlugin name can reach its directory)
MODULE_MOUNT_ROOT = "/var/local/meshplug/wasm"
TE_MOUNT_ROOT = "/var/local/meshplug/trafficextension"


@dataclass(frozen=True)
class Compiled:
    """The module precompiled with the agents' engine settings (meshplug.compiled): its artifact key (file
    name under the operator's artifact root, served at /compiled/<key>) and the sha256 of that file; `tier`:
    which compiler made it (meshplug.compiled.Tier value; the key says so too, agents need no more)."""

    key: str
    sha256: str
    tier: str = "optimized"


@dataclass(frozen=True)
class Module:
    """A validated module's bytes and identity (hex sha256 of the bytes); `compiled` when the operator has
    its artifact for the agents; `signature` when the plugin demands a signed module (what was verified, for the
    agents to verify again)."""

    sha256: str
    data: bytes
    compiled: Compiled | None = None
    signature: Evidence | None = None

    def __post_init__(self) -> None:
        if not _SHA256.match(self.sha256):
            raise ValueError(f"Module.sha256 {self.sha256!r} is not 64 lowercase hex digits")

    @classmethod
    def of(cls, data: bytes) -> Module:
        return cls(sha256=hashlib.sha256(data).hexdigest(), data=data)

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    @property
    def fits_config_map(self) -> bool:
        return len(self.data) <= limits.CONFIGMAP_MAX_BYTES

    def __repr__(self) -> str:
        return f"Module(sha256={self.sha256[:12]}…, size={len(self.data)})"


@dataclass(frozen=True)
class ModuleServer:
    """The operator's module server (`meshplug.fetch.serve`) as pods reach it: a Service host and port.

    ``token`` (the operator's signing key) signs per-module URLs for clients that cannot send a bearer token
    (Envoy's ``code.remote``) on ``port``; agents get unsigned URLs on ``agent_port`` (HTTPS), where they present
    their ServiceAccount token.
    """

    host: str
    port: int
    scheme: str = "http"
    token: str = field(default="", repr=False)
    agent_port: int = 0  # 0: agents get signed URLs on ``port`` too

    def agent_url(self, sha256: str) -> str:
        if not self.agent_port:
            return self.url(sha256, signed=True)
        return f"https://{self.host}:{self.agent_port}/modules/sha256/{sha256}"

    def url(self, sha256: str, *, signed: bool = False) -> str:
        url = f"{self.scheme}://{self.host}:{self.port}/modules/sha256/{sha256}"
        if signed and self.token:
            url += f"?sig={serve.signature(self.token, sha256)}"
        return url

    def compiled_url(self, key: str) -> str:
        """Where agents get a precompiled module: as its module (`agent_url`), the signature over the key."""
        if self.agent_port:
            return f"https://{self.host}:{self.agent_port}/compiled/{key}"
        url = f"{self.scheme}://{self.host}:{self.port}/compiled/{key}"
        if self.token:
            url += f"?sig={serve.signature(self.token, key)}"
        return url

    @property
    def istio_cluster(self) -> str:
        """The cluster name an Istio sidecar has for this service (outbound|port||host)."""
        return f"outbound|{self.port}||{self.host}"


@dataclass(frozen=True)
class LocalCode:
    """Module delivered in a ConfigMap mounted into the sidecar; Envoy reads ``filename``."""

    config_map: str
    volume: str
    mount_dir: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class RemoteCode:
    """Module too large for a ConfigMap: Envoy fetches ``uri`` through ``cluster`` and checks ``sha256``."""

    uri: str
    cluster: str
    sha256: str


@dataclass(frozen=True)
class ProxyFile:
    """A ``file://`` url in the istio data plane: a file inside the proxy (Istio's meaning), never seen by meshplug."""

    filename: str
    sha256: str = ""  # what the spec says; unverified


Code = LocalCode | RemoteCode | ProxyFile


def dns_name(prefix: str, name: str, max_len: int) -> str:
    """``<prefix><name>``, shortened with a stable hash suffix when longer than ``max_len`` (DNS label rules)."""
    full = f"{prefix}{name}"
    if len(full) <= max_len:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{full[: max_len - 9].rstrip('-.')}-{digest}"

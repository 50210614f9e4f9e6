"""Turn a desired plugin set into a ready filter chain, off the request path; persist the last good set.

Called by `meshplug.agent.push` (pushes) and `meshplug.agent.runtime` (static config, restart) inside a
worker thread: fetching, sha256 checks, validation, compilation and VM start all block, none of it runs on
the event loop. The result, a `LoadedSet`, is swapped into the proxy in one assignment by the caller.

Module bytes come from, in order: the state directory (modules of the last good set, by sha256), then the
resource's URL through meshplug.fetch (`Sources`: https, where requests to the operator's module server carry
the pod's projected ServiceAccount token and its certificate is checked against the operator's CA; oci;
file:// below the configured roots; content-addressed cache under the state directory). Every
byte string is checked against the resource's sha256 and then by `meshplug.validate` (the proxy-wasm ABI
check, for the filter kind the listeners use) before the host sees it.

A resource whose push carries a ``signature`` (the plugin demands a signed module) is checked from the signature
down to its bytes before anything else (`signed_module`, `meshplug.fetch.provenance`): the key the push names must
be one of the agent's trusted keys when it has a list (`meshplug.agent.trust`; else NACK ``signature_untrusted``),
must verify the signature, which must name the manifest given, whose layer must be the module's sha256 -- or, for a
layer that wraps the module (a tar.gz), the layer blob from the push's ``layer_url`` must have the layer's digest
and unpack to the module. Any broken link is a `errors.SignatureError` (NACK ``signature_invalid``), the same from
the state directory after a restart. Such a module is compiled here (the operator's precompiled artifact is not
fetched: the signature does not cover it; an artifact already in the agent's own cache for the same sha256 is used,
as for any module). A pushed resource without a signature, to an agent with --require-signatures, is NACKed
``signature_required`` before anything is fetched (inline Lua too: no signature covers it); the static config's
own plugins are not pushed and load as they are. Every signature NACK names the module by its sha256.

Persistence (`StateStore`): `<state_dir>/modules/<sha256>.wasm` (the modules, and the signed layer blobs
unpacked to them) and `<state_dir>/last_good.json` (the
`protocol.Push` of the applied set), each written to a temp file, fsynced and renamed, modules first, so a
`kill -9` at any point leaves either the old or the new complete set.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from meshplug import errors, fetch, files, limits, protocol, validate
from meshplug.agent import chain, config, envoystats, tcp, trust
from meshplug.fetch import http as fetch_http
from meshplug.fetch import provenance

if TYPE_CHECKING:
    from meshplug.agent import vm

log = logging.getLogger("meshplug.agent.loader")

#: (resource, module bytes) in chain order -> the chain; raises HostError subclasses
ChainBuilder = Callable[[Sequence[tuple[protocol.ExtensionConfig, bytes]]], "Chain"]


@dataclass(frozen=True)
class PluginView:
    """What admin and replies report about one loaded plugin."""

    name: str
    root_id: str
    sha256: str
    size: int
    state: protocol.PluginState
    detail: str = ""


@dataclass
class Chain:
    """A built chain: the proxy's `Filters` (None when there are no plugins) and its introspection hooks."""

    filters: chain.Chain | None
    network: tuple[tcp.NetworkFilter, ...] = ()  # the same plugins as network (L4) filters
    #: per listener name: its HTTP chain (None: no plugin applies) / its network filters
    http_chains: Mapping[str, chain.Chain | None] = field(default_factory=dict)
    network_chains: Mapping[str, tuple[tcp.NetworkFilter, ...]] = field(default_factory=dict)
    views: Callable[[], list[PluginView]] = field(default=list)
    metrics: Callable[[], str] = field(default=lambda: "")
    metric_values: Callable[[], dict[str, int | None]] = field(default=dict)
    #: (plugin, level, message, CLOCK_MONOTONIC ns when logged), oldest first
    logs: Callable[[], list[tuple[str, str, str, int]]] = field(default=list)
    close: Callable[[], None] = field(default=lambda: None)
    #: the logging level changed: pass it on to the plugins' hosts
    relevel: Callable[[], None] = field(default=lambda: None)
    #: awaited right after the proxy swapped to this chain, before the push is answered (a multi-worker agent's
    #: workers switch to the set they loaded: meshplug.agent.workers)
    activate: Callable[[], Awaitable[None]] | None = None
    #: built with wasm plugins: logs and metrics are the process's shared stores (the same in every such chain)
    wasm: bool = False
    #: the plugins' own metrics as Envoy names them in /stats (wasmcustom.<name>)
    plugin_stats: Callable[[], list[envoystats.Stat]] = field(default=list)
    #: per plugin: requests, failures, 5xx local replies, request time histogram (GET protocol.HEALTH_PATH)
    plugin_health: Callable[[], tuple[protocol.PluginHealth, ...]] = field(default=tuple)


@dataclass(frozen=True)
class LoadedSet:
    """One applied plugin set. `chain` is shared by every exchange started while this set is active."""

    version_info: str
    nonce: str
    resources: tuple[protocol.ExtensionConfig, ...]
    digests: Mapping[str, str]  # plugin name -> sha256 of the module actually loaded
    chain: Chain
    #: how long preparing (per resource: fetch, artifact, load, validate) and starting the set took, in ms
    timings: Mapping[str, object] = field(default_factory=dict)

    def push(self) -> protocol.Push:
        return protocol.Push(version_info=self.version_info, nonce=self.nonce, resources=self.resources)

    def same_as(self, push: protocol.Push) -> bool:
        return push.version_info == self.version_info and push.resources == self.resources


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StateStore:
    """The last good pushed set and its modules, under one directory (absent: nothing persists)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def module(self, sha256: str) -> bytes | None:
        if self.root is None or not sha256:
            return None
        path = self.root / "modules" / f"{sha256}.wasm"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if sha256_hex(data) != sha256:  # a torn or tampered file: ignore it, fetch again
            log.warning("state module %s does not match its digest; ignoring it", path)
            return None
        return data

    def save(self, loaded: LoadedSet, modules: Mapping[str, bytes]) -> None:
        if self.root is None:
            return
        for digest, data in modules.items():
            path = self.root / "modules" / f"{digest}.wasm"
            if not path.exists():
                files.write_atomic(path, data)
        files.write_atomic(self.root / "last_good.json", protocol.encode(loaded.push()))
        keep = set(modules)
        for stale in (self.root / "modules").glob("*.wasm"):
            if stale.stem not in keep:
                stale.unlink(missing_ok=True)

    def last_good(self) -> protocol.Push | None:
        if self.root is None:
            return None
        path = self.root / "last_good.json"
        try:
            return protocol.decode_push(path.read_bytes())
        except FileNotFoundError:
            return None
        except errors.ProtocolError as exc:
            log.error("ignoring unreadable %s: %s", path, exc.message)
            return None


class _ModuleServerTransport(fetch_http.Transport):
    """meshplug.fetch's HTTP transport, adding the module server's bearer token to requests for its origin.

    The token file is re-read per request (a rotated Secret applies without a restart); redirects to
    another origin lose the header (the base transport drops it).
    """

    def __init__(self, options: fetch.FetchOptions, server: config.ModuleServer) -> None:
        super().__init__(options)
        self.server = server
        self._origin = _origin(server.url)

    def open(
        self,
        method: str,
        url: str,
        *,
        deadline: fetch_http.Deadline,
        headers: Mapping[str, str] | None = None,
        verify: str | bool | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        if _origin(url) == self._origin:
            token = config.read_tokens(self.server.token_file)[0]  # the kubelet refreshes the projected token
            headers = {**(headers or {}), "Authorization": f"Bearer {token}"}
        return super().open(method, url, deadline=deadline, headers=headers, verify=verify, data=data)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


class Sources:
    """Where module bytes come from: meshplug.fetch's `Fetcher` (https, oci, file roots, content cache,
    sha256 pinning, SSRF guard), with the module server's token. Thread-safe; `fetch` blocks."""

    def __init__(self, modules: config.Modules, *, state_dir: Path | None = None) -> None:
        cache_dir = modules.cache_dir or (state_dir / "cache" if state_dir is not None else None)
        bundles: dict[str, Path] = {}
        if modules.server is not None and modules.server.ca_file is not None:
            _, host, port = _origin(modules.server.url)
            bundles[f"{host}:{port}"] = modules.server.ca_file
        options = fetch.FetchOptions(
            file_roots=modules.file_roots,
            ca_bundles=bundles,
            allow_loopback=modules.allow_loopback,
            blocked_cidrs=modules.block_cidrs,
        )
        if cache_dir is not None:
            options = dataclasses.replace(options, cache_dir=cache_dir)
        self.fetcher = fetch.Fetcher(options)
        self.precompiled = modules.precompiled
        #: which keys may sign pushed modules, and whether each must be signed (meshplug.agent.trust)
        self.signatures = trust.Policy(
            trust.TrustedKeys(modules.trusted_keys) if modules.trusted_keys is not None else None,
            required=modules.require_signatures,
        )
        #: precompiled artifacts are fetched here, beside their modules
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.AGENT_PREPARE_THREADS, thread_name_prefix="meshplug-artifact"
        )
        if modules.server is not None:
            self.fetcher.transport.close()
            self.fetcher.transport = _ModuleServerTransport(self.fetcher.options, modules.server)

    def fetch(self, resource: protocol.ExtensionConfig) -> bytes:
        """The module at the resource's URL, checked against its sha256 (when it has one)."""
        return self.fetcher.fetch(resource.url, sha256=resource.sha256 or None).data

    def blob(self, url: str, sha256: str) -> bytes:
        """The bytes at ``url`` as served (not unpacked), from the content cache when it holds ``sha256``; kept
        there only when they are that blob. The caller checks the digest (a mismatch is its error to word)."""
        cached = self.fetcher.cache.get_blob(sha256)
        if cached is not None:
            return cached
        options = self.fetcher.options
        data = self.fetcher.transport.download(
            url, deadline=fetch_http.Deadline.after(options.overall_timeout_s), cap=options.max_module_bytes
        )
        if sha256_hex(data) == sha256:
            self.fetcher.cache.put_blob(data)
        return data

    def install_compiled(self, artifact: protocol.CompiledArtifact, digest: str, runtime: vm.Runtime) -> Installed:
        """Load the operator's precompiled module for `digest` with the runtime's engine of the tier whose key
        it names (optimized or baseline: meshplug.compiled.Tier), and store it in that tier's artifact cache
        for later loads; how it went, and the module (hold it until `vm.Runtime.load_tiered` took it): ``local``
        (ours already there, or our optimized one: no module here), ``operator`` (fetched, its sha256 is the
        push's, its header names our key, loaded from memory), ``other-engine`` (another wasmtime, settings or
        CPU), ``unavailable`` (not fetched) or ``refused`` (not sound for our key). Never raises: compiling
        here is the fallback. The file is written behind (on this pool): the module loads without waiting for
        the disk, and a crash before the write only costs the next start a download."""
        optimized = runtime.artifacts
        if optimized is None:
            return Installed("other-engine")
        caches = [c for c in (optimized, runtime.baseline_artifacts) if c is not None]
        artifacts = next((c for c in caches if artifact.key == c.key(digest).filename), None)
        if artifacts is None:
            return Installed("other-engine")
        if artifacts.path(artifacts.key(digest)).exists() or optimized.path(optimized.key(digest)).exists():
            return Installed("local")
        options = self.fetcher.options
        t0 = time.monotonic()
        try:
            blob = self.fetcher.transport.download(
                artifact.url,
                deadline=fetch_http.Deadline.after(options.overall_timeout_s),
                cap=options.max_decompressed_bytes,
            )
        except errors.MeshplugError as exc:
            log.warning("precompiled module %s not fetched, compiling instead: %s", artifact.key, exc.message)
            return Installed("unavailable")
        t1 = time.monotonic()
        module = runtime.adopt(digest, artifact.key, blob) if sha256_hex(blob) == artifact.sha256 else None
        if module is None:
            log.warning("precompiled module %s refused (sha256 or header), compiling instead", artifact.key)
            return Installed("refused")
        with contextlib.suppress(RuntimeError):  # the pool shut down (the agent stops): nothing to keep
            self.pool.submit(artifacts.install, digest, blob, checked=True)
        return Installed("operator", module, round((t1 - t0) * 1000, 1), _ms(t1))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()


@dataclass(frozen=True)
class Installed:
    """What became of the operator's precompiled module (`Sources.install_compiled`): ``outcome``, the module
    when it was loaded here (held until `vm.Runtime.load_tiered` took it), and how long the download and the
    check + load from memory took."""

    outcome: str
    module: object | None = None
    download_ms: float = 0.0
    load_ms: float = 0.0


@dataclass(frozen=True)
class Prepared:
    """One resource ready to start: its bytes (a Lua filter's: its script), its module compiled or loaded for
    the agent's engine (None for Lua; held until the chain is built, so starting it loads nothing again), and
    how long each step took (for /config_dump's last_push and bench/ready.py); `blobs`: what else the state
    directory keeps for it (a signed layer blob the module was unpacked from, by sha256)."""

    data: bytes
    module: object | None
    timings: Mapping[str, float | str]
    blobs: Mapping[str, bytes] = field(default_factory=dict)


def signed_module(
    resource: protocol.ExtensionConfig, store: StateStore, sources: Sources
) -> tuple[bytes, dict[str, bytes], str]:
    """The module of a resource whose push demands a signature, checked from the signature down to its bytes
    (`meshplug.fetch.provenance`), whoever served them; the layer blob it was unpacked from (when the layer wraps
    it), and what was verified. `errors.SignatureError` names the link that broke."""
    sig = resource.signature
    assert sig is not None
    try:
        key = fetch.load_public_key(sig.key, what="the push's signature key")
    except errors.ConfigError as exc:
        raise errors.SignatureError(exc.message) from None
    sources.signatures.check(key)  # before the signature: a key outside the agent's list proves nothing
    try:
        digest = provenance.signed_digest(key, sig.layout, sig.payload, sig.signature, sig.manifests[0])
    except errors.SignatureError:
        signer = next(
            (k for k in sources.signatures.others(key) if k.verify(sig.payload or sig.manifests[0], sig.signature)),
            None,
        )
        if signer is None:
            raise
        raise errors.SignatureError(
            f"the signature does not verify under the key the push names ({key.key_id}): trusted key "
            f"{signer.key_id} made it, so the push names the wrong key"
        ) from None
    layer = provenance.signed_layer(sig.manifests, digest).digest
    verified = f"{sig.layout} signature, key {key.key_id}, manifest {digest}, layer {layer}"
    if provenance.bound_directly(layer, resource.sha256):
        try:
            return store.module(resource.sha256) or sources.fetch(resource), {}, verified
        except errors.FetchError as exc:
            if exc.reason != fetch.Reason.CHECKSUM_MISMATCHED:
                raise
            raise errors.SignatureError(f"not the signed module (layer {layer}): {exc.message}") from None
    if not sig.layer_url:
        raise errors.SignatureError(
            f"the signed manifest's layer {layer} is not module sha256:{resource.sha256}, and the push names no "
            "layer blob (layer_url) to check it against"
        )
    hexpart = layer.removeprefix("sha256:")
    blob = store.module(hexpart) or sources.blob(sig.layer_url, hexpart)
    cap = sources.fetcher.options.max_decompressed_bytes
    return provenance.unpack(layer, blob, resource.sha256, cap=cap), {hexpart: blob}, verified


def module_name(resource: protocol.ExtensionConfig) -> str:
    """How NACKs name a resource's module: by its digest (a URL may carry a signed query)."""
    if resource.lua:
        return f"inline Lua (script sha256:{resource.sha256})" if resource.sha256 else "inline Lua"
    return f"module sha256:{resource.sha256}" if resource.sha256 else "module (no sha256 given)"


def prepare(
    resource: protocol.ExtensionConfig,
    store: StateStore,
    sources: Sources,
    kind: validate.FilterKind | None = validate.FilterKind.HTTP,
    *,
    pushed: bool = True,
) -> Prepared:
    """Bytes for `resource`, from the state store or its URL, checked against its sha256 (if any), compiled
    -- or loaded from a precompiled artifact: ours, or the operator's when the push names one for this
    agent's engine key -- and validated on that compiled module (no second compile). A Lua filter's bytes are
    its script (compiled when its filter starts). ``pushed``: the resource came in a push (or from the state
    directory's last pushed set), not from the static config: the agent's signature policy applies."""
    if pushed and resource.signature is None:
        sources.signatures.unsigned(module_name(resource))  # NACK signature_required when signatures are required
    if resource.lua:
        return Prepared(resource.lua.encode(), None, {})
    from meshplug.agent import vm  # noqa: PLC0415 -- wasmtime only for sets with a wasm module

    timings: dict[str, float | str] = {}
    runtime = vm.default_runtime()
    artifact: concurrent.futures.Future[Installed] | None = None
    compiled = resource.compiled
    # the operator's machine code is not what the signature signs: a signed module is compiled here
    if compiled is not None and sources.precompiled and resource.sha256 and resource.signature is None:
        t1 = time.monotonic()
        artifact = sources.pool.submit(sources.install_compiled, compiled, resource.sha256, runtime)
    t0 = time.monotonic()
    blobs: dict[str, bytes] = {}
    if resource.signature is not None:
        try:
            data, blobs, timings["signature"] = signed_module(resource, store, sources)
        except errors.SignatureError as exc:  # which module: the NACK names the plugin, this names its digest
            raise errors.SignatureError(f"{module_name(resource)}: {exc.message}", reason=exc.reason) from None
        timings["fetch_ms"] = _ms(t0)
    else:
        cached = store.module(resource.sha256)
        if cached is None:
            cached = sources.fetch(resource)
            timings["fetch_ms"] = _ms(t0)
        data = cached
    digest = sha256_hex(data)
    if resource.sha256 and digest != resource.sha256:
        raise errors.FetchError(
            f"module of {resource.name} has sha256 {digest}, expected {resource.sha256}", reason="checksum_mismatched"
        )
    installed = None  # the operator's module, loaded: held until load_tiered below took it
    if artifact is not None:
        installed = artifact.result()
        timings["artifact"] = installed.outcome
        timings["artifact_ms"] = _ms(t1)  # from the module's fetch on (they overlap): what it added
        if installed.module is not None:
            timings["artifact_download_ms"] = installed.download_ms
            timings["artifact_load_ms"] = installed.load_ms
    t2 = time.monotonic()
    try:
        module, outcome, tier = runtime.load_tiered(data)
    except errors.PluginStartError:  # does not compile: validation says why, with the compiler's message
        validate.validate(data, kind=kind)
        raise
    timings["load"] = outcome  # compiled here (miss/stale/corrupt), or loaded (hit, memory)
    timings["tier"] = tier.value  # optimized, or baseline (until the operator pushes the optimized artifact)
    timings["load_ms"] = _ms(t2)
    del installed
    t3 = time.monotonic()
    validate.validate(data, kind=kind, module=module)  # ValidationError names every ABI problem
    timings["validate_ms"] = _ms(t3)
    return Prepared(data, module, timings, blobs)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)


class ResourceError(Exception):
    """A MeshplugError tied to the resource that caused it (for the NACK's error_detail)."""

    def __init__(self, resource: str, error: errors.MeshplugError) -> None:
        super().__init__(f"{resource}: {error.message}")
        self.resource = resource
        self.error = error


def filter_kind(resource: protocol.ExtensionConfig) -> validate.FilterKind:
    """What a resource's module is validated as: its `type`."""
    return validate.FilterKind.NETWORK if resource.type is protocol.PluginType.NETWORK else validate.FilterKind.HTTP


def load(
    push: protocol.Push,
    *,
    store: StateStore,
    sources: Sources,
    build: ChainBuilder,
    singletons: bool = False,
) -> tuple[LoadedSet, dict[str, bytes]]:
    """Fetch, check and start every plugin of `push`; blocking, run it in a worker thread.

    Modules are validated as their resource's type says (HTTP or network filter); `singletons`: as
    singletons (any module with the ABI: they run in no chain).

    Raises `ResourceError` (fetch/validation of one resource) or `errors.HostError` (starting the chain).
    """
    t0 = time.monotonic()
    resources = push.resources
    workers = min(limits.AGENT_PREPARE_THREADS, max(1, len(resources)))
    pushed = push.version_info != protocol.STATIC_VERSION  # the static config's own plugins are not pushed
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="meshplug-load") as pool:
        futures = [
            pool.submit(prepare, r, store, sources, None if singletons else filter_kind(r), pushed=pushed)
            for r in resources
        ]
        prepared: list[Prepared] = []
        for resource, future in zip(resources, futures, strict=True):
            try:
                prepared.append(future.result())
            except errors.MeshplugError as exc:
                for other in futures:
                    other.cancel()
                raise ResourceError(resource.name, exc) from None
    timings: dict[str, object] = {"prepare_ms": _ms(t0)}
    pairs: list[tuple[protocol.ExtensionConfig, bytes]] = []
    modules: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    for resource, ready in zip(resources, prepared, strict=True):
        digest = sha256_hex(ready.data)
        if not resource.lua:  # a script travels in the persisted push itself
            modules[digest] = ready.data
        modules.update(ready.blobs)
        digests[resource.name] = digest
        pairs.append((resource, ready.data))
        if ready.timings:
            timings[resource.name] = dict(ready.timings)
    t1 = time.monotonic()
    chain = build(pairs)  # the prepared modules stay referenced (loaded once) until the chain is built
    timings["start_ms"] = _ms(t1)
    loaded = LoadedSet(
        version_info=push.version_info,
        nonce=push.nonce,
        resources=push.resources,
        digests=digests,
        chain=chain,
        timings=timings,
    )
    del prepared
    return loaded, modules


def empty_chain() -> Chain:
    return Chain(filters=None)


def json_views(views: Sequence[PluginView]) -> list[dict[str, object]]:
    return [
        {"name": v.name, "root_id": v.root_id, "sha256": v.sha256, "size": v.size, "state": v.state.value}
        | ({"detail": v.detail} if v.detail else {})
        for v in views
    ]


def dumps(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"

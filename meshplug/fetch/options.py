"""`FetchOptions`: every knob of module supply in one value, with named defaults and one sanitising step.

Built by the operator (from its flags/Helm values), the agent and `meshplug fetch`; read by every source
module and the cache. `sanitized()` is the only place values are checked, clamped and normalised.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshplug import errors, limits

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PullPolicy(enum.StrEnum):
    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"


def default_cache_dir() -> Path:
    base = os.environ.get("MESHPLUG_CACHE") or str(Path.home() / ".cache" / "meshplug")
    return Path(base) / "modules"


@dataclass(frozen=True)
class FetchOptions:
    """Options of a `Fetcher`. Construct with keywords, then call `sanitized()` (the Fetcher does)."""

    #: timeout of each HTTP request (connect and each read), and the deadline of a whole fetch
    request_timeout_s: float = limits.HTTP_REQUEST_TIMEOUT_S
    overall_timeout_s: float = limits.FETCH_OVERALL_TIMEOUT_S
    #: attempts per HTTP request (network errors and retryable 5xx) and the first backoff (doubles)
    max_attempts: int = limits.HTTP_MAX_ATTEMPTS
    first_backoff_s: float = limits.HTTP_FIRST_BACKOFF_S
    max_redirects: int = limits.MAX_REDIRECTS
    #: body cap (compressed, as transferred) and cap on what gzip/tar wrappers may expand to
    max_module_bytes: int = limits.MAX_MODULE_BYTES
    max_decompressed_bytes: int = limits.MAX_DECOMPRESSED_BYTES
    #: file:// urls are served only from below these directories (none: file:// is refused)
    file_roots: tuple[Path, ...] = ()
    #: CIDRs refused in addition to loopback, link-local and cloud-metadata addresses
    blocked_cidrs: tuple[str, ...] = ()
    #: loopback (127.0.0.0/8, ::1, 0.0.0.0/8, ::) is refused unless this is set: a server fetching URLs that users
    #: write must not reach its own local services (the operator's and agent's default); local runs opt in
    allow_loopback: bool = False
    #: registries (host or host:port, "*" for all) that may be spoken to over plain HTTP
    allow_insecure_registries: tuple[str, ...] = ()
    #: CA bundle per source host (host or host:port; "*" for every source); others use system roots
    ca_bundles: Mapping[str, Path] = field(default_factory=dict)
    #: CA certificates trusted beside the system roots, for every source (a private CA of origins and registries)
    extra_ca_file: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: re-resolve mutable OCI tags (and http urls) cached longer than this, even under IfNotPresent
    reresolve_interval_s: float | None = None
    #: cache entries unused for this long are removed by `Fetcher.expire()`
    unused_expiry_s: float = limits.CACHE_UNUSED_EXPIRY_S
    user_agent: str = "meshplug-fetch/0.1"

    def sanitized(self) -> FetchOptions:
        """Check and normalise every field; raise ConfigError naming the first bad one."""
        self._check_numbers()
        return dataclasses.replace(
            self,
            overall_timeout_s=max(self.overall_timeout_s, self.request_timeout_s),
            file_roots=self._roots(),
            blocked_cidrs=self._cidrs(),
            allow_insecure_registries=tuple(r.lower() for r in self.allow_insecure_registries),
            ca_bundles=types.MappingProxyType(self._bundles()),
            cache_dir=Path(self.cache_dir).absolute(),
        )

    def _check_numbers(self) -> None:
        if self.request_timeout_s <= 0 or self.overall_timeout_s <= 0:
            raise errors.ConfigError("fetch timeouts must be positive")
        if self.max_attempts < 1 or self.first_backoff_s < 0 or self.max_redirects < 0:
            raise errors.ConfigError("max_attempts must be >= 1, backoff and redirects >= 0")
        if not 0 < self.max_module_bytes <= limits.MAX_MODULE_BYTES:
            raise errors.ConfigError(f"max_module_bytes must be in 1..{limits.MAX_MODULE_BYTES}")
        if not 0 < self.max_decompressed_bytes <= limits.MAX_DECOMPRESSED_BYTES:
            raise errors.ConfigError(f"max_decompressed_bytes must be in 1..{limits.MAX_DECOMPRESSED_BYTES}")
        if self.reresolve_interval_s is not None and self.reresolve_interval_s < 0:
            raise errors.ConfigError("reresolve_interval_s must be >= 0")
        if self.unused_expiry_s <= 0:
            raise errors.ConfigError("unused_expiry_s must be positive")

    def _cidrs(self) -> tuple[str, ...]:
        out = []
        for cidr in self.blocked_cidrs:
            try:
                out.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                raise errors.ConfigError(f"blocked_cidrs: not a CIDR: {cidr!r}") from None
        return tuple(out)

    def _roots(self) -> tuple[Path, ...]:
        roots = []
        for root in self.file_roots:
            path = Path(root)
            if not path.is_absolute():
                raise errors.ConfigError(f"file_roots: not an absolute path: {str(root)!r}")
            roots.append(path.resolve())
        return tuple(roots)

    def _bundles(self) -> dict[str, Path]:
        if self.extra_ca_file is not None and not Path(self.extra_ca_file).is_file():
            raise errors.ConfigError(f"extra CA file is not a file: {str(self.extra_ca_file)!r}")
        bundles = {}
        for source, bundle in self.ca_bundles.items():
            path = Path(bundle)
            if not path.is_file():
                raise errors.ConfigError(f"CA bundle for {source!r} is not a file: {str(bundle)!r}")
            bundles[source.lower()] = path
        return bundles

    def blocked_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.blocked_cidrs)

    def ca_bundle_for(self, host: str, port: int | None) -> Path | None:
        """The CA bundle configured for ``host[:port]``, then for ``host``, then for ``*``."""
        host = host.lower()
        for key in (f"{host}:{port}" if port else None, host, "*"):
            if key is not None and key in self.ca_bundles:
                return self.ca_bundles[key]
        return None

    def insecure_allowed(self, registry: str) -> bool:
        """Whether ``registry`` (``host`` or ``host:port``) may be spoken to over plain HTTP."""
        registry = registry.lower()
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
        return any(r in ("*", registry, host) for r in self.allow_insecure_registries)

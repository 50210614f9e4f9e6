"""SSRF guard: refuse loopback, link-local, cloud-metadata and configured addresses at connect time.

Loopback is refused unless allowed (``FetchOptions.allow_loopback``: local runs and the test bed opt in; the
operator's ``--allow-loopback``, the agent config's ``modules.allow_loopback``); the rest is always refused.

`guarded_session()` (called by `http` and `oci`) returns a requests Session whose urllib3 connections
resolve the host themselves, check every resolved address with `Guard.check()`, and connect to the
address they checked (no second DNS lookup that a rebinding server could answer differently). Every
connection is checked, so redirects and token realms are covered without extra code; callers also call
`check_url()` on each hop so refusals happen before any socket is opened. Environment proxies are
ignored (a proxy would make the guard check the proxy, not the target).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from meshplug import errors
from meshplug.fetch.artifact import Reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: always refused: link-local (where the cloud metadata services live) and other metadata endpoints
DEFAULT_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(c)
    for c in (
        "169.254.0.0/16",  # IPv4 link-local; AWS/GCP/Azure/OCI metadata at 169.254.169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure wire server
    )
)
#: IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it: NAT64's well-known prefix (RFC
#: 6052; on an IPv6-only cluster with DNS64, 64:ff9b::a9fe:a9fe is the metadata service) and IPv4-compatible
#: addresses (::a.b.c.d); the IPv4 address inside is what is judged (so are IPv4-mapped and 6to4 addresses)
EMBEDDING_V4: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::/96"),
)
#: refused unless loopback is allowed; 0.0.0.0 and :: reach the local host on Linux
LOOPBACK: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(c) for c in ("127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128")
)


class Guard:
    """Decides whether an address may be connected to."""

    def __init__(self, extra_blocked: Iterable[IPNetwork] = (), *, allow_loopback: bool = False) -> None:
        self.blocked: tuple[IPNetwork, ...] = DEFAULT_BLOCKED + tuple(extra_blocked)
        if not allow_loopback:
            self.blocked += LOOPBACK

    def refused(self, ip: IPAddress) -> bool:
        return any(
            candidate.version == net.version and candidate in net for candidate in _judged(ip) for net in self.blocked
        )

    def check(self, host: str, ip: IPAddress) -> None:
        if self.refused(ip):
            raise errors.FetchError(f"refused to connect to {host} ({ip}): blocked address", reason=Reason.BLOCKED)

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """getaddrinfo for ``host``, every answer checked; raises FetchError(blocked) if any is refused."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            self.check(host, ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        return infos

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is a literal blocked address (names are checked at connect time)."""
        host = urllib.parse.urlsplit(url).hostname or ""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        self.check(host, ip)


def _judged(ip: IPAddress) -> tuple[IPAddress, ...]:
    """``ip`` and the IPv4 address it reaches when it embeds one (mapped, 6to4, NAT64, IPv4-compatible)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return (ip,)
    inner = ip.ipv4_mapped or ip.sixtofour
    if inner is None and any(ip in net for net in EMBEDDING_V4) and int(ip) & 0xFFFFFFFF > 1:
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # ::/96 holds :: and ::1 themselves: not IPv4
    return (ip,) if inner is None else (ip, inner)


def _connect(guard: Guard, host: str, port: int, timeout: Any, options: Any) -> socket.socket:
    """Connect to the first reachable checked address of ``host``."""
    try:
        infos = guard.resolve(host, port)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from exc
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for opt in options or ():
                sock.setsockopt(*opt)
            if isinstance(timeout, int | float):
                sock.settimeout(timeout)
            sock.connect(addr)
            return sock
        except OSError as exc:
            last = exc
            sock.close()
    raise last or OSError(f"no address for {host}")


class _GuardedHTTPConnection(urllib3.connection.HTTPConnection):
    guard: ClassVar[Guard]

    def _new_conn(self) -> socket.socket:
        try:
            return _connect(self.guard, self._dns_host, self.port, self.timeout, self.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect to {self.host}: {exc}") from exc


class _GuardedHTTPSConnection(urllib3.connection.HTTPSConnection):
    guard: ClassVar[Guard]

    def _new_conn(self) -> socket.socket:
        return _GuardedHTTPConnection._new_conn(self)  # type: ignore[arg-type]


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, guard: Guard) -> None:
        self._http_conn = type("GuardedHTTPConnection", (_GuardedHTTPConnection,), {"guard": guard})
        self._https_conn = type("GuardedHTTPSConnection", (_GuardedHTTPSConnection,), {"guard": guard})
        super().__init__(max_retries=0, pool_maxsize=16)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        http_pool = type(
            "GuardedHTTPConnectionPool",
            (urllib3.connectionpool.HTTPConnectionPool,),
            {"ConnectionCls": self._http_conn},
        )
        https_pool = type(
            "GuardedHTTPSConnectionPool",
            (urllib3.connectionpool.HTTPSConnectionPool,),
            {"ConnectionCls": self._https_conn},
        )
        self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise errors.FetchError("proxies are not supported by the guarded fetcher", reason=Reason.BLOCKED)


def guarded_session(guard: Guard, *, user_agent: str) -> requests.Session:
    """A Session whose every connection is checked by ``guard``; no environment proxies or .netrc."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {}
    adapter = _GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    session.headers["Accept-Encoding"] = "identity"
    return session


def system_ca_bundle(extra: Path | None = None) -> str | bool:
    """The system's CA file when there is one (else requests' own bundle): the default TLS roots; with ``extra``,
    a file holding both (written once per content into a private temporary directory)."""
    paths = ssl.get_default_verify_paths()
    system: str | bool = True
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            system = candidate
            break
    if extra is None:
        return system
    if isinstance(system, str):
        roots = Path(system).read_bytes()
    else:
        import certifi  # noqa: PLC0415 - requests' own bundle, only when the system has none

        roots = Path(certifi.where()).read_bytes()
    data = roots.rstrip(b"\n") + b"\n" + Path(extra).read_bytes()
    path = Path(tempfile.gettempdir()) / f"meshplug-ca-{hashlib.sha256(data).hexdigest()[:16]}.pem"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)

"""HTTP transport (retries, timeouts, capped streaming, guarded redirects) and the http(s) module source.

`Transport` is used by this module's `fetch_http` and by `oci` (the registry API is HTTP too); the
`Fetcher` facade builds one per Fetcher. Policy (Istio's agent): each request has its own timeout and
the whole fetch an overall deadline; network errors and 5xx other than 501/505/511 are retried with
exponential backoff, 4xx never; redirects are followed by hand (each hop re-checked by the SSRF guard,
https never downgraded, credentials dropped when the host changes); bodies are streamed with a cap
and must be exactly as long as announced.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import requests
import urllib3.exceptions

from meshplug import errors
from meshplug.fetch import guard as guard_mod
from meshplug.fetch.artifact import Reason
from meshplug.fetch.options import FetchOptions
from meshplug.fetch.unbox import unbox

T = TypeVar("T")
#: called with (bytes received so far, total if announced)
Progress = Callable[[int, int | None], None]

#: 5xx answers that will not get better by asking again
NOT_RETRIED_5XX = frozenset({501, 505, 511})
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Retryable(Exception):
    """A failure worth another attempt; becomes a FetchError with ``reason`` when attempts run out."""

    def __init__(self, message: str, reason: str = Reason.DOWNLOAD_FAILURE) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Deadline:
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


def status_error(resp: requests.Response, what: str) -> NoReturn:
    """Raise the error an unexpected HTTP status stands for (Retryable for retryable 5xx)."""
    code = resp.status_code
    if code >= 500 and code not in NOT_RETRIED_5XX:
        raise Retryable(f"{what}: HTTP {code}")
    if code == 404:
        raise errors.FetchError(f"{what}: HTTP 404 not found", reason=Reason.NOT_FOUND)
    if code in (401, 403):
        raise errors.FetchError(f"{what}: HTTP {code} {resp.reason or 'unauthorized'}", reason=Reason.UNAUTHORIZED)
    raise errors.FetchError(f"{what}: HTTP {code} {resp.reason or ''}".rstrip(), reason=Reason.DOWNLOAD_FAILURE)


class Transport:
    """A guarded requests Session plus the retry, redirect and streaming policy."""

    def __init__(self, options: FetchOptions, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.guard = guard_mod.Guard(options.blocked_networks(), allow_loopback=options.allow_loopback)
        self.session = guard_mod.guarded_session(self.guard, user_agent=options.user_agent)
        self._system_roots = guard_mod.system_ca_bundle(options.extra_ca_file)
        self._sleep = sleep

    def close(self) -> None:
        self.session.close()

    def verify_for(self, url: str) -> str | bool:
        parts = urllib.parse.urlsplit(url)
        bundle = self.options.ca_bundle_for(parts.hostname or "", parts.port)
        return str(bundle) if bundle is not None else self._system_roots

    def with_retries(self, what: str, deadline: Deadline, attempt: Callable[[], T]) -> T:
        """Call ``attempt`` until it returns, raises a final error, or attempts/deadline run out."""
        backoff = self.options.first_backoff_s
        last: Retryable | None = None
        for number in range(1, self.options.max_attempts + 1):
            try:
                return attempt()
            except Retryable as exc:
                last = exc
            if number == self.options.max_attempts:
                break
            if deadline.remaining() <= backoff:
                raise errors.FetchError(
                    f"{what}: {last} (gave up after {number} attempts: overall deadline)", reason=Reason.TIMEOUT
                )
            self._sleep(backoff)
            backoff *= 2
        assert last is not None
        raise errors.FetchError(f"{what}: {last} (after {self.options.max_attempts} attempts)", reason=last.reason)

    def open(
        self,
        method: str,
        url: str,
        *,
        deadline: Deadline,
        headers: Mapping[str, str] | None = None,
        verify: str | bool | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        """One request, redirects followed by hand; the response of any status, body not yet read.

        ``verify`` overrides the CA choice for the first hop (a registry's token realm uses the
        registry's bundle when the realm host has none of its own).
        """
        send_headers = dict(headers or {})
        origin = _origin(url)
        for _ in range(self.options.max_redirects + 1):
            self._check_url(url)
            remaining = deadline.remaining()
            if remaining <= 0:
                raise errors.FetchError(f"{_redact(url)}: overall deadline passed", reason=Reason.TIMEOUT)
            timeout = min(self.options.request_timeout_s, remaining)
            try:
                resp = self.session.request(
                    method,
                    url,
                    headers=send_headers,
                    data=data,
                    stream=True,
                    allow_redirects=False,
                    timeout=(timeout, timeout),
                    verify=self.verify_for(url) if verify is None else verify,
                )
            except requests.exceptions.SSLError as exc:
                raise errors.FetchError(f"{_redact(url)}: TLS failed: {_short(exc)}") from None
            except requests.exceptions.Timeout as exc:
                raise Retryable(f"{_redact(url)}: timed out: {_short(exc)}", Reason.TIMEOUT) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise Retryable(f"{_redact(url)}: {_short(exc)}") from None
            except requests.exceptions.RequestException as exc:
                raise errors.FetchError(f"{_redact(url)}: {_short(exc)}") from None
            except ValueError as exc:  # requests parses a redirect's Location even when it does not follow it
                raise errors.FetchError(f"{_redact(url)}: invalid url in the answer: {exc}") from None
            if resp.status_code not in _REDIRECTS or "location" not in resp.headers:
                return resp
            location = resp.headers["location"]
            resp.close()
            try:
                target = urllib.parse.urljoin(url, location)
                _origin(target)
            except ValueError as exc:  # a bracketed host left open, a port that is no number or out of range
                raise errors.FetchError(
                    f"{_redact(url)}: redirect to an invalid url {location[:200]!r}: {exc}",
                    reason=Reason.DOWNLOAD_FAILURE,
                ) from None
            if urllib.parse.urlsplit(url).scheme == "https" and urllib.parse.urlsplit(target).scheme != "https":
                raise errors.FetchError(f"{_redact(url)}: redirect leaves https", reason=Reason.BLOCKED)
            if _origin(target) != origin:
                send_headers.pop("Authorization", None)
                verify = None
            if resp.status_code == 303:
                method = "GET"
            url = target
        raise errors.FetchError(f"more than {self.options.max_redirects} redirects", reason=Reason.DOWNLOAD_FAILURE)

    def _check_url(self, url: str) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise errors.FetchError(f"{_redact(url)}: scheme {scheme!r} is not fetched", reason=Reason.BLOCKED)
        self.guard.check_url(url)

    def read_body(self, resp: requests.Response, *, cap: int, deadline: Deadline, progress: Progress | None) -> bytes:
        """The whole body (no content decoding), at most ``cap`` bytes, exactly as long as announced."""
        what = _redact(resp.url)
        announced = resp.headers.get("content-length")
        total = int(announced) if announced and announced.isdigit() else None
        if total is not None and total > cap:
            resp.close()
            raise errors.FetchError(f"{what}: body of {total} bytes exceeds the cap of {cap}", reason=Reason.TOO_LARGE)
        body = bytearray()
        try:
            for chunk in resp.raw.stream(_CHUNK, decode_content=False):
                body += chunk
                if len(body) > cap:
                    raise errors.FetchError(f"{what}: body exceeds the cap of {cap} bytes", reason=Reason.TOO_LARGE)
                if deadline.remaining() <= 0:
                    raise errors.FetchError(f"{what}: overall deadline passed mid-body", reason=Reason.TIMEOUT)
                if progress is not None:
                    progress(len(body), total)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise Retryable(f"{what}: read timed out: {_short(exc)}", Reason.TIMEOUT) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Retryable(f"{what}: body truncated or broken after {len(body)} bytes: {_short(exc)}") from None
        finally:
            resp.close()
        if total is not None and len(body) != total:
            raise Retryable(f"{what}: body truncated: {len(body)} of {total} bytes")
        return bytes(body)

    def download(
        self,
        url: str,
        *,
        deadline: Deadline,
        cap: int,
        headers: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> bytes:
        """GET ``url`` with the full retry policy; the body bytes of a 200 answer."""

        def attempt() -> bytes:
            resp = self.open("GET", url, deadline=deadline, headers=headers)
            if resp.status_code != 200:
                resp.close()
                status_error(resp, _redact(url))
            return self.read_body(resp, cap=cap, deadline=deadline, progress=progress)

        return self.with_retries(_redact(url), deadline, attempt)


def fetch_http(transport: Transport, url: str, *, deadline: Deadline, progress: Progress | None = None) -> bytes:
    """The wasm module at an http(s) url (gzip/tar wrappers removed)."""
    body = transport.download(url, deadline=deadline, cap=transport.options.max_module_bytes, progress=progress)
    return unbox(body, cap=transport.options.max_decompressed_bytes)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _redact(url: str) -> str:
    """The url without userinfo or query (they may carry credentials)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return url.split("?", 1)[0].rpartition("@")[2][:200]  # not a url: what follows any userinfo, no query
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_CONNECTION_PREFIX = re.compile(r"^\w*Connection(?:Pool)?\([^)]*\): ")


def _short(exc: BaseException) -> str:
    """The innermost useful message of a requests/urllib3 exception chain, one line."""
    inner: BaseException = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None)
    if isinstance(reason, BaseException):
        inner = reason
    # urllib3 prefixes "<ConnectionClass>(host='h', port=p): "; the url already names the host
    return _CONNECTION_PREFIX.sub("", " ".join(str(inner).split()))[:200]

"""The one exception tree of meshplug. Every error a user can cause is one of these.

    MeshplugError                      exit code 1 unless stated
    ├── ConfigError                    bad user input: CLI flags, agent config file, plugin spec (exit 2)
    │   └── SpecError                  a WasmPlugin resource that cannot be turned into a PluginSpec
    ├── FetchError                     a module could not be supplied; ``reason`` is a metric label:
    │                                  download_failure, manifest_failure, checksum_mismatched,
    │                                  too_large, not_wasm, blocked, not_found, unauthorized, timeout
    │   └── SignatureError             no cosign signature of the module verifies under the required key(s)
    │                                      (reason signature_invalid; exit code 20), or the agent does not
    │                                      trust the key (signature_untrusted), or an agent that requires
    │                                      signed modules was pushed an unsigned one (signature_required)
    ├── ValidationError                a module fails the proxy-wasm ABI check; ``reasons`` lists why
    ├── HostError                      the wasm host could not run a plugin
    │   ├── PluginStartError           instantiate / _initialize / on_vm_start / on_configure failed
    │   └── PluginRuntimeError         a trap, CPU budget or memory cap hit while serving
    ├── ProtocolError                  a malformed or unauthenticated operator <-> agent message
    ├── PushError                      an agent rejected (NACK) or did not answer a config push
    └── ApplyError                     the Kubernetes API refused what the operator rendered

Exit codes of the CLI (`exit_code_of`), the same for every command: 0 success; 1 a module rejected (ABI check) or
another failure; 2 bad input (flags, files, specs); 3 a named object not found (``meshplug status PLUGIN``);
4 the Kubernetes API unreachable or refusing; 10-18 a module that could not be supplied, by reason (10 download,
11 manifest, 12 checksum, 13 too large, 14 not wasm, 15 blocked, 16 not found, 17 unauthorized, 18 timeout);
20 a signature refused.

Stages raise the most specific class; callers catch the narrowest class they can act on.
Messages are one line, name the offending value, and never contain secrets.
"""

from __future__ import annotations


class MeshplugError(Exception):
    """Base of every meshplug error."""

    exit_code: int = 1
    #: short machine-readable reason (metric label, condition reason)
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class ConfigError(MeshplugError):
    exit_code = 2
    reason = "invalid_config"


class SpecError(ConfigError):
    reason = "invalid_spec"


class FetchError(MeshplugError):
    reason = "download_failure"


class SignatureError(FetchError):
    exit_code = 20
    reason = "signature_invalid"


class ValidationError(MeshplugError):
    reason = "invalid_module"

    def __init__(self, message: str, *, reasons: tuple[str, ...] = (), reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.reasons = reasons


class HostError(MeshplugError):
    reason = "host_error"


class PluginStartError(HostError):
    reason = "start_failed"


class PluginRuntimeError(HostError):
    reason = "runtime_error"


class ProtocolError(MeshplugError):
    reason = "protocol_error"


class PushError(MeshplugError):
    reason = "push_failed"


class ApplyError(MeshplugError):
    reason = "apply_failed"


#: `FetchError.reason` -> exit code (see the module docstring)
FETCH_EXIT_CODES: dict[str, int] = {
    "download_failure": 10,
    "manifest_failure": 11,
    "checksum_mismatched": 12,
    "too_large": 13,
    "not_wasm": 14,
    "blocked": 15,
    "not_found": 16,
    "unauthorized": 17,
    "timeout": 18,
    "signature_invalid": 20,
    "signature_untrusted": 20,
    "signature_required": 20,
}


def exit_code_of(exc: MeshplugError) -> int:
    """The CLI's exit code for ``exc``: by reason for supply failures, else the class's."""
    if isinstance(exc, FetchError):
        return FETCH_EXIT_CODES.get(exc.reason, FETCH_EXIT_CODES["download_failure"])
    return exc.exit_code

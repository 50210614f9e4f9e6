"""Which keys a WasmPlugin's module must be signed with: its own ``verificationKey`` (Istio's field), else the
operator's policy (``--require-signatures`` with ``--trusted-key``).

Called by `meshplug.controller.reconcile` for every fetch, the agent path's refetches of other plugins included,
so no path delivers a module the policy refuses. The keys go to `fetch.Fetcher.fetch(keys=...)`, which refuses
(`errors.SignatureError`, condition and Event reason ``SignatureInvalid``) a module without a cosign signature
under one of them for exactly its manifest digest, before the module is pulled.

    verificationKey set          -> that key, whatever the policy
    unset, signatures required   -> the trusted keys; none configured: refused (nothing could verify it)
    unset, not required          -> no check
    inline Lua (TrafficExtension)  -> no check: there is no module, the code is in the resource
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplug import errors, fetch, spec


@dataclass(frozen=True)
class SignaturePolicy:
    required: bool = False
    trusted: tuple[fetch.PublicKey, ...] = ()

    def keys_for(self, plugin: spec.PluginSpec) -> tuple[fetch.PublicKey, ...]:
        if plugin.lua is not None:  # inline Lua: no module to sign (the code is in the resource itself)
            return ()
        if plugin.verification_key:
            try:
                return (fetch.load_public_key(plugin.verification_key, what="verificationKey"),)
            except errors.ConfigError as exc:  # a bad key refuses the module like a bad signature would
                raise errors.SignatureError(f"{exc.message}: cannot verify the module") from None
        if not self.required:
            return ()
        if not self.trusted:
            raise errors.SignatureError(
                "the operator requires signed modules (--require-signatures) but the plugin has no "
                "verificationKey and the operator trusts no key (--trusted-key)"
            )
        return self.trusted

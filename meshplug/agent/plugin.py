"""A configured plugin of the proxy-wasm host (`Plugin`): its root context on a VM, start, the chain filter
that makes stream contexts, and its VM's replacement -- FAIL_RELOAD reloads with Envoy's backoff, recycling a VM
whose memory grew past the host's cap -- and shutdown.

Made by meshplug.agent.host.Host.load; the chain calls `new_stream` per request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import wasmtime

from meshplug import errors
from meshplug.agent import hostapi, streamapi
from meshplug.agent.contexts import FailedStream, HttpContext, TcpStream
from meshplug.agent.hostapi import (
    PluginConfig,
    RootContext,
)
from meshplug.agent.streamapi import FailStrategy, Phase
from meshplug.agent.wasmvm import WasmVm

if TYPE_CHECKING:
    from meshplug.agent.host import Host

log = logging.getLogger("meshplug.agent.host")


# --- plugin -----------------------------------------------------------------------------------------
class Plugin(hostapi.PluginRef):
    """A configured plugin (root context) on a VM; implements streamapi.Filter."""

    def __init__(self, host: Host, config: PluginConfig, module: wasmtime.Module, digest: str) -> None:
        self.host = host
        self.config = config
        self.module = module
        self.digest = digest
        self.generation = 0
        self.reloads = 0
        self.recycles = 0  # VMs replaced because their memory grew past the host's recycle_bytes
        self._reload_at = 0.0  # host.clock() of the last reload
        self._reload_gap = 0.0  # least time until the next one (0: none yet)
        self.vm: WasmVm
        self.root: RootContext

    # streamapi.Filter
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def phase(self) -> Phase:
        return self.config.phase

    @property
    def priority(self) -> int | None:
        return self.config.priority

    @property
    def fail_strategy(self) -> FailStrategy:
        return self.config.fail_strategy

    @property
    def failed(self) -> errors.PluginRuntimeError | None:
        return self.vm.failed

    def start(self, shared: WasmVm | None) -> None:
        if shared is None:
            shared = self.host.new_vm(self.module, self.config, self.digest)
        wvm = shared
        self.vm = wvm
        root = RootContext(wvm, wvm.next_id(), self)
        self.root = root
        wvm.contexts[root.id] = root
        wvm.roots.append(root)
        wvm.begin_plugin_start()
        try:
            if not wvm.invoke(root, "proxy_on_context_create", root.id, 0):
                raise self._start_error("proxy_on_context_create")
            root.in_callback = "vm_start"
            ok, r = wvm.call(root, "proxy_on_vm_start", root.id, len(self.config.vm_configuration))
            if not ok or (r == 0 and r is not None):
                raise self._start_error("proxy_on_vm_start")
            root.in_callback = "configure"
            root.buffers[hostapi.BUF_PLUGIN_CONFIGURATION] = self.config.configuration
            ok, r = wvm.call(root, "proxy_on_configure", root.id, len(self.config.configuration))
            if not ok or (r == 0 and r is not None):
                raise self._start_error("proxy_on_configure")
        finally:
            root.in_callback = ""
            root.buffers.pop(hostapi.BUF_PLUGIN_CONFIGURATION, None)
            wvm.end_plugin_start()

    def _start_error(self, step: str) -> errors.PluginStartError:
        failed = self.vm.failed
        detail = f"trapped: {failed.message}" if failed is not None else "returned false"
        reason = "configure_failed" if step == "proxy_on_configure" else "start_failed"
        return errors.PluginStartError(f"plugin {self.config.name}: {step} {detail}", reason=reason)

    def new_stream(self, control: streamapi.StreamControl) -> streamapi.FilterStream | None:
        if self.vm.failed is not None:
            if self.config.fail_strategy == FailStrategy.FAIL_OPEN:
                return None
            if self.config.fail_strategy == FailStrategy.FAIL_RELOAD and not self.reload():
                return FailedStream()
            if self.config.fail_strategy == FailStrategy.FAIL_CLOSE:
                return FailedStream()
        return HttpContext(self.vm, self.root, control, self)

    def new_connection(self, info: streamapi.StreamInfo | None = None) -> TcpStream | None:
        if self.vm.failed is not None and not (self.config.fail_strategy == FailStrategy.FAIL_RELOAD and self.reload()):
            return None
        return TcpStream(self.vm, self.root, info or streamapi.StreamInfo())

    def reload(self) -> bool:
        """A fresh VM for this plugin after a runtime failure (FAIL_RELOAD); False while backing off.

        The first reload is immediate; each further one waits the current gap since the previous reload,
        the gap doubling from `host.reload_backoff_ms` up to 10x and starting over once a reloaded VM
        outlived the largest gap (Envoy's ReloadConfig backoff). A plugin that shares its VM by vm_id
        rejoins the VM another plugin of the same key already reloaded.
        """
        now = self.host.clock()
        base = self.host.reload_backoff_ms / 1000.0
        if self._reload_gap and now - self._reload_at < self._reload_gap:
            return False
        if not self._reload_gap or now - self._reload_at >= 10 * base:
            self._reload_gap = base  # the first reload, or the previous VM lasted: not a crash loop
        else:
            self._reload_gap = min(self._reload_gap * 2, 10 * base)
        self._reload_at = now
        self.generation += 1
        self.reloads += 1
        config = self.config
        shared = self.host.vms.get((config.vm_id, self.digest, config.vm_configuration, config.env))
        try:
            self.start(shared if config.vm_id and shared is not None and shared.failed is None else None)
        except errors.PluginStartError as exc:
            log.error("plugin %s: reload failed: %s", self.config.name, exc.message)
            return False
        log.warning("plugin %s: reloaded its VM (reload #%d)", self.config.name, self.reloads)
        return True

    def recycle(self) -> bool:
        """Move to a fresh VM (same module, configuration and vm_id; plugins sharing the old VM join the fresh
        one the first of them started), then let the old root context go as at a shutdown: proxy_on_done,
        proxy_on_delete. Not a failure (no backoff, no 503): the old VM served every stream it had. False, and
        nothing changed, when the fresh VM does not start."""
        old_vm, old_root, generation = self.vm, self.root, self.generation
        config = self.config
        shared = self.host.vms.get((config.vm_id, self.digest, config.vm_configuration, config.env))
        if not config.vm_id or shared is old_vm or (shared is not None and shared.failed is not None):
            shared = None
        self.generation += 1
        try:
            self.start(shared)
        except errors.PluginStartError as exc:
            self.vm, self.root, self.generation = old_vm, old_root, generation
            old_vm.recycle = False  # try again at a later check
            log.error("plugin %s: recycling its VM failed, keeping the old one: %s", config.name, exc.message)
            return False
        self.recycles += 1
        if old_vm.failed is None and not old_root.deleted:
            old_vm.invoke(old_root, "proxy_on_done", old_root.id)
            old_vm.invoke(old_root, "proxy_on_delete", old_root.id)
            old_root.deleted = True
        old_vm.contexts.pop(old_root.id, None)
        if not old_vm.contexts:
            old_vm.roots.clear()
        log.warning("plugin %s: recycled its VM (recycle #%d)", config.name, self.recycles)
        return True

    def stop(self) -> None:
        """Shut down: proxy_on_done(root), then on_delete unless the plugin defers with proxy_done()."""
        root, wvm = self.root, self.vm
        if wvm.failed is not None or root.deleted:
            return
        ok, r = wvm.call(root, "proxy_on_done", root.id)
        if ok and r == 0 and wvm.func("proxy_on_done") is not None:
            root.done_pending = True
            return
        self.delete_root()

    def delete_root(self) -> None:
        root = self.root
        if not root.deleted:
            self.vm.invoke(root, "proxy_on_delete", root.id)
            root.deleted = True
            self.vm.contexts.pop(root.id, None)

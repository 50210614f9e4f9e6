"""WASI preview1 / wasi_unstable shims for proxy-wasm guests, as proxy-wasm-cpp-host behaves (ABI ref. 4.2).

Called by meshplug.agent.abi, which binds these under both module names, each only when the module's
declared import type equals meshplug.abi_table's (anything else gets a NOSYS stub of the declared type).
No filesystem, no sockets, no real sleeping: stdout/stderr go to the plugin log, clocks and randomness are
real, `poll_oneoff` reports no events and success (the Go runtime aborts on any error there), `proc_exit`
raises `vm.GuestExit` (success only when `_start` exits with 0; the host decides).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from meshplug import limits
from meshplug.agent import hostapi, vm

ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_FAULT = 21
ERRNO_INVAL = 28
ERRNO_NOENT = 44
ERRNO_NOSYS = 52
ERRNO_NOTSUP = 58

_STD = (1, 2)


class Wasi:
    """The WASI functions of one VM."""

    def __init__(self, wvm: hostapi.Vm) -> None:
        self.vm = wvm

    def shim(self, name: str) -> Callable[..., int | None] | None:
        fn = getattr(self, f"w_{name}", None)
        if fn is None:
            return None

        def wrapped(*args: int) -> int | None:
            try:
                result: int | None = fn(*args)
            except vm.MemoryFault:
                return ERRNO_FAULT
            return result

        return wrapped

    @property
    def guest(self) -> vm.Guest:
        return self.vm.guest

    def _env(self) -> list[bytes]:
        return [f"{k}={v}".encode() + b"\0" for k, v in self.vm.env]

    # -- output --------------------------------------------------------------------------------------
    def _gather(self, iovs: int, count: int) -> bytes:
        out = []
        for i in range(count):
            base = iovs + 8 * i
            ptr, size = self.guest.read_u32(base), self.guest.read_u32(base + 4)
            out.append(self.guest.read(ptr, size))
        return b"".join(out)

    def w_fd_write(self, fd: int, iovs: int, count: int, nwritten: int) -> int:
        if fd not in _STD:
            return ERRNO_BADF
        data = self._gather(iovs, count)
        text = data[:-1] if data.endswith(b"\n") else data
        self.vm.log(2 if fd == 1 else 4, text.decode(errors="replace"))
        self.guest.write_u32(nwritten, len(data))
        return ERRNO_SUCCESS

    def w_fd_pwrite(self, fd: int, iovs: int, count: int, _offset: int, nwritten: int) -> int:
        return self.w_fd_write(fd, iovs, count, nwritten)

    def w_fd_read(self, *_a: int) -> int:
        return ERRNO_NOSYS

    def w_fd_pread(self, *_a: int) -> int:
        return ERRNO_NOSYS

    def w_fd_seek(self, *_a: int) -> int:
        return ERRNO_SUCCESS

    def w_fd_close(self, *_a: int) -> int:
        return ERRNO_SUCCESS

    def w_fd_fdstat_get(self, fd: int, ptr: int) -> int:
        if fd not in _STD:
            return ERRNO_BADF
        self.guest.write(ptr, (0).to_bytes(8, "little") + (64).to_bytes(8, "little") + bytes(8))
        return ERRNO_SUCCESS

    def w_fd_fdstat_set_flags(self, *_a: int) -> int:
        return ERRNO_NOSYS

    def _std_only(self, fd: int, *_a: int) -> int:
        return ERRNO_SUCCESS if fd in _STD else ERRNO_BADF

    w_fd_fdstat_set_rights = _std_only
    w_fd_filestat_set_size = _std_only
    w_fd_filestat_set_times = _std_only
    w_fd_allocate = _std_only
    w_fd_datasync = _std_only
    w_fd_sync = _std_only

    def w_fd_advise(self, *_a: int) -> int:
        return ERRNO_SUCCESS

    def w_fd_tell(self, fd: int, ret: int) -> int:
        if fd not in _STD:
            return ERRNO_BADF
        self.guest.write_u64(ret, 0)
        return ERRNO_SUCCESS

    def w_fd_readdir(self, _fd: int, _buf: int, _len: int, _cookie: int, ret: int) -> int:
        self.guest.write_u32(ret, 0)
        return ERRNO_NOTSUP

    def w_fd_renumber(self, fd: int, to: int) -> int:
        return ERRNO_NOTSUP if fd in _STD and to in _STD else ERRNO_BADF

    def w_fd_prestat_get(self, *_a: int) -> int:
        return ERRNO_BADF  # ends the runtime's preopen scan

    def w_fd_prestat_dir_name(self, *_a: int) -> int:
        return ERRNO_NOSYS

    def w_fd_filestat_get(self, *_a: int) -> int:
        return ERRNO_BADF

    def w_path_open(self, *_a: int) -> int:
        return ERRNO_NOENT

    def _notsup(self, *_a: int) -> int:
        return ERRNO_NOTSUP

    w_path_create_directory = _notsup
    w_path_filestat_get = _notsup
    w_path_filestat_set_times = _notsup
    w_path_link = _notsup
    w_path_remove_directory = _notsup
    w_path_rename = _notsup
    w_path_symlink = _notsup
    w_path_unlink_file = _notsup
    w_sock_accept = _notsup
    w_sock_recv = _notsup
    w_sock_send = _notsup
    w_sock_shutdown = _notsup

    def w_path_readlink(self, *args: int) -> int:
        self.guest.write_u32(args[-1], 0)
        return ERRNO_NOTSUP

    # -- environment, args -------------------------------------------------------------------------
    def w_environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        env = self._env()
        self.guest.write_u32(count_ptr, len(env))
        self.guest.write_u32(size_ptr, sum(len(e) for e in env))
        return ERRNO_SUCCESS

    def w_environ_get(self, array_ptr: int, buf_ptr: int) -> int:
        pos = buf_ptr
        for i, entry in enumerate(self._env()):
            self.guest.write_u32(array_ptr + 4 * i, pos)
            self.guest.write(pos, entry)
            pos += len(entry)
        return ERRNO_SUCCESS

    def w_args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        self.guest.write_u32(argc_ptr, 0)
        self.guest.write_u32(size_ptr, 0)
        return ERRNO_SUCCESS

    def w_args_get(self, *_a: int) -> int:
        return ERRNO_SUCCESS

    # -- clocks, random, scheduling ------------------------------------------------------------------
    def w_clock_time_get(self, clock: int, _precision: int, ret: int) -> int:
        if clock == 0:
            self.guest.write_u64(ret, time.time_ns())
        elif clock == 1:
            self.guest.write_u64(ret, time.monotonic_ns())
        else:
            return ERRNO_NOTSUP
        return ERRNO_SUCCESS

    def w_clock_res_get(self, clock: int, ret: int) -> int:
        if clock not in (0, 1):
            return ERRNO_NOTSUP
        self.guest.write_u64(ret, 1)
        return ERRNO_SUCCESS

    def w_random_get(self, ptr: int, size: int) -> int:
        if size > limits.MAX_RANDOM_BYTES:
            return ERRNO_INVAL
        self.guest.write(ptr, os.urandom(size))
        return ERRNO_SUCCESS

    def w_sched_yield(self) -> int:
        return ERRNO_SUCCESS

    def w_poll_oneoff(self, _in: int, _out: int, _n: int, nevents: int) -> int:
        self.guest.write_u32(nevents, 0)
        return ERRNO_SUCCESS

    def w_proc_exit(self, code: int) -> None:
        raise vm.GuestExit(code)

    def w_proc_raise(self, *_a: int) -> int:
        return ERRNO_NOSYS

"""Types of the C extension meshplug/agent/_wasmcall.c + _wasmstore.c (see their header comments)."""

from collections.abc import Callable

MAX_VALS: int
TRAMPOLINE: int

def init(
    call_unchecked: int,
    set_epoch_deadline: int,
    trap_new: int,
    memory_data: int,
    memory_data_size: int,
    engine_clone: int,
    engine_increment_epoch: int,
    engine_delete: int,
    memory_fault: type[Exception],
    /,
) -> None: ...
def call_each(fns: tuple[GuestCall, ...], arg: object, /) -> int: ...

class Epoch:
    value: int

class Ticker:
    running: bool
    def __init__(self, epoch: Epoch, engine: int, period_ms: int) -> None: ...
    def add_engine(self, engine: int, /) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...

class State:
    armed: int
    deadline_ticks: int
    depth: int
    dirty: int
    release_gil: int
    caller: int
    seq_index: int
    find_memory: Callable[[], object] | None
    def __init__(self, ctx: int, epoch: Epoch, deadline_ticks: int) -> None: ...
    def take_exc(self) -> BaseException | None: ...
    def set_memory(self, handle: int, /) -> None: ...
    def memory_size(self) -> int: ...
    def read(self, ptr: int, size: int, /) -> bytes: ...
    def read_lower(self, ptr: int, size: int, /) -> bytes: ...
    def write(self, ptr: int, data: bytes | bytearray | memoryview, /) -> None: ...
    def replace_into(self, ptr: int, size: int, target: bytearray, stop: int, /) -> None: ...
    def read_u32(self, ptr: int, /) -> int: ...
    def write_u32(self, ptr: int, value: int, /) -> None: ...
    def write_u64(self, ptr: int, value: int, /) -> None: ...

class GuestCall:
    def __init__(
        self, state: State, func: int, params: bytes, results: bytes, fail: Callable[[int, int], None]
    ) -> None: ...
    def __call__(self, *args: int | float) -> int: ...

class HostFunc:
    env: int
    def __init__(
        self,
        state: State,
        fn: Callable[..., int | float | None],
        params: bytes,
        result: int,
        faults: tuple[tuple[type[BaseException], int], ...],
        guard_bound: int = -1,
        guard_result: int = 0,
    ) -> None: ...

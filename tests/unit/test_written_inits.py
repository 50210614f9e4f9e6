"""The per-request records write out their ``__init__`` (so mypyc compiles it): each must set every field it declares,
positionally in field order, as the dataclasses-generated one did.

Checked on the interpreted modules (a subprocess with MESHPLUG_NATIVE=0): their source is what mypyc compiles, and only
there can a sentinel of any type stand for each field and the signature be read."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

RECORDS = (
    "streamapi.LocalReply",
    "streamapi.StreamInfo",
    "streamapi.SendHeaders",
    "streamapi.SendData",
    "streamapi.SendTrailers",
    "streamapi.AbortUpstream",
    "streamapi.ResetStream",
    "callouts.HttpCallout",
    "callouts.HttpCalloutResult",
    "callouts.LogRecord",
)

CHECK = """
import dataclasses, inspect, sys
from meshplug import native
from meshplug.agent import callouts, streamapi
assert not native.STATUS.compiled, native.STATUS
cls = eval(sys.argv[1])
fields = [f.name for f in dataclasses.fields(cls)]
params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
assert params == fields, (params, fields)
values = [object() for _ in fields]
record = cls(*values)
assert [getattr(record, name) for name in fields] == values
try:
    setattr(record, fields[0], None)
except dataclasses.FrozenInstanceError:
    pass
else:
    raise AssertionError("not frozen")
"""


@pytest.mark.parametrize("record", RECORDS)
def test_a_written_init_sets_every_field_in_order(record: str) -> None:
    env = {**os.environ, "MESHPLUG_NATIVE": "0"}
    env.pop("MESHPLUG_REQUIRE_NATIVE", None)
    done = subprocess.run([sys.executable, "-c", CHECK, record], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr

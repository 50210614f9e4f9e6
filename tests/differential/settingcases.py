"""The table shape the HCM-setting differential tests share (test_differential_request_timeout,
test_differential_stream_limits): a case is (name, setting, listener, run), run once against each plane's proxy
for that setting and listener (Envoy first), with what a plugin read (c/propdump, on a plugin listener) and how far
the setting's counter moved beside what the client saw; a case the agent still gets wrong is a strict xfail."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.differential import propdump
from tests.differential.propdump import Proxy
from tests.testbed import planes

#: (name, setting, listener, run: the client's side, given the listener's port)
Case = tuple[str, str, str, Callable[[int], object]]
#: per "<plane>/<setting>/<listener>": the proxy, a reader of the setting's counter
Proxies = Mapping[str, tuple[Proxy, Callable[[], int]]]


def param(case: Case, case_id: str, differs: Mapping[str, str]) -> Any:
    """`case` as a pytest parameter named `case_id`, a strict xfail when `differs` says why the agent differs."""
    why = differs.get(case_id)
    return pytest.param(*case, id=case_id, marks=[pytest.mark.xfail(strict=True, reason=why)] if why else [])


def seen_by_planes(
    proxies: Proxies, setting: str, listener: str, run: Callable[[int], object], *, plugin: bool = True
) -> dict[str, tuple[object, dict[str, tuple[object, ...]], int]]:
    """Per plane: what `run` saw, what the plugin read per callback (`plugin`; else nothing) and the counter's
    change."""
    got = {}
    for plane in planes.PLANES:
        proxy, counter = proxies[f"{plane}/{setting}/{listener}"]
        before = counter()
        if plugin:
            seen, props = propdump.props_after(proxy, functools.partial(run, proxy.port))
        else:
            seen, props = run(proxy.port), {}
        got[plane] = (seen, props, counter() - before)
    return got

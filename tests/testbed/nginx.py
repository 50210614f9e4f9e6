"""Debian nginx-light as a fast upstream of the test bed (benchmarks, load during pushes).

`start_nginx(log_dir=...)` writes a config answering every path with 200 "hello" on a free port of
127.0.0.1 and waits until the port accepts; stop it with `.stop()` (by pid).
"""

from __future__ import annotations

from pathlib import Path

from tests.testbed import procs

NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_max_body_size 0;  # benchmarks send 1 MiB bodies a plugin grows
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "hello\\n"; }}
  }}
}}
"""


def start_nginx(*, log_dir: Path, name: str = "nginx", cpu: int | None = None) -> procs.Proc:
    binary = procs.which_or_fail("nginx", "install Debian nginx-light (scripts/install-system-deps.sh)")
    port = procs.free_port()
    work = log_dir / name
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port))
    argv = [binary, "-c", str(conf), "-p", str(work), "-e", str(work / "error.log")]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    return procs.start(
        name, argv, log_dir=log_dir, ready=lambda: procs.port_open(port), timeout=15, ports={"http": port}
    )

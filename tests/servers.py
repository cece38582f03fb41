"""Servers the tests start on this host, each bound to loopback and stopped by its process group
whatever happens: a Ray cluster of several nodes, an MLflow tracking server, an S3-compatible
object store."""
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.distributed import bindable_port


def stop_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a process started with start_new_session and everything it started."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def wait_until(ready, process: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    """Poll `ready()` until it holds; a process that exits or a timeout first is an error with its log."""
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


@contextmanager
def serving(command: list[str], url: str, log: Path, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 120) -> Iterator[subprocess.Popen]:
    """`command` in its own process group, once `url` answers; stopped with its children after."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: answers(url), process, log, f"{command[0]} did not answer on {url}", timeout)
        yield process
    finally:
        stop_group(process, signal.SIGTERM)


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with its own backend store and artifact root; yields its URI."""
    root.mkdir(parents=True, exist_ok=True)
    port = bindable_port("127.0.0.1", 0)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    with serving(command, f"http://127.0.0.1:{port}/health", root / "server.log"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def s3_server(bucket: str) -> Iterator[dict]:
    """moto's S3 in this process on 127.0.0.1, with `bucket` made; yields the environment that
    points AWS clients (pyarrow's, so Ray Train's) at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        s3_client(env).create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()


def s3_client(env: dict):
    """A boto3 S3 client of the store that `env` (from s3_server) points at."""
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])


class RayCluster:
    """A Ray cluster of separate nodes on this host, started with Ray's own CLI: one `ray start
    --block` per node, with its own temp dir, CPUs and ports, in its own process group (the
    raylet, its agents and workers), so a node is lost, or the cluster stopped, by killing that group.

    Each node has its own loopback address: Ray rewrites 127.0.0.1 into the host's address (so that
    a head named "localhost" is reachable from other machines) but keeps the rest of 127.0.0.0/8.
    Token authentication, as Ray starts a cluster by default, with this cluster's own token.
    """

    HEAD = "127.0.0.2"

    def __init__(self, root: Path, cpus_per_node: int = 1, env: dict | None = None):
        self.root, self.cpus, self.extra_env = root, cpus_per_node, env or {}
        # Ray's socket paths must fit in 107 bytes: the nodes' temp dirs are short, under /tmp
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.port = bindable_port(self.HEAD, 0)
        self.token = secrets.token_hex(32)
        self.nodes: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict:
        """What a driver (a stage, dvc) needs to join the cluster."""
        return {"RAY_ADDRESS": f"{self.HEAD}:{self.port}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start_node(self, ip: str) -> None:
        head = not self.nodes
        folder = Path(tempfile.mkdtemp(prefix=ip.rsplit(".", 1)[1] + "-", dir=self.temp))
        ports = {flag: str(bindable_port(ip, 0)) for flag in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port", "--metrics-export-port")}
        command = ["ray", "start", "--block", "--disable-usage-stats", "--num-cpus", str(self.cpus), "--node-ip-address", ip,
                   "--temp-dir", str(folder), *(x for pair in ports.items() for x in pair)]
        if head:
            command += ["--head", "--port", str(self.port), "--include-dashboard", "true", "--dashboard-host", ip,
                        "--dashboard-port", str(bindable_port(ip, 0)), "--ray-client-server-port", str(bindable_port(ip, 0))]
        else:
            command += ["--address", f"{self.HEAD}:{self.port}"]
        env = {**os.environ, **self.extra_env, **self.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        env.pop("RAY_ADDRESS")
        log = self.root / f"ray_start-{folder.name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[ip] = process
        try:
            wait_until(lambda: b"Ray runtime started" in log.read_bytes(), process, log, f"ray start ({ip}) failed")
        except RuntimeError:
            self.stop()
            raise

    def kill_node(self, ip: str) -> None:
        """The node lost at once, as when its machine dies."""
        stop_group(self.nodes.pop(ip))

    def stop(self) -> None:
        for ip in reversed(list(self.nodes)):
            self.kill_node(ip)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

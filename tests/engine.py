"""Real Docker Engine for the tests: reuse one that answers, else start dockerd."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

FAKEGAME_DIR = Path(__file__).parent / "fakegame"
FAKEGAME_IMAGE = "peon-test/fakegame:latest"
STARTUP_SECONDS = 60


def random_pool_base() -> int:
    """The first port of a random 100-port pool for one test, below Linux's ephemeral ports
    (32768 and up: an outgoing connection must not hold a port a test expects free).
    scripts/test runs two pytest shards side by side (PEON_TEST_SHARD 0 and 1); each draws
    from its own half, so tests running at the same time never share a pool."""
    shard = int(os.environ.get("PEON_TEST_SHARD", "0")) % 2
    return random.randrange(20000 + 3000 * shard, 23000 + 3000 * shard, 100)


def _answers() -> bool:
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except docker.errors.DockerException:
        return False
    return True


def ensure_engine() -> None:
    """Make sure an engine answers; start a background dockerd when we may."""
    if _answers():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0 or os.environ.get("DOCKER_HOST"):
        raise RuntimeError(
            "No Docker engine answers and none can be started here "
            "(install docker.io and run as root, or start dockerd)."
        )
    log = Path(tempfile.gettempdir()) / "peon-tests-dockerd.log"
    with log.open("ab") as out:
        subprocess.Popen([dockerd], stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if _answers():
            return
        time.sleep(0.5)
    raise RuntimeError(f"dockerd did not answer within {STARTUP_SECONDS} s; see {log}")


def busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.exists():
            out = (
                subprocess.run(
                    ["file", "-L", str(path)], capture_output=True, text=True, check=False
                ).stdout
                if shutil.which("file")
                else "static"
            )
            if "dynamically" not in out:
                return path
    raise RuntimeError(
        "A static busybox is needed to build test images: apt-get install busybox-static"
    )


def fakegame_context(ctx: Path) -> None:
    """The fake game's build context in `ctx`: its Dockerfile and script, static busybox and
    the RCON daemon compiled static, so both run in the FROM scratch image."""
    for name in ("Dockerfile", "game.sh"):
        shutil.copy(FAKEGAME_DIR / name, ctx / name)
    shutil.copy(busybox_binary(), ctx / "busybox")
    subprocess.run(
        ["gcc", "-static", "-Os", "-o", str(ctx / "rcond"), str(FAKEGAME_DIR / "rcond.c")],
        check=True,
    )


def build_fakegame(
    tag: str = FAKEGAME_IMAGE, version: str = "1", base_url: str | None = None
) -> str:
    """Build the fake game image FROM scratch + static busybox; returns the image id."""
    client = (
        docker.DockerClient(base_url=base_url, timeout=120)
        if base_url
        else docker.from_env(timeout=120)
    )
    with tempfile.TemporaryDirectory() as ctx:
        fakegame_context(Path(ctx))
        image, _ = client.images.build(
            path=ctx, tag=tag, buildargs={"GAME_VERSION": version}, rm=True, forcerm=True
        )
    client.close()
    return str(image.id)


class SecondEngine:
    """A second dockerd on this machine, the other "host" of the multi-host tests.

    Per ../shared/TESTING.md: its own socket, data root, exec root and pidfile, and its own
    bridge (created here), never --bridge=none beside the first engine. It leaves iptables to
    the first engine; published ports still answer on 127.0.0.1 through docker-proxy.
    """

    BRIDGE = "peon-br2"
    BRIDGE_ADDRESS = "10.223.0.1/24"

    def __init__(self, root: Path) -> None:
        # Short paths: containerd's socket lives under the exec root (sun_path is 108 bytes).
        self.root = root
        self.socket = root / "docker.sock"
        self.base_url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "dockerd.log"
        # Also on TCP with mutual TLS, as a remote engine is reached (`dockerd --tlsverify`).
        self.tls_dir = root / "tls"
        self.tcp_port = _free_port()
        self.tcp_url = f"tcp://127.0.0.1:{self.tcp_port}"

    def answers(self) -> bool:
        try:
            client = docker.DockerClient(base_url=self.base_url, timeout=5)
            client.ping()
            client.close()
        except docker.errors.DockerException:
            return False
        return True

    def _bridge(self) -> None:
        if subprocess.run(["ip", "link", "show", self.BRIDGE], capture_output=True).returncode:
            for cmd in (
                ["ip", "link", "add", self.BRIDGE, "type", "bridge"],
                ["ip", "addr", "add", self.BRIDGE_ADDRESS, "dev", self.BRIDGE],
                ["ip", "link", "set", self.BRIDGE, "up"],
            ):
                subprocess.run(cmd, check=True, capture_output=True)

    def _certificates(self) -> None:
        """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
        d = self.tls_dir
        if (d / "cert.pem").exists():
            return
        d.mkdir(parents=True, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
        sign = ["-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-days", "2"]
        for cmd in (
            ["req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=peon-test-ca"],
            ["req", *ec, "-keyout", "server-key.pem", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "server.csr", *sign, "-out", "server-cert.pem",
             "-extfile", "server.ext"],
            ["req", *ec, "-keyout", "key.pem", "-out", "client.csr", "-subj", "/CN=peon"],
            ["x509", "-req", "-in", "client.csr", *sign, "-out", "cert.pem",
             "-extfile", "client.ext"],
        ):  # fmt: skip
            subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None or os.geteuid() != 0:
            raise RuntimeError("A second engine needs dockerd and root.")
        self.root.mkdir(parents=True, exist_ok=True)
        self._bridge()
        self._certificates()
        t = self.tls_dir
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    dockerd,
                    f"--host={self.base_url}",
                    f"--host={self.tcp_url}",
                    "--tlsverify",
                    f"--tlscacert={t / 'ca.pem'}",
                    f"--tlscert={t / 'server-cert.pem'}",
                    f"--tlskey={t / 'server-key.pem'}",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'dockerd.pid'}",
                    f"--bridge={self.BRIDGE}",
                    "--iptables=false",
                    "--ip6tables=false",
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.answers():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"the second dockerd did not answer; see {self.log}")

    def stop(self) -> None:
        """Stop the engine (SIGTERM, as a service manager would). Its containers stop with it
        and, as on any engine restart, come back only if told to."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

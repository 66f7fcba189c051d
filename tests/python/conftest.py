"""A real router + 2 ranks (replicas) on the serving tests' generated model, for the whole session.

The binaries come from $NEXTSERVE_BIN_DIR (set by ctest) or ../../build/bin.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("NEXTSERVE_BIN_DIR", REPO / "build" / "bin")).resolve()

# The model of tests/integration/serving/cluster.h: vocab 512 (0..255 bytes, 256..508 merges of
# lowercase pairs, 509..511 <|endoftext|> <|im_start|> <|im_end|>), context 2048, eos 511.
VOCAB = 512
EOS = 511


class Process:
    """A child process whose stdout lines are read by a thread (so it never blocks on a pipe)."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.args = args
        self.log = log
        self._lines: queue.Queue[str] = queue.Queue()
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)

    def wait_line(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.args[0]}: no '{needle}' within {timeout}s; log: {self.logs()}")
            if needle in line:
                return line

    def logs(self) -> str:
        self._log.flush()
        return self.log.read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# Certificates for TLS tests, made with openssl: a CA, and certificates it signs for localhost.
def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d: Path, name: str, ca: str) -> None:
    (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def listen_address(line: str) -> str:
    # "nextserve-rank 0 listening on 127.0.0.1:40123" / "nextserve-router listening on H:P (2 ranks)"
    return line.split(" listening on ")[1].split()[0]


def load_rank_proto(out_dir: Path):
    """The internal Rank API's messages (to read a rank's own load report), compiled for the test."""
    from grpc_tools import protoc

    proto = REPO / "proto"
    rc = protoc.main(
        ["protoc", f"-I{proto}", f"--python_out={out_dir}", str(proto / "nextserve/internal/v1/rank.proto")]
    )
    assert rc == 0, "protoc failed on rank.proto"
    path = out_dir / "nextserve/internal/v1/rank_pb2.py"
    spec = importlib.util.spec_from_file_location("nextserve_test_rank_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Cluster:
    router: str
    http: str  # the router's OpenAI-compatible HTTP address
    ranks: list[str]
    model_dir: Path
    rank_pb2: object
    processes: list[Process] = field(default_factory=list)

    def rank_load(self, i: int):
        with grpc.insecure_channel(self.ranks[i]) as channel:
            get_load = channel.unary_unary(
                "/nextserve.internal.v1.Rank/GetLoad",
                request_serializer=self.rank_pb2.LoadRequest.SerializeToString,
                response_deserializer=self.rank_pb2.LoadReport.FromString,
            )
            return get_load(self.rank_pb2.LoadRequest(), timeout=2)

    def wait_ranks_idle(self, timeout: float = 3.0) -> None:
        """Every rank has nothing running or waiting and all its KV blocks and state slots free."""
        deadline = time.monotonic() + timeout
        while True:
            loads = [self.rank_load(i) for i in range(len(self.ranks))]
            if all(
                l.running == 0
                and l.waiting == 0
                and l.free_kv_blocks == l.total_kv_blocks
                and l.free_state_slots == l.total_state_slots
                for l in loads
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"ranks not idle after {timeout}s: {loads}")
            time.sleep(0.01)

    def logs(self) -> str:
        return "\n".join(f"--- {p.args[0]}\n{p.logs()}" for p in self.processes)


def start_router(model_dir: Path, ranks: list[str], log: Path, port: int = 0,
                 http_port: int = -1) -> Process:
    return Process(
        [str(BIN / "nextserve-router"), "--model", str(model_dir), "--ranks", ",".join(ranks),
         "--port", str(port), "--http-port", str(http_port), "--model-name", "model"],
        log,
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    for exe in ("nextserve-test-model", "nextserve-rank", "nextserve-router"):
        if not (BIN / exe).exists():
            pytest.fail(f"{BIN / exe} is missing: build the project first (scripts/setup.sh)")
    work = tmp_path_factory.mktemp("nextserve")
    model = work / "model"
    subprocess.run([str(BIN / "nextserve-test-model"), "--out", str(model)], check=True)
    rank_pb2 = load_rank_proto(work)
    processes: list[Process] = []
    try:
        ranks = []
        for i in range(2):
            p = Process(
                [str(BIN / "nextserve-rank"), "--model", str(model), "--port", "0", "--threads", "1",
                 "--kv-blocks", "256", "--state-slots", "16", "--rank-id", str(i)],
                work / f"rank{i}.log",
                env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"},
            )
            processes.append(p)
        for p in processes:
            ranks.append(listen_address(p.wait_line("listening on")))
        router = start_router(model, ranks, work / "router.log", http_port=0)
        processes.append(router)
        address = listen_address(router.wait_line("listening on"))
        http = listen_address(router.wait_line("HTTP (OpenAI-compatible) listening on"))
        c = Cluster(router=address, http=http, ranks=ranks, model_dir=model, rank_pb2=rank_pb2, processes=processes)
        import nextserve

        with nextserve.Client(address) as client:
            info = client.wait_ready(timeout=60)
        deadline = time.monotonic() + 30
        while info.ranks < 2 and time.monotonic() < deadline:  # both ranks in rotation
            time.sleep(0.05)
            with nextserve.Client(address) as client:
                info = client.model_info()
        yield c
    finally:
        for p in reversed(processes):
            p.stop()


@pytest.fixture
def client(cluster):
    import nextserve

    with nextserve.Client(cluster.router, timeout=60) as c:
        yield c

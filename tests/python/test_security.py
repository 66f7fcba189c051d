"""TLS and API keys on a real router and ranks: TLS (server-verified) on the public port, mutual
TLS on the internal port (only a router with a certificate the ranks' CA signed may call a rank),
API keys on every public call with a per-key in-flight limit, over gRPC and the OpenAI HTTP port."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

import nextserve
from conftest import BIN, Process, listen_address, make_ca, make_cert

KEY_A = "sk-team-a-0123456789"
KEY_B = "sk-team-b-9876543210"
NO_RETRY = nextserve.Retry(max_retries=0)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    d = tmp_path_factory.mktemp("secure")
    make_ca(d, "ca")  # public port
    make_ca(d, "internal-ca")  # router <-> ranks
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca")
    make_cert(d, "rank", "internal-ca")
    make_cert(d, "router-client", "internal-ca")
    make_cert(d, "intruder", "other-ca")
    (d / "keys").write_text(f"# team keys\n{KEY_A} label=team-a max_in_flight=1\n{KEY_B} label=team-b\n")
    model = d / "model"
    subprocess.run([str(BIN / "nextserve-test-model"), "--out", str(model)], check=True)
    rank = Process([str(BIN / "nextserve-rank"), "--model", str(model), "--port", "0", "--threads", "1",
                    "--tls-cert", str(d / "rank.pem"), "--tls-key", str(d / "rank.key"),
                    "--tls-ca", str(d / "internal-ca.pem")],
                   d / "rank.log", env={"OMP_NUM_THREADS": "1"})
    procs = [rank]
    try:
        rank_addr = listen_address(rank.wait_line("listening on"))
        router = Process([str(BIN / "nextserve-router"), "--model", str(model), "--ranks",
                          rank_addr.replace("127.0.0.1", "localhost"), "--port", "0", "--http-port", "0",
                          "--model-name", "model",
                          "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"),
                          "--rank-tls-ca", str(d / "internal-ca.pem"),
                          "--rank-tls-cert", str(d / "router-client.pem"),
                          "--rank-tls-key", str(d / "router-client.key"),
                          "--api-keys-file", str(d / "keys")],
                         d / "router.log")
        procs.append(router)
        address = listen_address(router.wait_line("listening on"))
        http = listen_address(router.wait_line("HTTP (OpenAI-compatible) listening on"))
        with nextserve.Client(address, api_key=KEY_B, root_certificates=str(d / "ca.pem"),
                              server_name="localhost") as c:
            c.wait_ready(60)
        yield {"dir": d, "address": address, "http": http, "rank": rank_addr, "router": router}
    finally:
        for p in reversed(procs):
            p.stop()


def client(secure, **kw):
    kw.setdefault("root_certificates", str(secure["dir"] / "ca.pem"))
    kw.setdefault("server_name", "localhost")
    return nextserve.Client(secure["address"], timeout=30, retry=NO_RETRY, **kw)


def test_tls_and_a_valid_key_serve(secure):
    with client(secure, api_key=KEY_B) as c:
        r = c.complete("hello", max_tokens=4, temperature=0, ignore_eos=True)
        assert len(r.token_ids) == 4  # ...through the router's mutual-TLS channel to the rank
        assert c.model_info().ranks == 1


def test_missing_or_wrong_keys_are_unauthenticated(secure):
    for key in (None, "sk-not-a-key-000000"):
        with client(secure, api_key=key) as c:
            with pytest.raises(nextserve.Unauthenticated):
                c.complete("hello", max_tokens=2)
            with pytest.raises(nextserve.Unauthenticated):
                c.tokenize("hello")
            with pytest.raises(nextserve.Unauthenticated):
                c.model_info()
    # The key never appears in the router's log.
    assert KEY_A not in secure["router"].logs() and KEY_B not in secure["router"].logs()


def test_per_key_in_flight_limit(secure):
    with client(secure, api_key=KEY_A) as c:
        long = c.generate("hello", max_tokens=1500, temperature=0, ignore_eos=True)
        next(long)  # team-a's one place is taken
        with pytest.raises(nextserve.Overloaded, match="team-a"):
            c.complete("hello", max_tokens=2)
        with client(secure, api_key=KEY_B) as other:  # other keys are not affected
            assert len(other.complete("hello", max_tokens=2, ignore_eos=True).token_ids) == 2
        long.close()
    deadline = time.monotonic() + 5
    while True:  # the place is free again once the cancelled stream has ended
        try:
            with client(secure, api_key=KEY_A) as c:
                assert len(c.complete("hello", max_tokens=2, ignore_eos=True).token_ids) == 2
            break
        except nextserve.Overloaded:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_wrong_ca_and_plaintext_fail(secure):
    with client(secure, api_key=KEY_B, root_certificates=str(secure["dir"] / "other-ca.pem")) as c:
        with pytest.raises(nextserve.Unavailable):
            c.model_info(timeout=3)
    with nextserve.Client(secure["address"], api_key=KEY_B, retry=NO_RETRY) as c:
        with pytest.raises(nextserve.Unavailable):
            c.model_info(timeout=3)


def rank_load(secure, credentials):
    with grpc.secure_channel(secure["rank"], credentials,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        call = ch.unary_unary("/nextserve.internal.v1.Rank/GetLoad",
                              request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        return call(None, timeout=3)


def test_the_internal_port_wants_a_router_certificate(secure):
    d = secure["dir"]
    ca = (d / "internal-ca.pem").read_bytes()
    router_like = grpc.ssl_channel_credentials(ca, (d / "router-client.key").read_bytes(),
                                               (d / "router-client.pem").read_bytes())
    rank_load(secure, router_like)  # a certificate the internal CA signed: answered
    for creds in (grpc.ssl_channel_credentials(ca),  # no client certificate
                  grpc.ssl_channel_credentials(ca, (d / "intruder.key").read_bytes(),
                                               (d / "intruder.pem").read_bytes())):
        with pytest.raises(grpc.RpcError) as e:
            rank_load(secure, creds)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_openai_http_needs_the_key_too(secure):
    url = f"http://{secure['http']}/v1/chat/completions"
    body = json.dumps({"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})

    def post(*headers):
        args = ["curl", "-s", "-w", "\n%{http_code}", url, "-d", body]
        for h in headers:
            args += ["-H", h]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        payload, code = out.rsplit("\n", 1)
        return int(code), json.loads(payload)

    code, payload = post()
    assert code == 401 and payload["error"]["type"] == "authentication_error"
    assert post(f"Authorization: Bearer sk-wrong-key-00000")[0] == 401
    code, payload = post(f"Authorization: Bearer {KEY_B}")
    assert code == 200, payload
    # /health needs no key (load balancers and probes).
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://{secure['http']}/health"], capture_output=True, text=True)
    assert out.stdout == "200"


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "--tls-cert /nonexistent.pem: cannot read"),
    (["--tls-cert", "SELF"], "--tls-cert and --tls-key go together"),
    (["--api-keys-file", "/nonexistent-keys"], "--api-keys-file /nonexistent-keys: cannot read"),
])
def test_bad_security_flags_exit_with_a_clear_error(secure, flags, message):
    flags = [str(secure["dir"] / "server.pem") if f == "SELF" else f for f in flags]
    out = subprocess.run([str(BIN / "nextserve-router"), "--model", str(secure["dir"] / "model"),
                          "--ranks", "127.0.0.1:1", "--port", "0", *flags],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr, out.stderr


def test_the_cli_speaks_tls_and_keys(secure):
    args = [str(BIN / "nextserve"), "generate", "--addr", secure["address"], "--prompt", "hello",
            "--max-tokens", "3", "--temperature", "0", "--ignore-eos",
            "--tls-ca", str(secure["dir"] / "ca.pem"), "--tls-server-name", "localhost"]
    ok = subprocess.run(args + ["--api-key", KEY_B], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "completion" in ok.stderr or ok.stdout, ok
    import os

    env = {**os.environ, "NEXTSERVE_API_KEY": KEY_B}
    assert subprocess.run(args, capture_output=True, text=True, timeout=60, env=env).returncode == 0
    bad = subprocess.run(args, capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "NEXTSERVE_API_KEY"})
    assert bad.returncode != 0
    assert "API key" in bad.stderr, bad.stderr

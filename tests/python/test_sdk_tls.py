"""TLS, mutual TLS and the API key header, against a test double of the Inference service.

The router does not terminate TLS or check keys yet (the operations issue adds both); until then
this checks the client's side of it for real: certificates made here with openssl, a real gRPC TLS
server, and what arrives in its metadata.
"""

from __future__ import annotations

import subprocess
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import nextserve
from conftest import make_ca, make_cert
from nextserve.v1 import inference_pb2 as pb
from nextserve.v1 import inference_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca")
    make_cert(d, "client", "ca")
    return d


class ModelInfoDouble(pb_grpc.InferenceServicer):
    """Test double: answers GetModelInfo and records the authorization header it was sent."""

    def __init__(self) -> None:
        self.seen_authorization: list[str] = []

    def GetModelInfo(self, request, context):
        auth = dict(context.invocation_metadata()).get("authorization", "")
        self.seen_authorization.append(auth)
        if auth != "Bearer sk-test":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key")
        return pb.ModelInfo(model="double", vocab_size=7, ranks=1)


def serve(certs: Path, require_client_cert: bool):
    double = ModelInfoDouble()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_InferenceServicer_to_server(double, server)
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes() if require_client_cert else None,
        require_client_auth=require_client_cert,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, double, f"127.0.0.1:{port}"


NO_RETRY = nextserve.Retry(max_retries=0)


def test_tls_with_the_right_ca_and_the_api_key(certs):
    server, double, address = serve(certs, require_client_cert=False)
    try:
        ca = str(certs / "ca.pem")
        with nextserve.Client(address, api_key="sk-test", root_certificates=ca, timeout=5) as c:
            assert c.model_info().model == "double"
        assert double.seen_authorization == ["Bearer sk-test"]
        with nextserve.Client(address, api_key="sk-wrong", root_certificates=ca, timeout=5) as c:
            with pytest.raises(nextserve.Unauthenticated):
                c.model_info()
        # A CA that did not sign the server's certificate: the handshake fails.
        with nextserve.Client(address, api_key="sk-test", root_certificates=str(certs / "other-ca.pem"),
                              timeout=3, retry=NO_RETRY) as c:
            with pytest.raises(nextserve.Unavailable):
                c.model_info()
        # Plaintext against a TLS port fails too.
        with nextserve.Client(address, api_key="sk-test", timeout=3, retry=NO_RETRY) as c:
            with pytest.raises(nextserve.Unavailable):
                c.model_info()
    finally:
        server.stop(None)


def test_mutual_tls(certs):
    server, _, address = serve(certs, require_client_cert=True)
    try:
        ca = str(certs / "ca.pem")
        with nextserve.Client(address, api_key="sk-test", root_certificates=ca,
                              certificate_chain=str(certs / "client.pem"),
                              private_key=str(certs / "client.key"), timeout=5) as c:
            assert c.model_info().vocab_size == 7
        with nextserve.Client(address, api_key="sk-test", root_certificates=ca, timeout=3,
                              retry=NO_RETRY) as c:
            with pytest.raises(nextserve.Unavailable):
                c.model_info()  # no client certificate
        with pytest.raises(ValueError, match="both certificate_chain and private_key"):
            nextserve.Client(address, root_certificates=ca, certificate_chain=str(certs / "client.pem"))
    finally:
        server.stop(None)


def test_the_asyncio_client_speaks_tls_too(certs):
    import asyncio

    server, double, address = serve(certs, require_client_cert=False)
    try:
        async def main():
            async with nextserve.AsyncClient(address, api_key="sk-test",
                                             root_certificates=str(certs / "ca.pem"), timeout=5) as c:
                return await c.model_info()

        assert asyncio.run(main()).model == "double"
        assert double.seen_authorization == ["Bearer sk-test"]
    finally:
        server.stop(None)

"""TLS for the control plane: `kaon up --tls-self-signed` serves https that the CLI and
the SDK verify by the certificate it records; a client that pins another certificate is
refused with what to do; plain HTTP beyond loopback is refused before anything binds;
and a job on a TLS control plane reports metrics and usage and reads its secret, its
supervisor and `kaon.report` verifying the same certificate."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaon.core.jobs import JobStatus
from kaon.core.tls import ENV_CA_PEM, fingerprint, listen_refusal
from kaon.sdk.client import Client, ConnectionFailed
from kaon.sdk.secrets import secret
from kaon.server.config import Settings
from kaon.server.security.tls import ensure_self_signed
from tests.cli.test_up import free_port_pair, kaon
from tests.conftest import ADMIN_TOKEN, WORKER_UIDS_OFF, ThreadServer, test_settings

PY = sys.executable


class TlsServer(ThreadServer):
    """`tests.conftest.ThreadServer` serving TLS with a self-signed certificate."""

    def __init__(self, settings: Settings) -> None:
        files = ensure_self_signed(settings.home, "127.0.0.1")
        super().__init__(
            settings.with_(tls_cert=files.cert, tls_key=files.key),
            ssl_certfile=str(files.cert),
            ssl_keyfile=str(files.key),
        )

    def __enter__(self) -> TlsServer:  # type: ignore[override]
        super().__enter__()
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.settings.port}"

    @property
    def cert(self) -> str:
        assert self.settings.tls_cert is not None
        return str(self.settings.tls_cert)


@pytest.fixture
def tls_server(tmp_path: Path, db_url: str) -> Iterator[TlsServer]:
    settings = test_settings(tmp_path / "home", db_url, usage_interval_s=0.2)
    with TlsServer(settings) as running:
        yield running


@pytest.fixture
def other_cert(tmp_path: Path) -> str:
    """A certificate for the same names, made by another home: not the server's."""
    return str(ensure_self_signed(tmp_path / "other-home", "127.0.0.1").cert)


@pytest.fixture
def up_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "up-home"
    yield home
    kaon(home, "down", timeout=60)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAON_")} | WORKER_UIDS_OFF
    return {**env, "KAON_HOME": str(home), "COLUMNS": "200", **extra}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [PY, "-c", "from kaon.cli.main import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


class TestRefusal:
    @pytest.mark.parametrize(
        ("host", "certificate", "insecure", "refused"),
        [
            ("127.0.0.1", False, False, False),
            ("127.0.0.2", False, False, False),
            ("::1", False, False, False),
            ("localhost", False, False, False),
            ("0.0.0.0", False, False, True),
            ("::", False, False, True),
            ("10.1.2.3", False, False, True),
            ("kaon.example.com", False, False, True),
            ("0.0.0.0", True, False, False),
            ("0.0.0.0", False, True, False),
        ],
    )
    def test_plain_http_beyond_loopback_takes_a_certificate_or_insecure(
        self, host: str, certificate: bool, insecure: bool, refused: bool
    ) -> None:
        assert (listen_refusal(host, certificate, insecure) is not None) is refused


class TestKaonUp:
    @pytest.mark.e2e
    def test_self_signed_serves_https_the_cli_and_sdk_verify(
        self, up_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        port = free_port_pair()
        ports = ("--port", str(port), "--gateway-port", str(port + 1))
        result = kaon(up_home, "up", *ports, "--tls-self-signed")
        assert result.returncode == 0, result.stderr
        url = f"https://127.0.0.1:{port}"
        assert url in result.stdout

        cert, key = up_home / "tls" / "cert.pem", up_home / "tls" / "key.pem"
        for path in (cert, key):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert fingerprint(cert.read_text()) in result.stdout  # what a remote user compares
        saved = json.loads((up_home / "config.json").read_text())
        assert saved["url"] == url and saved["ca_file"] == str(cert)

        listed = run_cli(cli_env(up_home), "job", "list")
        assert listed.returncode == 0, listed.stderr

        for name in ("KAON_URL", "KAON_TOKEN", "KAON_CA_FILE", "KAON_WORKSPACE", ENV_CA_PEM):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("KAON_HOME", str(up_home))
        with Client() as client:  # everything from the home's config
            assert client.whoami().role == "admin"

        with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

        again = kaon(up_home, "up", *ports, "--tls-self-signed")  # reused, same certificate
        assert again.returncode == 0, again.stderr
        assert fingerprint(cert.read_text()) in again.stdout

    def test_a_public_address_without_tls_is_refused_before_binding(self, up_home: Path) -> None:
        port = free_port_pair()
        result = kaon(up_home, "up", "--host", "0.0.0.0", "--port", str(port))
        assert result.returncode == 2, result.stdout
        message = " ".join(result.stderr.split())
        assert "refusing to serve the API on 0.0.0.0 in plain HTTP" in message
        assert "--tls-self-signed" in message and "--insecure" in message
        assert not (up_home / "server.pid").exists()  # nothing was started
        assert not (up_home / "server.log").exists()

    def test_a_certificate_without_its_key_is_refused(
        self, up_home: Path, other_cert: str
    ) -> None:
        result = kaon(up_home, "up", "--host", "0.0.0.0", "--tls-cert", other_cert)
        assert result.returncode == 2
        assert "--tls-cert and --tls-key go together" in result.stderr

    def test_the_server_itself_refuses_a_public_address_without_tls(self, tmp_path: Path) -> None:
        env = cli_env(tmp_path / "home", KAON_HOST="0.0.0.0", KAON_PORT=str(free_port_pair()))
        result = subprocess.run(
            [PY, "-m", "kaon.server"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0
        assert "refusing to serve the API on 0.0.0.0 in plain HTTP" in result.stderr
        assert "Traceback" not in result.stderr


class TestClients:
    def test_the_sdk_verifies_the_pinned_certificate(self, tls_server: TlsServer) -> None:
        with Client(tls_server.url, token=ADMIN_TOKEN, ca_file=tls_server.cert) as client:
            assert client.whoami().role == "admin"

    def test_another_pinned_certificate_is_refused_with_what_to_do(
        self, tls_server: TlsServer, other_cert: str
    ) -> None:
        with Client(tls_server.url, token=ADMIN_TOKEN, ca_file=other_cert) as client:
            with pytest.raises(ConnectionFailed) as refused:
                client.whoami()
        message = str(refused.value)
        assert f"{other_cert} does not trust" in message
        assert "KAON_CA_FILE" in message and "fingerprint" in message

    def test_the_system_trust_store_alone_refuses_a_self_signed_server(
        self, tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("KAON_HOME", str(tmp_path / "empty-home"))
        monkeypatch.delenv("KAON_CA_FILE", raising=False)
        monkeypatch.delenv(ENV_CA_PEM, raising=False)
        with Client(tls_server.url, token=ADMIN_TOKEN) as client:
            with pytest.raises(ConnectionFailed, match="does not trust"):
                client.whoami()

    def test_the_cli_verifies_and_refuses(
        self, tls_server: TlsServer, other_cert: str, tmp_path: Path
    ) -> None:
        env = cli_env(tmp_path / "cli-home", KAON_URL=tls_server.url, KAON_TOKEN=ADMIN_TOKEN)
        good = run_cli({**env, "KAON_CA_FILE": tls_server.cert}, "job", "list")
        assert good.returncode == 0, good.stderr
        bad = run_cli({**env, "KAON_CA_FILE": other_cert}, "job", "list")
        assert bad.returncode == 5, bad.stdout  # control plane unreachable
        assert "does not trust" in " ".join(bad.stderr.split())

    def test_the_server_offers_the_certificate_it_was_given(self, tls_server: TlsServer) -> None:
        served = ssl.get_server_certificate(("127.0.0.1", tls_server.settings.port))
        assert fingerprint(served) == fingerprint(Path(tls_server.cert).read_text())


REPORTS = """
import os, kaon
assert os.environ["KAON_API_URL"].startswith("https://"), os.environ["KAON_API_URL"]
assert os.environ["API_KEY"] == "tls-secret-value", "the secret did not arrive"
kaon.report(step=1, loss=0.5)
kaon.report(step=2, loss=0.25)
import time; time.sleep(1.0)  # long enough for the supervisor's usage samples
"""


class TestJobs:
    def test_a_job_reports_metrics_and_usage_and_reads_its_secret(
        self, tls_server: TlsServer
    ) -> None:
        with Client(tls_server.url, token=ADMIN_TOKEN, ca_file=tls_server.cert) as client:
            client.secrets.set("api-key", "tls-secret-value")
            job = client.jobs.submit(
                [PY, "-c", REPORTS], env={"API_KEY": secret("api-key")}, cpu=0.5
            )
            done = client.jobs.wait(job.id, timeout=90)
            assert done.status is JobStatus.SUCCEEDED, client.jobs.logs(job.id)
            losses = [(m.step, m.value) for m in client.jobs.metrics(job.id, "loss")]
            assert sorted(losses) == [(1, 0.5), (2, 0.25)]
            usage = client.jobs.usage(job.id)
        assert usage.workers and usage.workers[0].series, "no usage sample reached the API"

"""--web.config.file validation: every bad key or value refused at once, by name, at startup and in check."""

import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from exporter.cli import main
from exporter.webconfig import WebConfigError, load_web_config, parse_web_config
from tests.realservers import free_port
from tests.tlscerts import make_certs

ROOT = Path(__file__).resolve().parent.parent
HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def errors_of(text: str, path: str = "/etc/web.yml") -> list[str]:
    with pytest.raises(WebConfigError) as exc:
        parse_web_config(text.encode(), path)
    return exc.value.errors


def test_empty_file_and_full_file():
    assert parse_web_config(b"", "/w.yml").tls is None
    config = parse_web_config(
        (
            "tls_server_config:\n  cert_file: s.pem\n  key_file: /abs/s.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS13\n"
            "http_server_config:\n  http2: false\n"
            "  headers: {X-Frame-Options: deny, Content-Security-Policy: x}\n"
            f"basic_auth_users:\n  alice: '{HASH}'\n"
        ).encode(),
        "/etc/exporter/web.yml",
    )
    assert config.tls is not None
    assert (config.tls.cert_file, config.tls.key_file) == ("/etc/exporter/s.pem", "/abs/s.key")
    assert config.tls.client_ca_file == "/etc/exporter/ca.pem", "relative to the file, as exporter-toolkit"
    assert (config.tls.min_version, config.tls.max_version) == ("TLS13", "TLS13")
    assert dict(config.headers) == {"X-Frame-Options": "deny", "Content-Security-Policy": "x"}
    assert config.users == {"alice": HASH.encode()}
    assert config.max_cost() == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_server_config: {cert_fiel: a}",
         "tls_server_config.cert_fiel: unknown key (did you mean 'cert_file'?)"),
        ("basic_auth_user: {}", "basic_auth_user: unknown key (did you mean 'basic_auth_users'?)"),
        ("rate_limit: {}", "rate_limit: not supported by this exporter"),
        ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [x]}",
         "tls_server_config.cipher_suites: not supported by this exporter"),
        ("tls_server_config: {cert_file: a}", "tls_server_config.key_file: required"),
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Always}",
         "tls_server_config.client_auth_type: invalid value 'Always' (one of NoClientCert"),
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAnyClientCert}",
         "tls_server_config.client_auth_type: RequireAnyClientCert is not supported"),
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequestClientCert}",
         "tls_server_config.client_auth_type: RequestClientCert is not supported"),
        ("tls_server_config: {cert_file: a, key_file: b, client_ca_file: c}",
         "tls_server_config.client_ca_file: set without a client_auth_type"),
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: VerifyClientCertIfGiven}",
         "tls_server_config.client_ca_file: required by client_auth_type VerifyClientCertIfGiven"),
        ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS1.2}",
         "tls_server_config.min_version: invalid value 'TLS1.2' (one of TLS10, TLS11, TLS12, TLS13)"),
        ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, max_version: TLS12}",
         "tls_server_config.max_version: TLS12 is below min_version TLS13"),
        ("tls_server_config: {cert_file: 5, key_file: b}",
         "tls_server_config.cert_file: expected a string, got 5"),
        ("http_server_config: {headers: {Server: x}}",
         "http_server_config.headers.Server: this header can not"),
        ("http_server_config: {headers: {X-Frame-Options: allow}}",
         "http_server_config.headers.X-Frame-Options: invalid value 'allow' (one of deny, sameorigin)"),
        ("http_server_config: {http2: maybe}", "http_server_config.http2: expected true or false"),
        ("basic_auth_users: {alice: plaintext-password}", "basic_auth_users.alice: not a bcrypt hash"),
        (f"basic_auth_users: {{'a:b': '{HASH}'}}", "basic_auth_users.a:b: a user name must be"),
        ("basic_auth_users: [alice]", "basic_auth_users: expected a mapping, got list"),
        ("[1, 2]", "top level: expected a mapping, got list"),
        ("tls_server_config: {cert_file: [unclosed", "YAML syntax error: line 1"),
    ],
)  # fmt: skip
def test_bad_key_or_value_is_named(text, expected):
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_at_once_and_no_hash_or_password_printed():
    errors = errors_of("foo: 1\nbasic_auth_users: {bob: hunter2}\nhttp_server_config: {headers: {X: y}}\n")
    assert len(errors) == 3, errors
    assert "hunter2" not in str(errors)


def test_load_reads_the_files_and_names_what_fails(tmp_path, certs):
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config: {{cert_file: {certs.server_cert}, key_file: {certs.server_key}}}\n")
    assert load_web_config(str(web)).tls is not None
    web.write_text(f"tls_server_config: {{cert_file: {certs.server_cert}, key_file: {certs.client_key}}}\n")
    with pytest.raises(
        WebConfigError, match=r"tls_server_config.cert_file/key_file: cannot load .*server.pem"
    ):
        load_web_config(str(web))
    web.write_text(
        f"tls_server_config: {{cert_file: {certs.server_cert}, key_file: {certs.server_key}, "
        "client_auth_type: RequireAndVerifyClientCert, client_ca_file: missing-ca.pem}\n"
    )
    with pytest.raises(WebConfigError, match=r"client_ca_file: cannot load .*missing-ca.pem.*No such file"):
        load_web_config(str(web))
    with pytest.raises(WebConfigError, match="cannot read web config file"):
        load_web_config(str(tmp_path / "absent.yml"))


def test_check_validates_the_web_config_too(tmp_path, capsys, certs):
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config: {{cert_file: {certs.server_cert}, key_file: {certs.server_key}}}\n"
        f"basic_auth_users: {{alice: '{HASH}'}}\n"
    )
    rules = str(ROOT / "rules.yaml")
    assert main(["check", rules, "--web.config.file", str(web)]) == 0
    assert f"{web}: OK, TLS (NoClientCert), 1 basic auth user(s)" in capsys.readouterr().out
    web.write_text("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Bogus}\n")
    assert main(["check", rules, "--web.config.file", str(web)]) == 1
    assert "tls_server_config.client_auth_type: invalid value 'Bogus'" in capsys.readouterr().err


def test_run_refuses_a_bad_web_config_at_startup(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("prometheus: {url: http://127.0.0.1:9}\nrules:\n  - {name: a, query: up}\n")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {alice: not-a-hash}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(rules), "--web.listen-address",
         f"127.0.0.1:{free_port()}", "--web.config.file", str(web)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "basic_auth_users.alice: not a bcrypt hash" in proc.stderr

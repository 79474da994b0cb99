"""How a node reaches etcd: which members, which TLS files, which user and password.

Each setting comes from the launch's rendezvous configuration (`--rdzv-conf`, filled from the
recipe's `elastic.rdzv.*` fields) or, where that leaves it out, from the environment:

    recipe field                rdzv-conf key   environment
    elastic.rdzv.endpoint       (the endpoint)  -              HOST:PORT[,HOST:PORT...]
    elastic.rdzv.ca_cert        ca_cert         ELASTICML_ETCD_CA_CERT
    elastic.rdzv.client_cert    ssl_cert        ELASTICML_ETCD_CLIENT_CERT
    elastic.rdzv.client_key     ssl_cert_key    ELASTICML_ETCD_CLIENT_KEY
    elastic.rdzv.user           user            ELASTICML_ETCD_USER
    elastic.rdzv.password_file  password_file   ELASTICML_ETCD_PASSWORD (the password itself)

The TLS keys are those of torch's own `etcd-v2` backend, so one `--rdzv-conf` serves both. TLS
(https) is on when a CA or a client certificate is given. The password is the one secret:
it is taken from `ELASTICML_ETCD_PASSWORD`, else from the first line of the password file,
only when a connection logs in; it is never part of a plan, a message or a log line.

`problem_with_files()` names an unreadable or malformed file before anything connects;
`etcd_kv.check_access()` then tries the server.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PASSWORD = "ELASTICML_ETCD_PASSWORD"
SETTINGS = {
    # name: (rdzv-conf key, recipe field, environment variable)
    "ca_cert": ("ca_cert", "elastic.rdzv.ca_cert", "ELASTICML_ETCD_CA_CERT"),
    "client_cert": ("ssl_cert", "elastic.rdzv.client_cert", "ELASTICML_ETCD_CLIENT_CERT"),
    "client_key": ("ssl_cert_key", "elastic.rdzv.client_key", "ELASTICML_ETCD_CLIENT_KEY"),
    "user": ("user", "elastic.rdzv.user", "ELASTICML_ETCD_USER"),
    "password_file": ("password_file", "elastic.rdzv.password_file", None),
}
DEFAULT_PORT = 2379


class EtcdAccessError(Exception):
    """etcd cannot be used as configured; the message says what to fix, in one line."""


@dataclass(frozen=True)
class EtcdAccess:
    endpoints: tuple[tuple[str, int], ...]
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    user: str | None = None
    password_file: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each setting came from (a recipe field or an environment variable), for messages."""
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)

    @property
    def tls(self) -> bool:
        return bool(self.ca_cert or self.client_cert)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def source(self, name: str) -> str:
        return self.sources.get(name, SETTINGS[name][1])

    def password_source(self) -> str:
        if self.environ.get(ENV_PASSWORD) or not self.password_file:
            return f"${ENV_PASSWORD}"
        return f"{self.source('password_file')} ({self.password_file})"

    def password(self) -> str:
        """The user's password (read now, never kept); EtcdAccessError when there is none."""
        text = self.environ.get(ENV_PASSWORD)
        if text:
            return text
        if self.password_file:
            where = f"{self.source('password_file')} ({self.password_file})"
            try:
                lines = Path(self.password_file).read_text().splitlines()
            except OSError as err:
                raise EtcdAccessError(f"{where}: cannot read it ({err.strerror}); give a "
                                      "readable file whose first line is the password") from None
            except UnicodeDecodeError:
                raise EtcdAccessError(f"{where}: not a text file; its first line must be the "
                                      "password") from None
            if lines and lines[0].strip():
                return lines[0].strip()
            raise EtcdAccessError(f"{where}: empty; its first line must be the password")
        raise EtcdAccessError(f"etcd user '{self.user}' needs a password: set {ENV_PASSWORD} "
                              "or elastic.rdzv.password_file")

    def problem_with_files(self) -> str | None:
        """What is wrong with the TLS files or the password, in one line; None when they load."""
        if bool(self.client_cert) != bool(self.client_key):
            given, missing = ("client_cert", "client_key") if self.client_cert else (
                "client_key", "client_cert")
            return (f"{self.source(given)} is set but {SETTINGS[missing][1]} is not: a client "
                    "certificate needs its private key and the other way round")
        for name in ("ca_cert", "client_cert", "client_key"):
            path = getattr(self, name)
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as err:
                return (f"{self.source(name)}: cannot read {path} ({err.strerror}); "
                        f"give a readable PEM file")
        context = ssl.create_default_context()
        if self.ca_cert:
            try:
                context.load_verify_locations(cafile=self.ca_cert)
            except ssl.SSLError as err:
                return (f"{self.source('ca_cert')}: {self.ca_cert} holds no PEM certificate "
                        f"({err.reason or err}); give the CA certificate that signed the etcd "
                        "servers' certificates")
        if self.client_cert:
            try:
                context.load_cert_chain(self.client_cert, self.client_key, password=_no_password)
            except (ssl.SSLError, ValueError) as err:
                return (f"{self.source('client_cert')} / {self.source('client_key')}: "
                        f"{self.client_cert} and {self.client_key} do not load as a certificate "
                        f"and its unencrypted private key ({getattr(err, 'reason', None) or err})")
        if self.user:
            try:
                self.password()
            except EtcdAccessError as err:
                return str(err)
        return None


def _no_password() -> bytes:
    raise ValueError("the private key is encrypted; give an unencrypted one (chmod 600)")


def access_from_conf(endpoint: str, get: Callable[[str], str | None],
                     environ: Mapping[str, str] | None = None) -> EtcdAccess:
    """The access a launch describes: `get` reads its rdzv-conf (`params.get`, or a plan's
    `rdzv_configs.get`); settings it lacks come from the environment."""
    env = os.environ if environ is None else environ
    values, sources = {}, {}
    for name, (conf_key, _recipe_field, env_name) in SETTINGS.items():
        value = get(conf_key)
        if not value and env_name and env.get(env_name):
            value, sources[name] = env[env_name], f"${env_name}"
        values[name] = value or None
    return EtcdAccess(parse_endpoints(endpoint), sources=sources, environ=env, **values)


def parse_endpoints(endpoint: str) -> tuple[tuple[str, int], ...]:
    """`h1:2379,h2:2379` (or `[v6]:2379`, or a host alone for port 2379) -> ((host, port), ...)."""
    found = []
    for part in (endpoint or "").split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port = rest.lstrip(":")
        elif part.count(":") == 1:
            host, _, port = part.partition(":")
        else:
            host, port = part, ""
        if not host or (port and not port.isdigit()):
            raise EtcdAccessError(f"elastic.rdzv.endpoint: '{part}' is not HOST:PORT")
        found.append((host, int(port) if port else DEFAULT_PORT))
    if not found:
        raise EtcdAccessError("elastic.rdzv.endpoint: etcd needs HOST:PORT of its members "
                              "(comma-separated)")
    return tuple(found)

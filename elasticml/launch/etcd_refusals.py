"""What etcd's answers mean for the user: one line that says what to fix.

etcd refuses a node in many ways that look alike from the client: a TLS handshake that ends
without a word (a client certificate it does not trust, or no TLS on that port), a verify
error (a CA that did not sign its certificate), an HTTP 400 from its gateway (a client
certificate with a Common Name while users are on, no user given, a wrong password), a 403
(no permission on the prefix). `etcd_kv.EtcdV3KV` turns each into `EtcdRefused` with the line
these functions write; anything else (a member down, no leader) is a member not answering.
"""

from __future__ import annotations

import json
import re

from elasticml.launch.etcd_access import ENV_PASSWORD, EtcdAccess

_PERMISSION_DENIED = 7  # gRPC PERMISSION_DENIED


def login_refusal(message: str, where: str, access: EtcdAccess) -> str | None:
    """The fix for a failed log-in; None when the failure is not the user's (no leader)."""
    if "authentication failed" in message:
        return (f"etcd at {where} refused user '{access.user}': wrong password or no such user "
                f"(the password is from {access.password_source()})")
    if "not enabled" in message:
        return (f"etcd at {where} has authentication off, so user '{access.user}' cannot log "
                f"in: turn it on (`etcdctl auth enable`) or remove {access.source('user')}")
    return None


def answer(err) -> tuple[int | None, str]:
    """(gRPC code, message) of an error etcd answered with; (None, text) for other answers."""
    text = getattr(err, "detail_text", None) or ""
    try:
        data = json.loads(text)
        return int(data.get("code")), str(data.get("error") or data.get("message") or "")
    except (ValueError, TypeError, AttributeError):
        return None, text.strip()


def refusal_of(code: int | None, message: str, where: str, access: EtcdAccess,
               prefix: str) -> str | None:
    """The one-line fix for an answer that says etcd will not serve this node; None else."""
    if "user name is empty" in message:
        return (f"etcd at {where} requires a user: set elastic.rdzv.user and the password in "
                f"{ENV_PASSWORD} or elastic.rdzv.password_file")
    if code == _PERMISSION_DENIED:
        return (f"etcd user '{access.user}' may not read and write {prefix}/: grant its role "
                f"readwrite on that prefix (`etcdctl role grant-permission ROLE readwrite "
                f"--prefix=true {prefix}/`)")
    if "CommonName of client" in message:
        return (f"etcd at {where} refuses a client certificate with a Common Name while users "
                "are on (its HTTP gateway cannot map it to a user): issue "
                f"{access.source('client_cert')} with an empty CN (e.g. subject O=elasticml)")
    if "HTTP request to an HTTPS server" in message:
        return (f"etcd at {where} speaks TLS: give elastic.rdzv.ca_cert (the CA that signed its "
                "certificate), and client_cert/client_key if it asks for them")
    return None


_VERIFY = re.compile(r"certificate verify failed: ([^(]*)", re.IGNORECASE)


def tls_refusal(err, where: str, access: EtcdAccess) -> str | None:
    """The one-line fix for a TLS handshake that failed because of a certificate; None when
    the failure is something else (a member down)."""
    text = f"{err} {getattr(err, 'detail_text', None) or ''}"
    verify = _VERIFY.search(text)
    if verify:
        reason = verify.group(1).strip()
        if access.ca_cert:
            return (f"etcd at {where}: its certificate is not signed by the CA in "
                    f"{access.source('ca_cert')} ({access.ca_cert}) or does not name that host "
                    f"({reason}); give the CA that signed the etcd servers' certificates")
        return (f"etcd at {where}: its certificate is not trusted here ({reason}); give "
                "elastic.rdzv.ca_cert, the CA that signed the etcd servers' certificates")
    no_tls = (f"etcd at {where} does not speak TLS: remove elastic.rdzv.ca_cert and "
              "client_cert/client_key, or serve etcd with TLS")
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return no_tls
    closed = any(s in text for s in ("UNEXPECTED_EOF", "EOF occurred in violation",
                                     "Connection aborted", "Connection reset"))
    if closed and access.tls:
        speaks = _speaks_tls(where)
        if speaks is None:
            return None  # gone: a member down, not a certificate
        if not speaks:
            return no_tls
        if not access.client_cert:
            return (f"etcd at {where} closed the connection after the TLS handshake: it asks "
                    "for a client certificate; give elastic.rdzv.client_cert and client_key, "
                    "signed by the CA etcd trusts (its --trusted-ca-file)")
        return (f"etcd at {where} closed the connection after the TLS handshake: it refused "
                f"this node's client certificate ({access.client_cert}); give one signed by the "
                "CA etcd trusts (its --trusted-ca-file)")
    if closed and _speaks_tls(where) is True:
        return (f"etcd at {where} speaks TLS: give elastic.rdzv.ca_cert (the CA that signed its "
                "certificate), and client_cert/client_key if it asks for them")
    alert = re.search(r"(tlsv1[0-9]? alert [a-z ]+|sslv3 alert [a-z ]+)", text, re.IGNORECASE)
    said = alert.group(1).strip() if alert else ""
    if "certificate" in said.lower() or "unknown ca" in said.lower():
        if not access.client_cert:
            return (f"etcd at {where} asks for a client certificate ({said}): "
                    "give elastic.rdzv.client_cert and client_key, signed by the CA etcd "
                    "trusts (its --trusted-ca-file)")
        return (f"etcd at {where} refused this node's client certificate "
                f"({said}): give elastic.rdzv.client_cert and client_key "
                "signed by the CA etcd trusts (its --trusted-ca-file)")
    return None


def _speaks_tls(where: str) -> bool | None:
    """Whether the server at `where` completes a TLS handshake (certificates unchecked), None
    when nothing answers there: tells a server without TLS from one that refuses this node's
    certificate after the handshake, and both from a member that is down."""
    import socket
    import ssl

    host, _, port = where.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        raw = socket.create_connection((host.strip("[]"), int(port)), timeout=2.0)
    except (OSError, ValueError):
        return None
    try:
        with context.wrap_socket(raw):
            return True
    except OSError:
        return False
    finally:
        raw.close()


def short(err) -> str:
    code, message = answer(err)
    if code is not None:
        return message
    text = message or str(err) or type(err).__name__
    for known in ("Connection refused", "timed out", "No route to host", "Name or service not "
                  "known", "Connection reset by peer", "Connection aborted"):
        if known in text:
            return known
    return text if len(text) < 160 else text[:160] + "..."

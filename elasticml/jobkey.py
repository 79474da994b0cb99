"""The job key: a secret every node of a job shares, so that no stranger can take part.

The rendezvous store (a c10d `TCPStore` or etcd) and the process group's own store accept
writes from anyone who reaches their port. elasticml signs what matters with an HMAC under
the job key: every rendezvous value (who is in a round, where rank 0 listens, that the job is
over) and the training state one rank broadcasts to the others. A value that does not verify
is ignored as if it were not there, so a process without the key can neither join, nor move
the group's address, nor hand the workers another model. It can still delete or overwrite
keys (a denial of service): on a hostile network use etcd with TLS and authentication.

Where the key comes from, first found wins:
* the environment variable `ELASTICML_JOB_KEY` (what a scheduler's secret store sets);
* the file named by `elastic.rdzv.job_key_file` (its first line).
A one-node job with neither gets a fresh random key per launch, passed to its own workers
through the environment. The key is never printed, logged, written to the run dir or shown
by `--dry-run`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from elasticml.errors import UserError

ENV = "ELASTICML_JOB_KEY"
MIN_LENGTH = 16
"""Characters; `python -c 'import secrets; print(secrets.token_hex(32))'` gives 64."""
TAG_BYTES = 32


class ForgedValue(ValueError):
    """A signed value whose tag does not match: written without the job key, or damaged."""


def read_job_key(key_file: str | None, environ: dict[str, str] | None = None) -> bytes | None:
    """The job key from the environment or `key_file`; None when neither gives one."""
    env = os.environ if environ is None else environ
    text = env.get(ENV)
    where = f"${ENV}"
    if not text and key_file:
        path = Path(key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise UserError(f"elastic.rdzv.job_key_file: cannot read {path} ({err.strerror}); "
                            "give a readable file whose first line is the key") from None
        except UnicodeDecodeError:
            raise UserError(f"elastic.rdzv.job_key_file: {path} is not a text file; its "
                            "first line must be the key") from None
        text, where = (lines[0].strip() if lines else ""), str(path)
    if not text:
        return None
    if len(text) < MIN_LENGTH:
        raise UserError(f"the job key in {where} is {len(text)} characters; use at least "
                        f"{MIN_LENGTH} (e.g. `python -c 'import secrets; "
                        "print(secrets.token_hex(32))'`)")
    return text.encode()


def fresh_job_key() -> bytes:
    return secrets.token_hex(32).encode()


def tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def seal(key: bytes, payload: bytes) -> bytes:
    """`payload` followed by its HMAC tag."""
    return payload + tag(key, payload)


def unseal(key: bytes, blob: bytes) -> bytes:
    """The payload of a sealed blob; `ForgedValue` when its tag does not match."""
    if len(blob) < TAG_BYTES:
        raise ForgedValue("too short to carry a tag")
    payload, mac = blob[:-TAG_BYTES], blob[-TAG_BYTES:]
    if not hmac.compare_digest(mac, tag(key, payload)):
        raise ForgedValue("tag does not match the job key")
    return payload

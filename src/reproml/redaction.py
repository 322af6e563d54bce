"""One place that decides what a secret looks like, and hides it wherever text leaves the process.

Credentials reach reproml in three shapes: a password in a URL's user info
(`postgresql://me:pa/ss@db/optuna`, `http://user:token@mlflow:5000`), a secret query parameter
(`...?password=...`, `?X-Amz-Signature=...`, `?token=...`), and environment variables
(`MLFLOW_TRACKING_PASSWORD`, `AWS_SECRET_ACCESS_KEY`, `REPROML_TUNE_STORAGE`'s password, ...).
Every edge that writes text somewhere a person or another program reads it (MLflow params and
tags, the CLI's output and errors, logs, Prefect run logs, monitoring records) passes it through
`scrub`; a URI that is shown on purpose (the study's storage, the tracking store) goes through
`redact_url`. Both replace each secret with `***`, SQLAlchemy's own mask.

Masking errs on the side of hiding: a URL whose path contains `@` after a `host:port` is shown as
if the port were a password, because that is exactly how SQLAlchemy parses it too.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from reproml.env import environ_snapshot

MASK = "***"
# Environment values shorter than this are not searched for in free text: they would match words.
MIN_SECRET_LEN = 6

# Variables whose value is a secret whatever its form (a URL's password is found in any variable).
SECRET_ENV = frozenset(
    {
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "PREFECT_API_KEY",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_SERVER_API_AUTH_STRING",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "PGPASSWORD",
    }
)
_SECRET_ENV_NAME = re.compile(
    r"(PASSWORD|PASSWD|(^|_)TOKEN|(^|_)API_KEY|(^|_)ACCESS_KEY|(^|_)AUTH_STRING|(^|_)CREDENTIALS?)$|SECRET",
    re.IGNORECASE,
)
# ...but not the variables that only say where a secret is (Docker's `*_PASSWORD_FILE` convention).
_POINTER_ENV_NAME = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)

# A query parameter or key whose value is a credential: AWS/GCS/Azure signed URLs
# (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, sig), API keys, tokens, passwords.
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|pwd|token|secret|key|auth|signature|credential|^sig$", re.IGNORECASE
)

# `scheme://user:password@`: the password runs to the last `@` before a space, quote, `?` or `#`,
# so it may hold `/`, `@`, `:` and percent-escapes (what SQLAlchemy accepts, and more). One slash
# is enough: a URL that went through `pathlib.Path` (`https:/user:pw@host/x`) still has its password.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*:/+)(?P<user>[^\s:/?#@'\"<>`]*):(?P<password>[^\s'\"<>`?#]+)@"
)
# `name=value` in a query string, a libpq DSN (`host=db password=...`) or a command line.
_PAIR = re.compile(r"(?P<pre>^|[\s?&;,(\"'])(?P<name>[A-Za-z0-9_.\-%]+)=(?P<value>[^\s&;#,)\"'<>`]*)")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or key called `name` carries a credential (case-insensitive)."""
    return bool(_SECRET_NAME.search(unquote_plus(name)))


def is_secret_env(name: str) -> bool:
    """Whether the environment variable `name` holds a secret (by name alone)."""
    if name.upper() in SECRET_ENV:
        return True
    return bool(_SECRET_ENV_NAME.search(name)) and not _POINTER_ENV_NAME.search(name)


def _mask_userinfo(text: str) -> str:
    return _USERINFO.sub(lambda m: f"{m['head']}{m['user']}:{MASK}@", text)


def _mask_pairs(text: str) -> str:
    def mask(m: re.Match[str]) -> str:
        if not m["value"] or m["value"] == MASK or not is_secret_name(m["name"]):
            return m[0]
        return f"{m['pre']}{m['name']}={MASK}"

    return _PAIR.sub(mask, text)


def _sqlalchemy_masked(url: str) -> str:
    """`url` as SQLAlchemy renders it with the password hidden, when it is a database URL (one
    SQLAlchemy has a dialect for, as Optuna's RDB storage connects with) in which SQLAlchemy sees
    a password the patterns above did not (a `?` or a space inside it, say); else `url` as it is."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        if parsed.password in (None, "", MASK):
            return url
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError, TypeError):
        return url
    return parsed.render_as_string(hide_password=True)


def redact_url(url: str) -> str:
    """A URI fit to show: its password and secret query parameters replaced by `***`.

    A URI without credentials comes back unchanged, character for character.
    """
    masked = _mask_pairs(_mask_userinfo(url))
    return _sqlalchemy_masked(masked)


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """`(url without user info, user, password)` (percent-decoded) when `url` carries a password;
    `(url, None, None)` otherwise."""
    found = _USERINFO.match(url.strip())
    if found is None:
        return url, None, None
    clean = found["head"] + url.strip()[found.end() :]
    return clean, unquote(found["user"]), unquote(found["password"])


def _credentials_in(value: str) -> set[str]:
    """The passwords and secret query values inside `value`, raw and percent-decoded."""
    found: set[str] = set()
    for match in _USERINFO.finditer(value):
        found |= {match["password"], unquote(match["password"])}
    for match in _PAIR.finditer(value):
        if match["value"] and is_secret_name(match["name"]):
            found |= {match["value"], unquote_plus(match["value"])}
    return found


def _env_secrets(environ: Mapping[str, str] | None) -> dict[str, set[str]]:
    """Variable name -> the secrets its value holds: all of it for a secret-named variable (and
    the password of a `user:password` auth string), the credentials inside a URL-valued one."""
    env = environ_snapshot() if environ is None else environ
    found: dict[str, set[str]] = {}
    for name, value in env.items():
        if not value:
            continue
        held: set[str] = set()
        if is_secret_env(name):
            held.add(value)
            if name.upper().endswith("AUTH_STRING") and ":" in value:
                held.add(value.split(":", 1)[1])
        if "=" in value or "://" in value:
            held |= _credentials_in(value)
        forms = {form for v in held for form in (v, quote(v, safe=""), quote_plus(v))}
        forms = {v for v in forms if len(v) >= MIN_SECRET_LEN and v != MASK}
        if forms:
            found[name] = forms
    return found


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret the environment holds (raw and percent-encoded), longest first."""
    every = {value for values in _env_secrets(environ).values() for value in values}
    return sorted(every, key=len, reverse=True)


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Free text (an error message, a log line, a tag value) with every credential masked: URL
    passwords, secret `name=value` pairs, and the values of the environment's secrets."""
    return _scrub_with(text, secret_values(environ))


def _scrub_with(text: str, secrets: list[str]) -> str:
    """`scrub` with the environment's secrets (`secret_values`) already listed."""
    if not text:
        return text
    for value in secrets:
        text = text.replace(value, MASK)
    return _mask_pairs(_mask_userinfo(text))


def scrub_obj(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`scrub` applied to every string inside nested dicts, lists and tuples (keys included).

    The environment is read for secrets once per call, not once per string: a decision record
    holds hundreds of strings, and listing the secrets walks every environment variable."""
    secrets = secret_values(environ)

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            return _scrub_with(item, secrets)
        if isinstance(item, dict):
            return {clean(k): clean(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return type(item)(clean(v) for v in item)
        return item

    return clean(value)


def find_credential(value: str, environ: Mapping[str, str] | None = None) -> str | None:
    """What credential `value` holds, described without repeating it; None when it holds none."""
    for match in _USERINFO.finditer(value):
        return f"a password in the user info of a {match['head'].rstrip(':/')} URL"
    for match in _PAIR.finditer(value):
        if match["value"] and is_secret_name(match["name"]):
            return f"a value for the secret parameter {unquote_plus(match['name'])!r}"
    for name, held in sorted(_env_secrets(environ).items()):
        if any(secret in value for secret in held):
            return f"the value of the environment variable {name}"
    return None


def install_scrubbing() -> None:
    """Scrub every log record created from now on in this process (message and traceback), and
    the traceback of an uncaught exception. Idempotent.

    Log records are cleaned when created, so every handler (console, file, Prefect's API handler
    that stores run logs on the server) sees the clean text.
    """
    previous = logging.getLogRecordFactory()
    if not getattr(previous, "reproml_scrubbed", False):

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _scrub_record(record)
            return record

        factory.reproml_scrubbed = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
    if not getattr(sys.excepthook, "reproml_scrubbed", False):
        sys.excepthook = _scrubbing_hook(sys.excepthook)


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports it itself when it formats it
        return
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = scrub(text)


Hook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]


def _scrubbing_hook(previous: Hook) -> Hook:
    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> Any:
        text = "".join(traceback.format_exception(kind, error, tb))
        clean = scrub(text)
        if clean == text:
            return previous(kind, error, tb)
        sys.stderr.write(clean)
        return None

    hook.reproml_scrubbed = True  # type: ignore[attr-defined]
    return hook

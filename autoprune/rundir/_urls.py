"""Database URLs for ``--study-storage``: parsed once, redacted everywhere, connected with the installed driver.

Users paste URLs whose passwords hold characters a URL should have percent-encoded (``/``, ``#``, ``?``, ``[``,
``@``). A generic URL parser then misreads where the password ends, and a redaction built on it prints the
password. Here the user part is everything between ``scheme://`` and the *last* ``@``, so whatever the password
holds stays inside it; when a URL cannot be understood at all, its redacted form hides more, never less.
The password is kept out of ``repr``, messages, run.json and logs; ``scrub`` removes it from text written by
other libraries (in any of the quoted forms they may use).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from autoprune.errors import AutoPruneError

__all__ = ["StorageURL", "StorageURLError", "is_url", "parse_storage_url", "redact_url", "scrub"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)
# Query keys that libpq and other drivers accept as a password.
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})
_POSTGRES = ("postgresql", "postgres")
# The driver each family name maps to, in order of preference: the `postgres` extra installs psycopg2, while
# SQLAlchemy 2.x would pick psycopg 3 for a bare `postgresql://`.
_DRIVERS = {"postgresql": ("psycopg2", "psycopg")}
HIDDEN = "***"


class StorageURLError(AutoPruneError):
    """A ``--study-storage`` URL cannot be understood; the message shows it with its password hidden."""


def is_url(spec: str) -> bool:
    """True when ``spec`` is written as a URL (``scheme://...``) rather than a file path."""
    return bool(_SCHEME.match(spec))


@dataclass(frozen=True)
class StorageURL:
    """A database URL split into its parts; ``repr`` and ``str`` never show the password."""

    scheme: str  # as written, e.g. "postgresql" or "postgresql+psycopg2"
    username: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    database: str | None
    query: tuple[tuple[str, str], ...]
    raw: str = field(repr=False)

    def __str__(self) -> str:
        return self.redacted()

    @property
    def family(self) -> str:
        """The database family without a driver: ``postgresql`` for ``postgres://`` and ``postgresql+psycopg2``."""
        name = self.scheme.partition("+")[0].lower()
        return "postgresql" if name in _POSTGRES else name

    @property
    def driver(self) -> str | None:
        return self.scheme.partition("+")[2] or None

    def secrets(self) -> list[str]:
        """Every secret of the URL (the password, password-like query values), longest first."""
        found = [self.password] if self.password else []
        found += [v for k, v in self.query if k.lower() in _SECRET_KEYS and v]
        return sorted(set(found), key=len, reverse=True)

    def redacted(self) -> str:
        """The URL as users may see it: ``scheme://user:***@host:port/db?query`` with secrets as ``***``."""
        text = f"{self.scheme}://"
        if self.username is not None or self.password is not None:
            text += self.username or ""
            if self.password is not None:
                text += f":{HIDDEN}"
            text += "@"
        if self.host:
            text += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            text += f":{self.port}"
        if self.database is not None:
            text += f"/{self.database}"
        if self.query:
            text += "?" + "&".join(f"{k}={HIDDEN if k.lower() in _SECRET_KEYS else v}" for k, v in self.query)
        return text

    def connect_url(self) -> str:
        """The URL for SQLAlchemy, with the password percent-encoded and an installed driver named.

        ``postgresql://`` (and ``postgres://``, which SQLAlchemy no longer reads) gets the first installed
        driver of psycopg2 and psycopg; with neither installed it names psycopg2, whose import error tells
        the user which extra to install.
        """
        from sqlalchemy.engine import URL

        drivername = self.scheme
        if self.driver is None and self.family in _DRIVERS:
            choices = _DRIVERS[self.family]
            installed = [d for d in choices if importlib.util.find_spec(d) is not None]
            drivername = f"{self.family}+{(installed or choices)[0]}"
        elif self.family == "postgresql":
            drivername = f"postgresql+{self.driver}"
        if self.family == "sqlite":  # a file path, kept exactly as given
            return self.raw
        query: dict[str, list[str]] = {}
        for key, value in self.query:
            query.setdefault(key, []).append(value)
        url = URL.create(
            drivername,
            username=self.username,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.database,
            query={k: v[0] if len(v) == 1 else tuple(v) for k, v in query.items()},
        )
        return url.render_as_string(hide_password=False)


def _fallback_redaction(text: str) -> str:
    """A redaction for text that is not a well-formed URL: hides the whole user part, and more when unsure."""
    match = _SCHEME.match(text)
    if not match:
        return text
    scheme, rest = match.groups()
    if "@" in rest:
        user = rest[: rest.rindex("@")]
        name = user.split(":", 1)[0] if ":" in user else user
        hidden = f"{name}:{HIDDEN}" if ":" in user else name
        rest = f"{hidden}@{rest[rest.rindex('@') + 1 :]}"
    else:
        # No '@': `user:password` and `host:port` look alike; anything after a ':' that is not a port is hidden.
        netloc, sep, tail = rest.partition("/")
        host, colon, port = netloc.rpartition(":")
        if colon and not port.isdigit():
            rest = f"{host}:{HIDDEN}{sep}{tail}"
    if "?" in rest:
        head, _, query = rest.partition("?")
        pairs = [p.partition("=") for p in query.split("&")]
        rest = head + "?" + "&".join(f"{k}{eq}{HIDDEN if k.lower() in _SECRET_KEYS else v}" for k, eq, v in pairs)
    return f"{scheme}://{rest}"


def parse_storage_url(text: str) -> StorageURL:
    """Split a database URL; a malformed one raises ``StorageURLError`` naming it redacted, never the password."""
    match = _SCHEME.match(text)
    if not match:
        raise StorageURLError(f"--study-storage {text!r} is not a URL (scheme://...); give a database URL or a path")
    scheme, rest = match.groups()
    shown = _fallback_redaction(text)
    if scheme.partition("+")[0].lower() == "sqlite":
        # A file path, not an authority: an '@' or ':' in it is part of the file name.
        _, slash, path = rest.partition("/")
        if not path.partition("?")[0] or ":memory:" in path or "mode=memory" in path:
            raise StorageURLError(
                f"--study-storage {text}: an in-memory SQLite database is gone when the command ends, and the "
                "study with it; give a file, e.g. sqlite:///study.db, or leave --study-storage out"
            )
        return StorageURL(scheme, None, None, None, None, path if slash else None, (), text)

    def bad(problem: str) -> StorageURLError:
        return StorageURLError(
            f"--study-storage {shown}: {problem}; write it as scheme://user:password@host:port/database "
            "(percent-encode special characters of the password, e.g. %40 for @)"
        )

    username: str | None = None
    password: str | None = None
    has_user = "@" in rest
    if has_user:
        # The last '@' ends the user part: a password may hold '/', '#', '?', '[' or '@' unencoded.
        userinfo, rest = rest[: rest.rindex("@")], rest[rest.rindex("@") + 1 :]
        user, colon, pw = userinfo.partition(":")
        username = unquote(user)
        password = unquote(pw) if colon else None
    location, _, query_text = rest.partition("?")
    netloc, slash, database = location.partition("/")
    host: str | None
    port_text = ""
    if netloc.startswith("["):
        close = netloc.find("]")
        if close < 0:
            raise bad(f"unclosed '[' in the host {netloc!r}")
        host = netloc[1:close]
        after = netloc[close + 1 :]
        if after and not after.startswith(":"):
            raise bad(f"unexpected {after!r} after the host [{host}]")
        port_text = after[1:]
    else:
        if "[" in netloc or "]" in netloc:
            raise bad(f"a '[' or ']' in the host {netloc!r} (IPv6 addresses are written [::1])")
        host, _, port_text = netloc.partition(":")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            if not has_user:  # `user:password` without '@' reads as host:port: never echo what may be a password
                raise bad("the text after ':' is not a port number (a user and password go before an '@')")
            raise bad(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    elif netloc.endswith(":"):
        raise bad("an empty port after ':'")
    try:
        query = tuple(parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text)))
        if any(not key for key, _ in query):
            raise ValueError("empty key")
    except ValueError:
        raise bad("a malformed query after '?' (expected key=value&key=value)") from None
    return StorageURL(
        scheme=scheme,
        username=username,
        password=password,
        host=host or None,
        port=port,
        database=unquote(database) if slash else None,
        query=query,
        raw=text,
    )


def redact_url(text: str) -> str:
    """``text`` with every password it holds replaced by ``***``; never raises, never reveals more than it must."""
    try:
        return parse_storage_url(text).redacted()
    except StorageURLError:
        return _fallback_redaction(text)


def _forms(secret: str) -> set[str]:
    """The ways a library may have written ``secret`` into a message."""
    forms = {secret, quote(secret, safe=""), quote(secret, safe=" +"), quote_plus(secret), repr(secret)[1:-1]}
    return {f for f in forms if f}


def scrub(text: str, url: str | StorageURL) -> str:
    """``text`` with the password (and password-like query values) of ``url`` removed, in any quoted form."""
    if isinstance(url, str):
        try:
            url = parse_storage_url(url)
        except StorageURLError:
            match = _SCHEME.match(url)
            rest = match.group(2) if match else url
            user = rest[: rest.rindex("@")] if "@" in rest else rest
            secret = user.partition(":")[2]
            return _scrub_all(text, [secret, unquote(secret)] if secret else [])
    if url.secrets():
        text = text.replace(url.raw, url.redacted())
    return _scrub_all(text, url.secrets())


def _scrub_all(text: str, secrets: list[str]) -> str:
    for secret in sorted({f for s in secrets if s for f in _forms(s)}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text

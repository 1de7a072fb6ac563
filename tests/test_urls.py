"""Storage URLs: every form is parsed or refused in one line, and its password never shows."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import make_url

from autoprune.rundir._urls import StorageURLError, is_url, parse_storage_url, redact_url, scrub

SECRET = "Xk9/q2#L[m@s%t?v"  # every character that breaks a naive parser: / # [ @ % ?

# (URL as a user types it, the password it holds) - parsed with the password intact.
GOOD = [
    ("postgresql+psycopg2://u:Xk9/q2Lm@host/db", "Xk9/q2Lm"),
    (f"postgresql://alice:{SECRET}@db.example.org:5432/studies", SECRET),
    ("postgresql://u:p@ss@host/db", "p@ss"),
    ("postgresql://u:has#hash@host:6543/db", "has#hash"),
    ("postgresql://u:open[bracket@host/db", "open[bracket"),
    ("postgresql://u:close]bracket@[::1]:5432/db", "close]bracket"),
    ("postgresql://u:q?mark@host/db?sslmode=require", "q?mark"),
    ("postgresql://u:s%40cret@host/db", "s@cret"),  # percent-encoded: decoded once
    ("postgres://u:colon:in:it@host/db", "colon:in:it"),
    ("mysql+pymysql://root:pa ss+word@localhost:3306/optuna", "pa ss+word"),
    ("postgresql://u:%zz-not-an-escape@host/db", "%zz-not-an-escape"),
    ("postgresql://u:spaces and 'quotes\"@host/db", "spaces and 'quotes\""),
]


@pytest.mark.parametrize(("url", "password"), GOOD)
def test_password_is_parsed_intact_and_never_shown(url: str, password: str) -> None:
    parsed = parse_storage_url(url)
    assert parsed.password == password
    shown = [parsed.redacted(), str(parsed), repr(parsed), redact_url(url), f"{parsed}", f"{parsed!r}"]
    for text in shown:
        for form in {password, quote(password, safe=""), quote_plus(password)}:
            assert form not in text, text
        assert ":***@" in text or "password" not in text
    # The URL handed to SQLAlchemy reads back as the same password, with the driver the extra installs.
    connect = make_url(parsed.connect_url())
    assert connect.password == password and connect.username == parsed.username
    if parsed.family == "postgresql":
        assert connect.drivername in ("postgresql+psycopg2", "postgresql+psycopg")


def test_redacted_form_keeps_everything_but_the_password() -> None:
    url = "postgresql+psycopg2://alice:Xk9/q2Lm@db.example.org:5433/studies?sslmode=require&password=other"
    assert redact_url(url) == "postgresql+psycopg2://alice:***@db.example.org:5433/studies?sslmode=require&password=***"
    assert redact_url("postgresql://u:secret@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"
    assert redact_url("postgresql://alice@host/db") == "postgresql://alice@host/db"  # nothing to hide
    assert redact_url("sqlite:////tmp/some@folder/study.db") == "sqlite:////tmp/some@folder/study.db"


def test_bare_postgresql_gets_an_explicit_driver() -> None:
    # SQLAlchemy 2.x picks psycopg 3 for postgresql://; the [postgres] extra installs psycopg2.
    assert make_url("postgresql://u@h/d").get_driver_name() == "psycopg"
    connect = make_url(parse_storage_url("postgresql://u:pw@h/d").connect_url())
    assert connect.drivername.startswith("postgresql+psycopg")
    assert make_url(parse_storage_url("postgres://u:pw@h/d").connect_url()).get_backend_name() == "postgresql"
    kept = parse_storage_url("postgresql+pg8000://u:pw@h/d").connect_url()
    assert make_url(kept).drivername == "postgresql+pg8000"
    sqlite = "sqlite:////tmp/a@b/study.db"
    assert parse_storage_url(sqlite).connect_url() == sqlite


# (URL, what the one-line message must say) - refused, the password never echoed.
BAD = [
    ("postgresql://u:secret@[::1/db", "unclosed '['"),
    ("postgresql://u:secret@host:54x2/db", "port '54x2'"),
    ("postgresql://u:secret@host:99999/db", "port '99999'"),
    ("postgresql://u:secret@host:/db", "empty port"),
    ("postgresql://u:secret@ho]st/db", "'[' or ']'"),
    ("postgresql://u:secret@[::1]x/db", "after the host"),
    ("postgresql://u:secret", "not a port number"),  # forgot the host: `u:secret` reads as host:port
    ("postgresql://u:secret@host/db?=", "malformed query"),
    ("postgresql://u:secret@host/db?sslmode", "malformed query"),
]


@pytest.mark.parametrize(("url", "problem"), BAD)
def test_malformed_urls_are_one_line_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(StorageURLError) as info:
        parse_storage_url(url)
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert "secret" not in message
    assert "secret" not in redact_url(url)


def test_scrub_removes_every_quoted_form() -> None:
    url = f"postgresql://alice:{SECRET}@host/db"
    text = (
        f"failed for {url}; raw {SECRET}; quoted {quote(SECRET, safe='')}; plus {quote_plus(SECRET)}; repr {SECRET!r}"
    )
    cleaned = scrub(text, url)
    for form in (SECRET, quote(SECRET, safe=""), quote_plus(SECRET)):
        assert form not in cleaned
    assert "postgresql://alice:***@host/db" in cleaned
    # A URL too broken to parse still has its user part scrubbed.
    assert "secret" not in scrub("cannot connect to u:secret@[::1", "postgresql://u:secret@[::1/db")


def test_is_url() -> None:
    assert is_url("postgresql://h/d") and is_url("sqlite:///x.db")
    assert not is_url("runs/journal.log") and not is_url("/tmp/x://y") and not is_url("")

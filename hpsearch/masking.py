"""Credentials hidden from everything shown, logged or stored, and messages put on one line.

No SQLAlchemy here: the trainer, the search and the command line mask and shorten their
messages with the same two functions as the database layer.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

# Credentials come in several forms, all accepted by libpq and psycopg:
#   postgresql://user:SECRET@host/db                    (userinfo)
#   postgresql://user@host/db?password=SECRET&sslpassword=SECRET      (query parameters)
#   host=db user=hps password=SECRET  or  password='SE CRET'          (libpq key=value)
#   {'password': 'SECRET'}                                (a driver's connect arguments)
# A key counts as secret when its name ends like one of these (sslpassword, PGPASSWORD,
# auth_token, aws_secret_access_key), so that "token_mlp_dim=16" stays readable.
MIN_BARE_SECRET = 4  # shorter values are masked where a key names them, not wherever they occur
_SECRET_KEY = re.compile(r"(?i)(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key"
                         r"|access[_-]?key|private[_-]?key|credentials?)$")
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
# a bare secret ends at ASCII whitespace only, as libpq reads it: a password holding another
# Unicode space (U+1680, U+3000, ...) is one value there, so it must be hidden whole here
_SPACE = r" \t\n\r\f\v"
# up to the last @ of the URL: a password typed with a raw @ in it is hidden whole
_USERINFO = re.compile(rf"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<secret>[^{_SPACE}'\"]*)"
                       r"(?P<tail>@)")
_KEY_VALUE = re.compile(rf"(?P<head>(?P<key>[A-Za-z_][\w.-]*)\s*=\s*)"
                        rf"(?P<secret>{_QUOTED}|[^{_SPACE}&#]*)(?P<tail>)")
_KEY_COLON = re.compile(rf"(?P<head>(?P<q>['\"])(?P<key>[\w.-]+)(?P=q)\s*:\s*)"
                        rf"(?P<secret>{_QUOTED})(?P<tail>)")


def mask_secrets(text: str, *urls: str) -> str:
    """`text` (a URL, a libpq connection string, an error message, a log line, a traceback)
    with every credential in it replaced by ***: the one masking function, for everything
    shown, logged or stored. `urls` whose secrets may be echoed bare (a driver quoting the
    password it was given) have those values removed too."""
    def hide(match: re.Match[str]) -> str:
        key = match.groupdict().get("key")
        if key is not None and not _SECRET_KEY.search(key):
            return match.group(0)
        return f"{match.group('head')}***{match.group('tail')}"

    for url in urls:
        for secret in _url_secrets(url):  # not shorter ones: "ab" would mangle every message
            text = text.replace(secret, "***")
    for pattern in (_USERINFO, _KEY_VALUE, _KEY_COLON):
        text = pattern.sub(hide, text)
    return text


def _url_secrets(url: str) -> list[str]:
    """The secret values in a URL, longest first (one may contain another)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    values = [unquote(password)] if password else []
    values += [value for key, value in parse_qsl(parts.query) if _SECRET_KEY.search(key)]
    return sorted({str(v) for v in values if len(str(v)) >= MIN_BARE_SECRET and str(v) != "***"},
                  key=len, reverse=True)


def one_line(message: object) -> str:
    """`message` (an exception, a driver's multi-line text) on one line, secrets masked."""
    return mask_secrets(" ".join(str(message).split()))

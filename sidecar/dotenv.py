"""Read dotenv files (``env`` inputs): ``KEY=VALUE`` lines that become variables of the worker's environment.

Accepted: blank lines and ``#`` comments, an optional ``export`` prefix, spaces around ``=``, unquoted
values (a `` #`` starts a trailing comment), single-quoted values (taken literally) and double-quoted values
(``\\n``, ``\\t``, ``\\r``, ``\\"`` and ``\\\\`` escapes). Not accepted: values spanning lines and variable
expansion. Errors name the line number only: the content may be a secret.

An env input is data for the job, never configuration of its runtime: the asset's slot lists the keys it
accepts (``keys: [...]``) and :func:`accepted` refuses any other key by name, so ``BASH_ENV``,
``PYTHONPATH``, ``LD_PRELOAD`` or a parameter's name cannot reach the worker this way. The same checks run
when the job is created (``core.jobs``) and again wherever a backend reads the file. A slot that lists
:data:`ANY_KEY` (the original middle-layer's env inputs, which declared no keys) accepts every key but the
reserved ones (:func:`is_reserved_env_key`): variables that configure a runtime rather than the job.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path

MAX_DOTENV_BYTES = 64 * 1024  # an env input is a handful of settings, never bulk data
MAX_KEY_LENGTH = 128
MAX_VALUE_LENGTH = 4096  # characters, as for string parameters

ANY_KEY = "*"
# Variables that configure a runtime (loader, shell, interpreter) rather than the job: an env slot never
# accepts them, whatever the provider lists. The backends set PATH, HOME, LANG and the WML_* contract.
RESERVED_ENV_KEYS = frozenset(
    {"PATH", "HOME", "LANG", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "GCONV_PATH"}
    | {"NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"}
    | {"PERL5OPT", "PERL5LIB", "PERLLIB", "RUBYOPT", "RUBYLIB"}
)
RESERVED_ENV_PREFIXES = ("WML_", "LD_", "PYTHON")

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT = re.compile(r"export\s+")
_INLINE_COMMENT = re.compile(r"\s+#")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse the dotenv file at ``path`` (reading at most :data:`MAX_DOTENV_BYTES` + 1 bytes of it)."""
    with path.open("rb") as f:
        return parse_dotenv(f.read(MAX_DOTENV_BYTES + 1))


def parse_dotenv(data: bytes) -> dict[str, str]:
    """Parse a dotenv document; raise ValueError naming the first bad line's number (or the size)."""
    if len(data) > MAX_DOTENV_BYTES:
        raise ValueError(f"larger than {MAX_DOTENV_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"line {bad_line}: not valid UTF-8 text") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        try:
            parsed = parse_dotenv_line(line.removesuffix("\r"))
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
        if parsed is not None:
            key, value = parsed
            values[key] = value
    return values


def is_reserved_env_key(key: str) -> bool:
    return key in RESERVED_ENV_KEYS or key.startswith(RESERVED_ENV_PREFIXES)


def accepted(values: Mapping[str, str], keys: Collection[str]) -> dict[str, str]:
    """``values`` if every key is one of ``keys`` (with :data:`ANY_KEY` among them: any key that is not
    reserved); else ValueError naming the keys refused."""
    if ANY_KEY in keys:
        refused = sorted(k for k in values if is_reserved_env_key(k))
        allowed = "any key but WML_*, LD_*, PYTHON*, PATH, HOME, BASH_ENV and the other reserved ones"
    else:
        refused = sorted(set(values) - set(keys))
        allowed = ", ".join(sorted(keys)) or "none"
    if refused:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise ValueError(f"keys not accepted by this slot: {shown} (it accepts: {allowed})")
    return dict(values)


def parse_dotenv_line(line: str) -> tuple[str, str] | None:
    """(key, value) for an assignment, None for a blank or comment line; ValueError says what is wrong."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if export := _EXPORT.match(stripped):
        stripped = stripped[export.end() :]
    key, separator, raw = stripped.partition("=")
    key = key.strip()
    if not separator:
        raise ValueError("expected KEY=VALUE")
    if not _KEY.fullmatch(key):
        raise ValueError("invalid variable name (letters, digits and _, not starting with a digit)")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"variable name longer than {MAX_KEY_LENGTH} characters")
    value = _parse_value(raw.strip())
    if "\x00" in value:
        raise ValueError("the value contains a NUL character")
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"the value is longer than {MAX_VALUE_LENGTH} characters")
    return key, value


def _parse_value(raw: str) -> str:
    if not raw or raw[0] not in "'\"":
        return _INLINE_COMMENT.split(raw, maxsplit=1)[0]
    quote = raw[0]
    end = _closing_quote(raw, quote)
    trailing = raw[end + 1 :].strip()
    if trailing and not trailing.startswith("#"):
        raise ValueError("unexpected text after the closing quote")
    body = raw[1:end]
    if quote == "'":
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), body)


def _closing_quote(raw: str, quote: str) -> int:
    index = 1
    while index < len(raw):
        char = raw[index]
        if char == "\\" and quote == '"':
            index += 2
            continue
        if char == quote:
            return index
        index += 1
    raise ValueError("unterminated quoted value (values cannot span lines)")

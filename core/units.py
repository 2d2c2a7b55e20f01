"""Parsing of human quantities in asset files: byte sizes ("100MiB", "256Mi", "1G") and CPU ("500m")."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "B": 1}
for _i, _p in enumerate("KMGTP", start=1):
    _FACTORS[_p] = 1000**_i
    _FACTORS[_p + "B"] = 1000**_i
    _FACTORS[_p + "I"] = 1024**_i
    _FACTORS[_p + "IB"] = 1024**_i


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"100MiB"``, ``"256Mi"``, ``"1G"``, ``"512"``."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '100MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (use bytes or a unit: KiB, MiB, GiB, Mi, G, ...)")
    unit = (m.group(2) or "").upper()
    return int(float(m.group(1)) * _FACTORS[unit])


def parse_cpu(value: int | float | str) -> float:
    """Cores from ``2``, ``0.5`` or ``"500m"``."""
    if isinstance(value, bool):
        raise ValueError("cpu must be a number of cores or millicores like '500m'")
    if isinstance(value, int | float):
        result = float(value)
    else:
        text = value.strip()
        try:
            result = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            raise ValueError(f"not a cpu quantity: {value!r}") from None
    if result <= 0:
        raise ValueError("cpu must be positive")
    return result

"""Sizes as people write them (512m, 4g, 1.5GiB): war plan limits and host memory."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """Turn '4g', '512m', '1.5GiB' or a byte count into bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"'{text}' is not a size such as 512m or 4g")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])

"""The one parser of each quantity a user writes: sizes (``mirror-* -b/-S``, the service
config's ``bwlimit``/``chunk_size``) and durations (``--reconnect-delay``, the config's
``reconnect_delay``, the cleanup config's periods).  Each checks its range, so no caller
ever gets a negative, zero, infinite or absurd value; failures are ``QuantityError``s (a
HammerError) whose message names the value.  Used by every layer, like ``hammerfs.errors``.
"""

from __future__ import annotations

import math
import re

from hammerfs.errors import HammerError

MAX_SIZE = 1 << 40  # 1 TiB: far above any sane chunk or bandwidth, far below overflow
MAX_SECONDS = 7 * 86400

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms]?)")
DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}


class QuantityError(HammerError):
    """A size or duration that is malformed or out of range."""


def parse_size(value: str | int, *, what: str = "size", minimum: int = 1,
               maximum: int = MAX_SIZE) -> int:
    """Bytes from ``4096``, ``"512k"``, ``"10m"``, ``"1.5g"`` (binary units, an optional
    ``b``/``ib`` suffix), within ``minimum..maximum``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QuantityError(f"bad {what} {value!r} (e.g. 10m, 1.5g)")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(value.strip().lower()) if len(value) <= 64 else None
        if m is None or ("." in m.group(1) and not m.group(2)):  # no fractions of a byte
            raise QuantityError(f"bad {what} {value!r} (e.g. 10m, 1.5g)")
        whole, _, frac = m.group(1).partition(".")
        unit = _SIZE_UNITS[m.group(2)]  # exact: 1.5g is 3 << 29, not a float's rounding
        size = int(whole) * unit + (int(frac) * unit // 10 ** len(frac) if frac else 0)
    if not minimum <= size <= maximum:
        raise QuantityError(f"{what} {value!r} is out of range ({minimum} to {maximum} bytes)")
    return size


def parse_duration(value: str | int | float, *, what: str = "time", integer: bool = False,
                   maximum: float = MAX_SECONDS) -> float:
    """Seconds from a number or ``"30s"``, ``"5m"``, ``"1.5h"``, ``"60d"`` (no unit:
    seconds), finite, ``0..maximum``.  ``integer``: whole numbers only (returns an int)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(f"bad {what} {value!r} (a number of seconds, or e.g. 30s, 5m, 1d)")
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip().lower()) if len(value) <= 64 else None
        if m is None or (integer and "." in m.group(1)):
            raise QuantityError(f"bad {what} {value!r} (expected a number with d, h, m or s)")
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= maximum \
            or (integer and seconds != int(seconds)):
        raise QuantityError(f"{what} {value!r} is out of range (0 to {maximum:g} seconds"
                            + (", whole" if integer else "") + ")")
    return int(seconds) if integer else seconds

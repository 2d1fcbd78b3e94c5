"""Drive ids as the C library takes them, and as error messages quote them."""

from __future__ import annotations

import errno

from ._binding import ffi, lib
from .errors import InvalidDriveIdError

# The longest repr of a drive id that an error message quotes whole.  A
# longer one is quoted as its first characters (a repr of at most half this)
# and its length: a megabyte-long id must not make a megabyte-long message.
_ID_QUOTED_MAX = 80


def quoted(drive_id: str) -> str:
    """*drive_id* as an error message quotes it: its repr, shortened if long."""
    whole = repr(drive_id[:_ID_QUOTED_MAX])  # if that cut the id, its repr is too long
    if len(whole) <= _ID_QUOTED_MAX:
        return whole
    n = _ID_QUOTED_MAX // 2
    head = repr(drive_id[:n])
    while len(head) > _ID_QUOTED_MAX // 2 + 2 and n > 1:  # escapes: \x00 is 4 characters
        n //= 2
        head = repr(drive_id[:n])
    return f"{head}... ({len(drive_id)} characters)"


def id_bytes(drive_id: str) -> bytes:
    """*drive_id* as C takes it: ``TypeError`` or :class:`InvalidDriveIdError` if it cannot be."""
    if not isinstance(drive_id, str):
        raise TypeError(f"drive id must be a str, not {type(drive_id).__name__}")
    try:
        return drive_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDriveIdError(
            f"invalid drive id {quoted(drive_id)}: must be valid Unicode (no lone surrogates)"
        ) from None


def refuse_id(drive_id: str, raw: bytes, err: int) -> None:
    """Raise :class:`InvalidDriveIdError` naming the rule, if C refused *raw* (EINVAL) as an id."""
    check = lib.pmem_metrics_id_check(raw, len(raw)) if err == errno.EINVAL else 0
    if check != 0:
        why = ffi.string(lib.pmem_metrics_id_strerror(check)).decode()
        raise InvalidDriveIdError(f"invalid drive id {quoted(drive_id)}: {why}")

"""Flushing: the Firecracker-compatible JSON object.

A flush reports, for every counter, what was added since the previous flush,
then moves the counter's baseline up by what it reported.  It happens in
steps in C: a snapshot loads every counter once, and is published (committed)
only after the report was built; if an exception arrives at any point before
the caller has the report -- a ``KeyboardInterrupt`` included, even one that
lands while the commit runs -- the flush is withdrawn, so the next flush
reports those counts (see :mod:`pmem_metrics._snapshot`).

The object (compact JSON, ids kept as UTF-8, devices in id order, ``"pmem"``,
the aggregate, last)::

    {"pmem_drv0":{"activate_fails":1,"cfg_fails":0,"event_fails":0,"queue_event_count":0},
     "pmem_drv1":{"activate_fails":0,"cfg_fails":0,"event_fails":0,"queue_event_count":3},
     "pmem":{"activate_fails":1,"cfg_fails":0,"event_fails":0,"queue_event_count":3}}

:class:`pmem_metrics.MetricsWriter` puts it in a metrics line, after a head
(:func:`line_head`): ``"utc_timestamp_ms"`` first, then ``"id"`` and
``"properties"`` where they were given, and ends the line with ``\\n``::

    {"utc_timestamp_ms":1700000000000,"pmem_drv0":{...},"pmem_drv1":{...},"pmem":{...}}
    {"utc_timestamp_ms":1700000000000,"id":"vm-1","properties":{"k":"v"},"pmem_drv0":{...},...}

A writer told which segment a line is from (:meth:`MetricsWriter.set_registry`
with labels, as the exporter does with several segments) puts them in one
``"labels"`` object after the head (:func:`labels_json`), so no label can
clash with a Firecracker key::

    {"utc_timestamp_ms":1700000000000,"labels":{"segment":"/srv/a/pmem.seg","vm":"a"},"pmem_drv0":...}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Callable, TypeVar

from ._binding import FIELDS, CData
from ._snapshot import Snapshot, new_slot, publish, take, withdraw

Flush = dict[str, dict[str, int]]
"""What a flush returns: ``{"pmem_<id>": {field: diff}, ..., "pmem": {...}}``."""

# '"pmem_%s":{"activate_fails":%d,...}' -- field names are C identifiers, no escaping needed.
_FIELDS_JSON = ",".join(f'"{name}":%d' for name in FIELDS)
_DEVICE_JSON = '"pmem_%s":{' + _FIELDS_JSON + "}"
_AGGREGATE_JSON = '"pmem":{' + _FIELDS_JSON + "}"


def as_dict(snap: Snapshot) -> Flush:
    """The flush object of *snap*, as a dict."""
    ids = Snapshot.split(snap.ids_text)
    out = {f"pmem_{i}": dict(zip(FIELDS, row)) for i, *row in zip(ids, *snap.columns(snap.diffs))}
    out["pmem"] = dict(zip(FIELDS, snap.aggregate))
    return out


def as_json(snap: Snapshot) -> str:
    """The flush object of *snap*, as compact JSON text."""
    text = snap.ids_text
    # Ids hold no control characters, so '"' and '\' are all JSON must escape
    # (ensure_ascii=False / serde_json style: everything else stays UTF-8);
    # one pass over all ids at once, before they are split.
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    rows = zip(Snapshot.split(text), *snap.columns(snap.diffs))
    parts = [_DEVICE_JSON % row for row in rows]
    parts.append(_AGGREGATE_JSON % tuple(snap.aggregate))
    return "{" + ",".join(parts) + "}"


_T = TypeVar("_T")


def flush_in(
    r: CData, render: Callable[[Snapshot], _T], _withdraw: Callable[[Any], None] = withdraw
) -> _T:
    """Flush the C registry *r*: take, render, publish; withdraw on any exception, up to the return.

    The publish and the return are covered by the same handler, whose first
    action is one C call on locals (*_withdraw* is bound here so that not
    even a global lookup, where CPython 3.9 would check for signals, stands
    between an exception and the withdrawal).
    """
    slot = new_slot()
    try:
        out = render(take(slot, None, r))
        publish(slot)
        return out
    except:  # bare: nothing to evaluate on the way to the C call
        _withdraw(slot)
        raise


def _check_utf8(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (no lone surrogates): {text!r}") from None


def line_head(instance_id: str | None, properties: Mapping[str, str] | None) -> str:
    """The start of every line, a ``%``-template for the timestamp, then ``id`` and ``properties``.

    Raises ``TypeError`` for an *instance_id* that is not a ``str`` or
    *properties* that do not map ``str`` to ``str``, ``ValueError`` for text
    with lone surrogates.
    """
    head = '{"utc_timestamp_ms":%d,'
    if instance_id is not None:
        if not isinstance(instance_id, str):
            raise TypeError(f"id must be a str, not {type(instance_id).__name__}")
        _check_utf8("id", instance_id)
        head += '"id":' + json.dumps(instance_id, ensure_ascii=False).replace("%", "%%") + ","
    if properties is not None:
        if not isinstance(properties, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in properties.items()
        ):
            raise TypeError("properties must map str to str")
        for k, v in properties.items():
            _check_utf8("properties", k + v)
        text = json.dumps(dict(properties), ensure_ascii=False, separators=(",", ":"))
        head += '"properties":' + text.replace("%", "%%") + ","
    return head


def labels_json(labels: Mapping[str, str] | None) -> str:
    """``"labels":{...},``, what a line says after its head of the segment it is from; ``""``
    for ``None``.  Raises ``TypeError`` for *labels* that do not map ``str`` to ``str``.

    UTF-8 as ids are, but text that has none (a path's undecodable bytes) is
    ``\\u`` escaped: a line never fails for its labels.
    """
    if labels is None:
        return ""
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise TypeError("labels must map str to str")
    text = json.dumps(dict(labels), ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(dict(labels), separators=(",", ":"))
    return '"labels":' + text + ","

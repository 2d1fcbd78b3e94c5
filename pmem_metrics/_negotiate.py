"""What a Prometheus scraper asks for: the format (``Accept``) and gzip (``Accept-Encoding``).

:class:`pmem_metrics.exposition.Exposition` answers with what these say.
"""

from __future__ import annotations


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers OpenMetrics 1.0 to text 0.0.4 (q-values honoured).

    ``application/openmetrics-text`` with no version or version 1.0.0 is
    OpenMetrics; ``text/plain`` (any version: the text is the same for these
    names), ``text/*`` and ``*/*`` are the text format; ties go to the first.
    """
    best, om = 0.0, False
    for item in (accept or "").split(","):
        media, *params = (token.strip() for token in item.split(";"))
        args = dict(p.split("=", 1) for p in params if "=" in p)
        try:
            q = float(args.get("q", "1"))
        except ValueError:
            continue
        if media.lower() == "application/openmetrics-text":
            if args.get("version", "1.0.0") != "1.0.0":
                continue
            this = True
        elif media.lower() in ("text/plain", "text/*", "*/*"):
            this = False
        else:
            continue
        if q > best:
            best, om = q, this
    return om


def gzip_accepted(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (not with ``q=0``)."""
    for item in (accept_encoding or "").split(","):
        coding, *params = (token.strip() for token in item.split(";"))
        if coding.lower() in ("gzip", "x-gzip") and "q=0" not in params:
            return True
    return False

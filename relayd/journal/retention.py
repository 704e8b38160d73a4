"""Which closed segments to drop: by age, then oldest first by total size."""


def select(segments, active, now, retention, max_size):
    """``[(name, reason)]`` to delete, oldest first.

    ``segments`` is ``[(name, size, last_time)]`` oldest first; ``active``
    (the segment being written, or None) is never chosen.  ``retention`` or
    ``max_size`` of 0 switches that rule off.
    """
    total = sum(size for _, size, _ in segments)
    chosen = {}
    if retention > 0:
        for name, size, last in segments:
            if name != active and last < now - retention:
                chosen[name] = "age"
                total -= size
    if max_size > 0:
        for name, size, _ in segments:
            if total <= max_size:
                break
            if name != active and name not in chosen:
                chosen[name] = "size"
                total -= size
    return [(name, chosen[name]) for name, _, _ in segments if name in chosen]

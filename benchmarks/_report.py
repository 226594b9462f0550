"""The closing lines of every benchmark: PASS or FAIL per target, and the exit status."""

from __future__ import annotations


def report(checks: list[tuple[str, bool]]) -> int:
    """Print ``PASS``/``FAIL`` and the label of each check; 1 if any failed, else 0."""
    print()
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    return 0 if all(ok for _, ok in checks) else 1

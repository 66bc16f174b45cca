"""The signals this process was sent (SIGINT, SIGTERM, SIGHUP), as raised.

The CLI's handlers raise an exception at once and record it here. Where
Python cannot propagate it (a weakref callback such as importlib's
module-lock one, a ``__del__``, a finaliser), it is only reported as
unraisable and lost; long loops call ``check`` so that it is raised again
where it can be (the engine, once per turn; the classifier, once per
target).
"""

from __future__ import annotations

received: list[BaseException] = []


def check() -> None:
    """Raise the first signal received, if any (a no-op otherwise)."""
    if received:
        raise received[0]

"""worker stage."""

from __future__ import annotations

__all__ = ["SHUTDOWN_GRACE_S"]

#: How long a stopping worker lets its running job go on before releasing it (here,
#: not in the runner, so the command line can name it without importing the runner).
SHUTDOWN_GRACE_S = 30.0

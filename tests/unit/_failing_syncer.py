"""A queue syncer whose disk fails on demand, for tests of what a failed sync does."""

from __future__ import annotations

import os
from typing import ClassVar

from phoenixcp.platform.queue import _syncer_py


class FailingSyncer(_syncer_py.Syncer):
    """The pure-Python syncer, except that once ``fail`` is set every plain sync goes to a
    pipe, where fdatasync fails with EINVAL, as on a failing disk. ``fail_at_start`` makes new
    instances fail from their first sync; ``made`` lists the instances (the queue makes its
    own at ``start``)."""

    made: ClassVar[list[FailingSyncer]] = []
    fail_at_start: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.fail = self.fail_at_start
        self._pipe = os.pipe()
        self.made.append(self)

    def request(self, fd: int, flags: int = 0) -> int:
        return super().request(self._pipe[1] if self.fail and not flags else fd, flags)

    def close(self) -> None:
        super().close()
        for fd in self._pipe:
            os.close(fd)
        self._pipe = ()

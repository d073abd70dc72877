"""A CPU-time sampler for a metrics-pipeline process that the benchmark starts.

py-spy and perf sampled this VM at a few percent of the asked rate (py-spy: ~300 samples in
60 s at 50 Hz), so their shares could not be trusted. This samples by the process's own CPU
time instead: ``ITIMER_PROF`` sends SIGPROF every 5 ms of CPU (any thread's), and the handler
records the main thread's Python stack, where the C call that used the time was made from.
Time in other threads (the window builder, the queue's syncer) lands on whatever the main
thread runs next, so read their shares with care.

Use it by putting this directory first on ``PYTHONPATH``; only a process whose command line
names ``metrics_pipeline`` is sampled, and it writes collapsed stacks (``a;b;c count``) to
``$PHOENIX_CPUPROF.<pid>`` at exit:

    PYTHONPATH=bench/pipeline/cpuprof PHOENIX_CPUPROF=/tmp/cpuprof \\
        .venv/bin/python bench/pipeline/run.py --target phoenix --rounds 1 --scenario cap
    .venv/bin/python bench/pipeline/cpuprof/report.py /tmp/cpuprof.<pid>
"""

from __future__ import annotations

import os

_OUT = os.environ.get("PHOENIX_CPUPROF")


def _install(out: str) -> None:
    import atexit
    import collections
    import signal
    import types

    counts: collections.Counter[str] = collections.Counter()

    def stack(frame: types.FrameType | None) -> str:
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:"
                         f"{frame.f_lineno})")
            frame = frame.f_back
        return ";".join(reversed(names))

    def sample(signum: int, frame: types.FrameType | None) -> None:
        counts[stack(frame)] += 1

    def dump() -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        with open(f"{out}.{os.getpid()}", "w") as fh:
            fh.writelines(f"{k} {v}\n" for k, v in counts.items())

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, 0.005, 0.005)
    atexit.register(dump)


if _OUT:
    with open("/proc/self/cmdline", "rb") as _cmdline:
        if b"metrics_pipeline" in _cmdline.read():
            _install(_OUT)

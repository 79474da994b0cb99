"""What the warm-worker tests fork instead of a real worker (standard library only, so that a
forked child imports nothing heavy): each behaves as its first argument says, after the same
set-up a warm worker gets (`train/warm.become`)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from elasticml.train.warm import become


def behave(args: tuple[str, ...], env: dict[str, str], stdout: str, stderr: str) -> None:
    what = args[0]
    if what == "early-sigterm":  # SIGTERM while still held, as in the zygote, before set-up
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)
    become(env, stdout, stderr)
    if what == "report":  # what the child looks like, as JSON on stdout
        print(json.dumps({
            "pid": os.getpid(), "sid": os.getsid(0), "ppid": os.getppid(),
            "threads": len(os.listdir("/proc/self/task")),
            "name": Path("/proc/self/comm").read_text().strip(),
            "sigterm": str(signal.getsignal(signal.SIGTERM)),
            "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
            "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "env": dict(os.environ), "argv": sys.argv}))
        print("to stderr", file=sys.stderr)
        os._exit(0)
    if what.startswith("exit:"):
        os._exit(int(what.partition(":")[2]))
    if what == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "with-child":  # a process of its own, in its group, as a DataLoader worker is
        import subprocess

        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    if what == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready")
    while True:  # "sleep" (and "ignore-sigterm"): until a signal ends it
        time.sleep(0.05)

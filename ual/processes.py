"""Process lifetime: stopping ``ual train`` stops every rank it launched.

``accelerate launch`` with several processes starts each rank in a session of its own (torch elastic), so
a signal to the launcher's process group never reaches the ranks, and a launcher killed with -9 cannot pass
anything on: its ranks would train on, writing checkpoints nobody waits for. Two mechanisms close that:

- ``run_launcher`` (in ``ual train``) starts the launcher in a process group of its own, forwards Ctrl-C,
  SIGTERM and SIGHUP to that group once (a second signal sends SIGKILL), and waits for it to end;
- ``stop_with_parent`` (in every rank) watches, once a second, the process that launched it and
  ``ual train`` itself; when either is gone (even by kill -9), the rank ends itself with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

LAUNCHER_PID = "UAL_LAUNCHER_PID"  # set by ``ual train`` for the processes it launches
_LAUNCHED_BY = ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION", LAUNCHER_PID)  # set by torchrun / accelerate


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): trust kill(0)
        return True


def stop_with_parent(interval: float = 1.0) -> threading.Thread | None:
    """In a process started by a launcher: end it when the launcher (or ``ual train``) is gone.

    Does nothing in a process started from a shell, so ``nohup python -m ual.train ...`` survives its terminal.
    """
    if not any(os.environ.get(name) for name in _LAUNCHED_BY):
        return None
    parent = os.getppid()
    launcher = int(os.environ[LAUNCHER_PID]) if os.environ.get(LAUNCHER_PID, "").isdigit() else None

    def watch():
        while True:
            time.sleep(interval)
            gone = os.getppid() != parent or (launcher is not None and not _alive(launcher))
            if gone:
                print(f"[ual] the process that launched this rank ({parent}) is gone: stopping (pid {os.getpid()})",
                      file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="ual-stop-with-parent", daemon=True)
    thread.start()
    return thread


def run_launcher(cmd: list[str]) -> int:
    """Run ``cmd`` (``accelerate launch ...``) in its own process group; forward stop signals to that group.

    Returns the command's exit code, or 128 + the signal number when a signal ended it.
    """
    proc = subprocess.Popen(cmd, env={**os.environ, LAUNCHER_PID: str(os.getpid())}, preexec_fn=os.setpgrp)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        target = signum if len(received) == 1 else signal.SIGKILL
        if len(received) == 1:
            print(f"ual train: {signal.Signals(signum).name}: stopping every rank (send it again to kill them at once)",
                  file=sys.stderr, flush=True)
        try:
            os.killpg(proc.pid, target)
        except ProcessLookupError:
            pass

    handled = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup: a hangup must not stop the run
        handled.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        while True:  # a timed wait, not a blocking waitpid: a signal taken by another thread would not interrupt that,
            try:     # and the handler above runs only when the main thread gets back to Python
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and code != 0:
        print("ual train: stopped; checkpoints that were complete are kept (resume with --resume_from_checkpoint "
              "true)", file=sys.stderr)
    return 128 - code if code < 0 else code

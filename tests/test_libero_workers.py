"""No simulation worker outlives the process that started it: SIGKILL, SIGTERM or Ctrl-C (SIGINT) of the parent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, time
    from peft_ckt.libero.workers import run_jobs

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for the stacks if this hangs

    def sleepy(job):
        # One write per line (a pipe write under PIPE_BUF is atomic): print() may write the text and its newline
        # separately, and the two workers' lines then interleave.
        os.write(1, f"worker {os.getpid()}\\n".encode())
        time.sleep(120)
        return job

    if __name__ == "__main__":
        try:
            for _ in run_jobs(sleepy, list(range(4)), num_workers=2, desc="test", progress=False):
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """
)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (already dead, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_workers_die_with_their_parent(tmp_path, sig):
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PEFT_CKT_LIBERO_CACHE": str(tmp_path / "libero")}
    stacks = tmp_path / "stacks.txt"
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=stacks.open("w"),
        text=True,
        env=env,
        # Ctrl-C as a terminal delivers it: a test run started in the background (`make test &`, some CI runners)
        # inherits SIGINT ignored, and the parent would then never see the signal the test sends.
        preexec_fn=_default_sigint,
    )
    workers = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline:
        line = parent.stdout.readline()
        workers += [int(pid) for pid in re.findall(r"worker (\d+)", line)]
    assert len(workers) == 2, "the workers did not start"
    parent.send_signal(sig)
    try:
        parent.wait(timeout=60)
    except subprocess.TimeoutExpired:
        parent.send_signal(signal.SIGUSR1)
        time.sleep(2)
        parent.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the parent did not exit 60 s after {sig.name}; its threads:\n{stacks.read_text()[-4000:]}")
    if sig == signal.SIGINT:
        assert parent.returncode == 130 and "interrupted" in parent.stdout.read()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their parent ({sig.name})"

"""The wall time a run cost over all its sessions: `OUTPUT/timing.json`.

`make experiment` spreads over as many sessions as it takes, and a session may end by a kill: each invocation appends
its own entry (start, host, CPUs, seconds per stage) and rewrites the file after every stage and once a minute, so a
killed session loses at most a minute of its count. The report gives this session's seconds and the sum over all.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

from peft_ckt.atomic import write_json


class TimeLedger:
    """`start()` begins this invocation's entry in `path` (keeping earlier ones); `update(seconds)` records this
    invocation's seconds per stage; `total` runs from `start()`. `close()` stops the minute writer."""

    def __init__(self, path: Path, every: float = 60.0):
        self.path = path
        self.every = every
        self.sessions: list[dict[str, Any]] = json.loads(path.read_text())["sessions"] if path.is_file() else []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._seconds: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> TimeLedger:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.sessions.append({"started": now, "host": platform.node(), "cpus": os.cpu_count(), "seconds": {}})
        self._started = time.perf_counter()
        self._write()
        self._thread = threading.Thread(target=self._tick, daemon=True, name="time-ledger")
        self._thread.start()
        return self

    def update(self, seconds: dict[str, float]) -> None:
        with self._lock:
            self._seconds = dict(seconds)
        self._write()

    def totals(self) -> dict[str, Any]:
        """Seconds per stage summed over every session, the number of sessions, and this session's seconds so far."""
        if self._thread is not None and not self._stop.is_set():  # started here: its entry up to now, not a minute ago
            self._write()
        with self._lock:
            summed: dict[str, float] = {}
            for session in self.sessions:
                for key, value in session["seconds"].items():
                    summed[key] = round(summed.get(key, 0.0) + value, 1)
            this = self.sessions[-1]["seconds"].get("total", 0.0) if self.sessions else 0.0
            return {"sessions": len(self.sessions), "seconds": summed, "this_session": this}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._write()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def _write(self) -> None:
        with self._lock:
            if not self.sessions:
                return
            seconds = {**self._seconds, "total": time.perf_counter() - self._started}
            self.sessions[-1]["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
            write_json(self.path, {"sessions": self.sessions})

"""Append-only JSON-lines logs that survive a kill: the episode records of evaluation and collection.

Each record is one JSON line written with a single `write`, flushed and synced before the next episode, so a killed
run loses at most the line it was writing. Reading a log drops a torn last line (a write cut short); `RecordLog.open`
also cuts it off the file before appending, so that the next record starts on a line of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_json, write_text
from .runtime import LiberoConfigError


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a log (none when it does not exist); a torn last line is ignored, damage elsewhere raised."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # no newline after it: the write of the last record was cut short
                break
            raise LiberoConfigError(f"{path}, line {number}: not a JSON record ({err}); the log is damaged") from err
    return rows


class RecordLog:
    """An append-only JSON-lines file: `open()` returns the records so far, `append(row)` adds one durably."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle = None

    def open(self) -> list[dict[str, Any]]:
        rows = read_records(self.path)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        if self.path.is_file() and self.path.read_text(errors="replace") != text:
            # A torn last line: cut it off (atomically) so that the next record does not continue it.
            write_text(self.path, text)
        self._handle = self.path.open("a")
        return rows

    def append(self, row: dict[str, Any]) -> None:
        if self._handle is None:
            raise RuntimeError(f"{self.path}: call open() before append()")
        self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def config_differences(recorded: dict[str, Any], config: dict[str, Any]) -> str:
    """`key: recorded -> now` for every setting that differs (JSON values: tuples and lists compare equal)."""
    now = json.loads(json.dumps(config))
    keys = [k for k in dict.fromkeys([*recorded, *now]) if recorded.get(k) != now.get(k)]
    return ", ".join(f"{k}: {json.dumps(recorded.get(k))} recorded, {json.dumps(now.get(k))} now" for k in keys)


def open_episode_log(folder: Path, config: dict[str, Any], mode: str) -> tuple[list[dict[str, Any]], RecordLog]:
    """The episodes already recorded in `folder/episodes.jsonl` and the log, open to append the next ones.

    `folder/eval_config.json` stores the configuration the records belong to. `mode`:
    - `"resume"`: continue the records of the same configuration; a different one is refused.
    - `"new"`: start a log; a folder that already holds records is refused (nothing is overwritten or mixed).
    - `"auto"`: continue the records when the configuration matches, otherwise start over.
    """
    log = RecordLog(folder / "episodes.jsonl")
    config_file = folder / "eval_config.json"
    rows = read_records(log.path)
    recorded = json.loads(config_file.read_text()) if config_file.is_file() else None
    matches = recorded is not None and not config_differences(recorded, config)
    if rows and mode == "new":
        raise LiberoConfigError(
            f"{folder} already holds {len(rows)} recorded episode(s) ({log.path.name}): resume that evaluation "
            f"(--resume) or choose another output folder"
        )
    if rows and mode == "resume" and not matches:
        reason = (
            f"the recorded configuration differs ({config_differences(recorded, config)})"
            if recorded is not None
            else f"{config_file.name} is missing"
        )
        raise LiberoConfigError(
            f"cannot resume the evaluation in {folder}: {reason}; run again with the recorded settings, "
            f"or without --resume in another output folder"
        )
    if not (rows and matches):
        log.path.unlink(missing_ok=True)
        write_json(config_file, config)
    return log.open(), log

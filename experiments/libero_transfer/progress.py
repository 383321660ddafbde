"""A run's finished work, copied out of its output folder and back in: how a long run survives losing its machine.

`snapshot(output, folder)` copies what a run has finished (demonstration sets, models, adapters, tuning records,
episode logs, the time ledger) into `folder`, which is committed; `restore(folder, output)` puts it back into the
output folder of a run on another machine before that run starts, which then resumes where the snapshot was taken.
Work in progress (`*.partial` folders, `*.ckpt` training checkpoints, temporary files) is never copied.

A run writes absolute paths into its files (an adapter's `base_model_name_or_path`, the policy of each episode record),
so a snapshot holds them relative to a placeholder and a restore writes them for its own output folder: a run resumes
in any folder, on any machine. Both copy whole *units*, each atomically: a cache entry (`cache/models/teacher-p0-…`, one tuning record), an episode
log's folder (`rollouts/`), a top-level file. A reader of either folder sees a unit whole or not at all, and a
restore never replaces a unit the output already holds: what a run wrote itself is newer than any snapshot.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from peft_ckt.atomic import staged_directory, write_bytes

logger = logging.getLogger(__name__)

# Names of work in progress: a stage's staging folder, a training checkpoint, an atomic write's temporary file, an
# older folder set aside by `commit_directory`.
UNFINISHED = (".partial", ".ckpt", ".tmp-", ".old-")
# The snapshot's own description, written by `snapshot` and never restored.
DESCRIPTION = "README.md"
DESCRIPTION_TEXT = """# The pre-registered experiment's finished work

Written by `make experiment-snapshot` (`python -m experiments.libero_transfer.experiment --snapshot DIR`) from the
run's output folder, and committed: the demonstration sets, models, adapters, tuning records, episode logs and time
ledger the run has finished. `make experiment` copies what this folder holds and its output lacks back in before it
starts (`--restore DIR`; `experiments/libero_transfer/progress.py`), so a run resumes on another machine, and a
finished one is re-derived on a fresh clone without training or playing anything again (only the inference time is
measured anew). Its `report.md` / `report.json` are the run's report as of its last finished phase, as the run wrote
it: `phases_done` names the phases, and rows of later phases are absent. The published report of the finished run is
`docs/results/experiment/`. `timing.json` is the run's time ledger, one entry per session.
"""


def _unfinished(name: str) -> bool:
    return any(mark in name for mark in UNFINISHED)


def units(root: Path) -> list[Path]:
    """The finished units under `root`, relative to it: `cache/<stage>/<entry>` and every other top-level item."""
    found = []
    for item in sorted(root.iterdir()) if root.is_dir() else []:
        if _unfinished(item.name) or item.name == DESCRIPTION:
            continue
        if item.name == "cache" and item.is_dir():
            for stage in sorted(p for p in item.iterdir() if p.is_dir() and not _unfinished(p.name)):
                found += [e.relative_to(root) for e in sorted(stage.iterdir()) if not _unfinished(e.name)]
        else:
            found.append(item.relative_to(root))
    return found


# What a snapshot holds in place of the run's output folder in the paths it wrote.
PLACEHOLDER = "${EXPERIMENT_OUTPUT}"
TEXT_SUFFIXES = (".json", ".jsonl", ".md")  # JSON and the model cards peft writes beside it


def _spelled(path: str) -> bytes:
    """`path/` as a JSON string spells it."""
    return json.dumps(path + "/")[1:-1].encode()


def _prefixes(output: Path) -> list[bytes]:
    """How the run's files may spell `output` at the start of a path (as given, absolute, resolved), longest first so
    that an absolute path is replaced whole before its relative tail is looked for."""
    spellings = {str(output), str(output.absolute()), str(output.resolve())}
    return sorted((_spelled(s) for s in spellings), key=len, reverse=True)


def _content(path: Path, replace: list[tuple[bytes, bytes]]) -> bytes:
    """A file's bytes, with `replace` applied to a text file's (JSON, a model card); an episode log's up to its last
    complete line (the run may be appending to it)."""
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        data = data[: data.rfind(b"\n") + 1]
    if path.suffix in TEXT_SUFFIXES:
        for old, new in replace:
            data = data.replace(old, new)
    return data


def _files(unit: Path, replace: list[tuple[bytes, bytes]]) -> dict[str, bytes]:
    if unit.is_file():
        return {"": _content(unit, replace)}
    return {
        str(f.relative_to(unit)): _content(f, replace)
        for f in sorted(unit.rglob("*"))
        if f.is_file() and not any(_unfinished(part) for part in f.relative_to(unit).parts)
    }


def _write_unit(files: dict[str, bytes], target: Path) -> None:
    """`files` (of `_files`) in place of `target`, atomically."""
    if list(files) == [""]:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, files[""])
        return
    with staged_directory(target) as staging:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)


def _changed(output: Path, folder: Path) -> dict[str, dict[str, bytes]]:
    """Each finished unit of the run in `output` that the snapshot `folder` lacks or holds otherwise, as it would be
    written there."""
    if not (output / "cache").is_dir():
        raise ValueError(f"{output} holds no run (no cache/ folder): nothing to snapshot")
    neutral = [(prefix, PLACEHOLDER.encode() + b"/") for prefix in _prefixes(output)]
    changed = {}
    for unit in units(output):
        files, target = _files(output / unit, neutral), folder / unit
        if not (target.exists() and _files(target, []) == files):
            changed[str(unit)] = files
    return changed


def pending(output: str | Path, folder: str | Path) -> list[str]:
    """The units `snapshot(output, folder)` would copy: the run's finished work not yet in the snapshot."""
    return list(_changed(Path(output), Path(folder)))


def snapshot(output: str | Path, folder: str | Path) -> list[str]:
    """Copies every finished unit of the run in `output` that `folder` lacks or holds otherwise into `folder`;
    returns the units copied. Safe while the run goes on: it only reads `output`."""
    output, folder = Path(output), Path(folder)
    changed = _changed(output, folder)
    for unit, files in changed.items():
        _write_unit(files, folder / unit)
    if not (folder / DESCRIPTION).is_file() or (folder / DESCRIPTION).read_text() != DESCRIPTION_TEXT:
        write_bytes(folder / DESCRIPTION, DESCRIPTION_TEXT.encode())
    return list(changed)


def restore(folder: str | Path, output: str | Path) -> list[str]:
    """Copies into `output` every unit of the snapshot `folder` that `output` lacks; returns the units copied. A unit
    the output already holds is kept (its own run wrote it, later than any snapshot of it); the log names those that
    differ from the snapshot's."""
    folder, output = Path(folder), Path(output)
    if not (folder / "cache").is_dir():
        raise ValueError(f"{folder} is not a snapshot of a run (no cache/ folder)")
    local = [(PLACEHOLDER.encode() + b"/", _spelled(str(output)))]  # as the resumed run is told its output
    copied, kept = [], []
    for unit in units(folder):
        files, target = _files(folder / unit, local), output / unit
        if target.exists():
            if _files(target, []) != files:
                kept.append(str(unit))
            continue
        _write_unit(files, target)
        copied.append(str(unit))
    if kept:
        logger.info(f"kept {len(kept)} unit(s) of {output} that differ from the snapshot's: {', '.join(kept)}")
    return copied


__all__ = ["DESCRIPTION", "PLACEHOLDER", "UNFINISHED", "pending", "restore", "snapshot", "units"]

"""`peft_ckt.atomic`: a file or folder is seen whole or not at all, and a failed write leaves the old one in place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from peft_ckt.atomic import (
    atomic_path,
    commit_directory,
    commit_files,
    save_safetensors,
    staged_directory,
    write_json,
    write_text,
)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"run": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write('{"run": 2')  # half a record
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_text(target, "new")
    assert target.read_text() == "new"


def test_safetensors_are_written_whole(tmp_path):
    save_safetensors({"w": torch.arange(4.0)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert torch.equal(load_file(tmp_path / "model.safetensors")["w"], torch.arange(4.0))


def test_commit_directory_replaces_an_older_folder_and_commit_files_moves_files(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.bin").write_text("old")
    staging = tmp_path / "model.partial"
    staging.mkdir()
    (staging / "new.bin").write_text("new")
    commit_directory(staging, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.bin"] and not staging.exists()
    assert not list(tmp_path.glob("*.old-*"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("before")
    staging.mkdir()
    (staging / "a.txt").write_text("after")
    assert commit_files(staging, out) == [str(out / "a.txt")]
    assert (out / "a.txt").read_text() == "after"


def test_a_staged_directory_appears_only_when_its_block_ends(tmp_path):
    final = tmp_path / "adapter"
    stale = tmp_path / "adapter.partial"
    stale.mkdir()
    (stale / "left-by-a-killed-writer.bin").write_text("x")
    with staged_directory(final) as staging:
        assert staging == stale and list(staging.iterdir()) == []  # cleared before the block
        (staging / "adapter_model.safetensors").write_text("weights")
        assert not final.exists()
    assert [p.name for p in final.iterdir()] == ["adapter_model.safetensors"] and not stale.exists()

    with pytest.raises(ValueError, match="bad step"):
        with staged_directory(final) as staging:
            (staging / "half.bin").write_text("half")
            raise ValueError("bad step")
    assert [p.name for p in final.iterdir()] == ["adapter_model.safetensors"]  # the older folder stays
    assert not stale.exists()


def test_a_writer_killed_inside_a_staged_directory_leaves_no_final_folder(tmp_path):
    final = tmp_path / "model"
    script = (
        "import sys, time; from peft_ckt.atomic import staged_directory\n"
        f"with staged_directory({str(final)!r}) as staging:\n"
        "    (staging / 'part.bin').write_text('half'); print('writing', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not final.exists() and (tmp_path / "model.partial" / "part.bin").is_file()
    with staged_directory(final) as staging:  # the next writer starts clean
        (staging / "whole.bin").write_text("whole")
    assert [p.name for p in final.iterdir()] == ["whole.bin"]

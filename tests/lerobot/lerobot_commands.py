"""LeRobot's own commands (`lerobot-train`, `lerobot-eval`, `peft-ckt collect-libero`) in a subprocess, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
TRAIN = [str(BIN / "lerobot-train"), "--policy.device=cpu", "--policy.push_to_hub=false", "--num_workers=0",
         "--eval_freq=0", "--log_freq=1", "--wandb.enable=false", "--batch_size=4"]  # fmt: skip
# LeRobot's LIBERO env names the wrist camera `image2`; the collected datasets `wrist_image`.
RENAME = '--rename_map={"observation.images.image2": "observation.images.wrist_image"}'

# lerobot-eval's own `main`, with the `ckt` policy's `predict_action_chunk` watched: per predicted chunk, how often
# the teacher ran, and whether the chunk differs from the student's alone (same noise, adapter disabled).
EVAL_PROBE = """
import atexit, json, sys
import torch
from peft_ckt.integrations.lerobot.modeling_ckt import CKTPolicy

counts = {"chunks": 0, "teacher_calls": 0, "changed": 0}
predict = CKTPolicy.predict_action_chunk

def watched(self, batch, **kwargs):
    ckt = self.model.base_model
    if "extract_teacher_features" not in vars(ckt):
        extract = ckt.extract_teacher_features
        def counted(*args, **kw):
            counts["teacher_calls"] += 1
            return extract(*args, **kw)
        ckt.extract_teacher_features = counted
    noise = torch.random.get_rng_state()
    chunk = predict(self, batch, **kwargs)
    torch.random.set_rng_state(noise)
    with torch.no_grad(), self.model.disable_adapter():
        alone = self.model.predict_action_chunk(batch, **kwargs)
    counts["chunks"] += 1
    counts["changed"] += int(not torch.allclose(chunk, alone))
    return chunk

CKTPolicy.predict_action_chunk = watched
atexit.register(lambda: print("CKT_PROBE", json.dumps(counts)))
sys.argv[0] = "lerobot-eval"
from lerobot.scripts.lerobot_eval import main
main()
"""


def run_command(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_LEROBOT_HOME": str(cwd / "home")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


def lerobot_eval_on_libero(policy: Path, output: Path, cwd: Path) -> tuple[str, dict[str, int]]:
    """One short LIBERO episode through lerobot-eval (watched, see EVAL_PROBE): its log and the probe's counts.
    LeRobot 0.4.4's LIBERO env renders 256x256 whatever `--env.observation_height` says (its `gym_kwargs` leave the
    size out): the policies resize for themselves."""
    log = run_command([sys.executable, "-c", EVAL_PROBE, f"--policy.path={policy}", "--policy.device=cpu",
                       "--env.type=libero", "--env.task=libero_object", "--env.task_ids=[0]",
                       "--env.episode_length=12", "--eval.n_episodes=1", "--eval.batch_size=1", RENAME,
                       f"--output_dir={output}"], cwd)  # fmt: skip
    probe = json.loads(next(line for line in log.splitlines() if line.startswith("CKT_PROBE")).split(" ", 1)[1])
    return log, probe


def dataset_args(demos: Path) -> list[str]:
    return ["--dataset.repo_id=local/demos", f"--dataset.root={demos}"]


def train_wam(demos: Path, backbone: str, output: Path) -> Path:
    run_command([*TRAIN, *dataset_args(demos), "--policy.type=ckt_wam", f"--policy.backbone={backbone}",
                 "--steps=2", "--save_freq=2", f"--output_dir={output}"], output.parent)  # fmt: skip
    return output / "checkpoints" / "last" / "pretrained_model"

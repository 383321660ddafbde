"""The plain CNN reference policy: its size, that it learns, and the LeRobot-style folder round trip."""

import numpy as np
import torch

from peft_ckt.libero.policies.cnn import CNNPolicy, train_cnn_policy
from peft_ckt.libero.policies.factory import load_policy

INSTRUCTIONS = [
    "pick up the alphabet soup and place it in the basket",
    "pick up the cream cheese and place it in the basket",
]


def _episodes(length: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    episodes = []
    for task_id, task in enumerate(INSTRUCTIONS):
        # A task-dependent action: the policy must read the task (or the images) to fit it.
        action = np.tile(np.array([0.5 - task_id, 0, 0, 0, 0, 0, 1], dtype=np.float32), (length, 1))
        episodes.append(
            {
                "task": task,
                "task_id": task_id,
                "state": rng.normal(size=(length, 8)).astype(np.float32),
                "action": action,
                "image": rng.integers(0, 255, size=(length, 32, 32, 3), dtype=np.uint8),
                "wrist_image": rng.integers(0, 255, size=(length, 32, 32, 3), dtype=np.uint8),
            }
        )
    return episodes


def test_the_reference_cnn_has_about_half_a_million_parameters_and_maps_rewritten_instructions():
    policy = CNNPolicy(INSTRUCTIONS, image_size=32)
    count = sum(p.numel() for p in policy.parameters())
    assert 300_000 < count < 700_000, count
    assert policy.task_index("grab the cream cheese and put it into the basket") == 1
    assert policy.task_index(INSTRUCTIONS[0]) == 0


def test_it_learns_the_tasks_and_round_trips_through_a_policy_folder(tmp_path):
    policy, losses = train_cnn_policy(_episodes(), steps=60, batch_size=16, seed=0)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    policy.save_pretrained(tmp_path)
    loaded = load_policy(str(tmp_path))
    assert isinstance(loaded, CNNPolicy)
    observation = {
        "observation.images.image": np.zeros((32, 32, 3), np.uint8),
        "observation.images.wrist_image": np.zeros((32, 32, 3), np.uint8),
        "observation.state": np.zeros(8, np.float32),
        "task": INSTRUCTIONS[1],
    }
    chunk = loaded.predict_action_chunk(observation)
    assert chunk.shape == (16, 7)
    np.testing.assert_allclose(chunk, policy.predict_action_chunk(observation), atol=1e-6)
    assert torch.all(torch.isfinite(torch.from_numpy(chunk)))

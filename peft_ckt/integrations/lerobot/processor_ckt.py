"""Pre/post-processors of `ckt`: the student policy's own."""

from __future__ import annotations

from lerobot.policies.factory import make_pre_post_processors

from .configuration_ckt import CKTConfig


def make_ckt_pre_post_processors(config: CKTConfig, dataset_stats: dict | None = None):
    student = config.student_config()
    student.device = config.device
    return make_pre_post_processors(student, dataset_stats=dataset_stats)

"""CKT on plain `nn.Module`s (no config, no from_pretrained): the project's reference world action model."""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_ckt import CKTConfig
from peft_ckt.testing import TinyWorldActionModel

SMALL = dict(
    num_context_tokens=3, num_experts=4, top_k=2, bottleneck_dim=8, router_hidden_dim=8, num_attention_heads=2
)


def inputs(batch_size=3, obs_dim=12, text_dim=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "observation": torch.randn(batch_size, 5, obs_dim, generator=generator),
        "text_embeds": torch.randn(batch_size, 4, text_dim, generator=generator),
    }


@pytest.mark.parametrize("route", ["target_module", "context_kwarg"])
def test_wider_teacher_into_plain_student(route, tmp_path):
    torch.manual_seed(0)
    teacher = TinyWorldActionModel(obs_dim=20, text_dim=6, width=40, num_blocks=4).eval()
    student = TinyWorldActionModel().eval()
    student_copy = copy.deepcopy(student)
    if route == "target_module":  # E_t is the output of `text_proj` (width inferred from the Linear)
        config = CKTConfig(teacher=teacher, teacher_layer="blocks.1", target_modules="text_proj", **SMALL)
    else:  # E_t is the raw `text_embeds` kwarg: a plain module cannot tell its width, so it is given
        config = CKTConfig(
            teacher=teacher, teacher_layer="blocks.1", context_kwarg="text_embeds", student_hidden_size=10, **SMALL
        )
    model = get_peft_model(student, config).eval()
    bank = model.get_bank()
    assert bank.teacher_hidden_size == 40  # read from the block's first LayerNorm
    teacher_inputs = inputs(obs_dim=20, text_dim=6, seed=1)
    frames, actions = model(**inputs(), teacher_inputs=teacher_inputs)
    assert frames.shape == (3, 5, 12) and actions.shape == (3, 4, 7)
    with model.disable_adapter():
        base_frames, _ = model(**inputs())
    assert not torch.allclose(frames, base_frames)

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(student_copy, tmp_path, teacher=teacher).eval()
    with torch.no_grad():  # same (fast) attention path for both
        expected, _ = model(**inputs(), teacher_inputs=teacher_inputs)
        again, _ = reloaded(**inputs(), teacher_inputs=teacher_inputs)
    assert torch.equal(again, expected)

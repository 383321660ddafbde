"""CKT around policy-style students (LeRobot's convention): `forward(batch) -> (loss, info)`, methods such as
`select_action` that PeftModel hands to the student unchanged, and sequence-first teacher layers (ACT's encoder)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from peft_ckt import CKTConfig
from peft_ckt.testing import TINY_CKT_KWARGS, TinyWorldActionModel

# The shared tiny bank, at top-2 without dropout; each test names its own teacher layer and injection point.
SMALL = {k: v for k, v in TINY_CKT_KWARGS.items() if k != "teacher_layer"} | dict(
    top_k=2, adapter_dropout=0.0, load_balance_weight=0.5
)


class TinyPolicy(nn.Module):
    """A policy in LeRobot's shape: `forward(batch)` returns `(loss, info)`; `select_action(batch)` denoises by
    calling the network (a submodule) several times, never `forward`."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyWorldActionModel(obs_dim=12, text_dim=10)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        _, actions = self.net(batch["observation"], batch["text_embeds"])
        loss = (actions - batch["action"]).pow(2).mean()
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def select_action(self, batch: dict[str, torch.Tensor], steps: int = 3) -> torch.Tensor:
        actions = 0
        for _ in range(steps):
            actions = actions + self.net(batch["observation"], batch["text_embeds"])[1]
        return actions / steps


class SequenceFirstTeacher(nn.Module):
    """A teacher whose layers work on `[S, B, D]` (`nn.MultiheadAttention` without batch_first, like ACT)."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.proj = nn.Linear(5, width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=24, dropout=0.0) for _ in range(2)
        )

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        hidden = self.proj(observation).transpose(0, 1)  # [B, S, D] -> [S, B, D]
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


def _batch(batch_size: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "observation": torch.randn(batch_size, 3, 12, generator=generator),
        "text_embeds": torch.randn(batch_size, 4, 10, generator=generator),
        "action": torch.randn(batch_size, 4, 7, generator=generator),
    }


def _teacher_inputs(batch_size: int = 2) -> dict[str, torch.Tensor]:
    return {"observation": torch.randn(batch_size, 6, 5, generator=torch.Generator().manual_seed(1))}


@pytest.fixture
def policy():
    torch.manual_seed(0)
    config = CKTConfig(
        teacher=SequenceFirstTeacher(),
        teacher_layer="layers.0",
        teacher_sequence_first=True,
        target_modules="net.text_proj",
        **SMALL,
    )
    return get_peft_model(TinyPolicy(), config)


def test_tuple_loss_gets_the_auxiliary_loss(policy):
    batch = _batch()
    loss, info = policy(batch, teacher_inputs=_teacher_inputs())
    aux = policy.auxiliary_loss()
    assert aux.item() > 0 and isinstance(info, dict)
    with policy.disable_adapter():
        bare, _ = policy(batch)
    # The student's own loss (with the context) plus the weighted load-balancing loss, as a scope computes it too.
    with policy.injection_scope(ckt_context=policy.last_context()):
        scoped_loss, _ = policy.get_base_model()(batch)
    torch.testing.assert_close(loss, scoped_loss)
    with policy.injection_scope(ckt_context=policy.last_context()):
        predicted = policy.get_base_model().net(batch["observation"], batch["text_embeds"])[1]
    own = nn.functional.mse_loss(predicted, batch["action"])
    torch.testing.assert_close(loss, own + aux)
    assert not torch.allclose(loss, bare)
    loss.backward()
    bank = policy.base_model.get_bank()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bank.router.parameters())


def test_a_forwarded_method_without_context_fails_clearly(policy):
    batch = _batch()
    with pytest.raises(RuntimeError, match=r"without the teacher's context.*injection_scope"):
        policy.select_action(batch)  # PeftModel hands it to the student: it must not run without CKT
    with policy.disable_adapter():
        assert policy.select_action(batch).shape == (2, 4, 7)  # the student alone, asked for explicitly


def test_injection_scope_computes_the_context_once_for_every_step(policy):
    batch, teacher_inputs = _batch(), _teacher_inputs()
    calls = []
    extract = policy.base_model.extract_teacher_features
    policy.base_model.extract_teacher_features = lambda *a, **k: calls.append(1) or extract(*a, **k)
    with policy.injection_scope(teacher_inputs=teacher_inputs) as context:
        actions = policy.select_action(batch, steps=3)
    assert len(calls) == 1 and context.tokens.shape == (2, 2 * 2 + 1, 16)
    with policy.disable_adapter():
        bare = policy.select_action(batch, steps=3)
    assert not torch.allclose(actions, bare)
    # The same context given explicitly gives the same actions; the scope's hooks are gone afterwards.
    with policy.injection_scope(ckt_context=context):
        again = policy.select_action(batch, steps=3)
    torch.testing.assert_close(again, actions)
    with pytest.raises(RuntimeError, match="without the teacher's context"):
        policy.select_action(batch)
    # A PeftModel call inside a scope uses the scope's context (once), and refuses a second one.
    with policy.injection_scope(ckt_context=context):
        loss, _ = policy(batch)
        with pytest.raises(ValueError, match="inside `injection_scope`"):
            policy(batch, teacher_inputs=teacher_inputs)
    torch.testing.assert_close(loss, policy(batch, ckt_context=context)[0])


def test_sequence_first_teacher_layer_is_read_batch_first():
    torch.manual_seed(0)
    teacher = SequenceFirstTeacher()
    config = dict(teacher=teacher, teacher_layer="layers.0", target_modules="net.text_proj", **SMALL)
    model = get_peft_model(TinyPolicy(), CKTConfig(teacher_sequence_first=True, **config))
    features = model.base_model.extract_teacher_features(_teacher_inputs(batch_size=2))
    assert features.shape == (2, 6, 12)  # [B, N, d_t], not the layer's [N, B, d_t]
    model(_batch(2), teacher_inputs=_teacher_inputs(2))
    # Read as batch-first, the same layer gives 6 "samples" for a batch of 2: refused.
    wrong = get_peft_model(TinyPolicy(), CKTConfig(**config))
    with pytest.raises(ValueError, match="batch"):
        wrong(_batch(2), teacher_inputs=_teacher_inputs(2))
    assert CKTConfig.__dataclass_fields__["teacher_sequence_first"].metadata["help"]

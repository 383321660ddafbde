"""The paper's ablations as config switches: each removes its component (parameters, context tokens, loss) and the
ablated adapters save and load."""

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_ckt import CKTAdapterBank, CKTConfig
from peft_ckt.ablations import PAPER_ABLATIONS, ablation_config, ablation_trainable_parameters, format_ablation_table
from peft_ckt.testing import TinyWorldActionModel

torch.set_num_threads(1)

SMALL = dict(
    teacher_layer="blocks.1",
    num_context_tokens=3,
    num_experts=4,
    top_k=2,
    bottleneck_dim=8,
    router_hidden_dim=8,
    num_attention_heads=2,
    adapter_dropout=0.0,
    attention_dropout=0.0,
)
K, D_T, D_S = 3, 12, 16


def bank(**overrides) -> CKTAdapterBank:
    torch.manual_seed(0)
    return CKTAdapterBank(CKTConfig(**{**SMALL, **overrides}), D_T, D_S)


def names(module: torch.nn.Module) -> set[str]:
    return {name for name, _ in module.named_parameters()}


def features(batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, 7, D_T, generator=torch.Generator().manual_seed(3))


def test_no_specialized_adapters_is_the_generalized_adapter_alone():
    full, ablated = bank(), bank(use_specialized_adapters=False)
    assert ablated.router is None and len(ablated.specialized) == 0
    assert not any(n.startswith(("router.", "specialized.")) for n in names(ablated))
    assert names(ablated) == {n for n in names(full) if not n.startswith(("router.", "specialized."))}
    ablated.load_state_dict({k: v for k, v in full.state_dict().items() if k in ablated.state_dict()})
    full.eval(), ablated.eval()
    context, reference = ablated(features()), full(features())
    assert context.tokens.shape == (5, 1 + K, D_S)  # [<SEP> ; C_g]
    torch.testing.assert_close(context.tokens, reference.tokens[:, : 1 + K])
    assert context.router_probs.shape == (5, 0) and context.topk_indices.shape == (5, 0)
    assert context.load_balance_loss.item() == 0.0 and context.expert_share().numel() == 0


def test_no_generalized_adapter_is_the_routed_adapters_alone():
    full, ablated = bank(), bank(use_generalized_adapter=False)
    assert ablated.generalized is None
    assert names(ablated) == {n for n in names(full) if not n.startswith("generalized.")}
    ablated.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("generalized.")})
    full.eval(), ablated.eval()
    context, reference = ablated(features()), full(features())
    assert context.tokens.shape == (5, 1 + K, D_S)  # [<SEP> ; C_s]
    torch.testing.assert_close(context.tokens[:, 0], reference.tokens[:, 0])
    torch.testing.assert_close(context.tokens[:, 1:], reference.tokens[:, 1 + K :])  # C_s unchanged
    torch.testing.assert_close(context.load_balance_loss, reference.load_balance_loss)
    assert context.load_balance_loss.item() > 0


def test_both_parts_cannot_be_removed():
    with pytest.raises(ValueError, match="both be False"):
        CKTConfig(**SMALL, use_generalized_adapter=False, use_specialized_adapters=False)


def test_trainable_counts_of_each_ablation():
    config = CKTConfig(**SMALL)
    counts = ablation_trainable_parameters(config, D_T, D_S)
    full = bank()

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert counts["full"] == counts["no_auxiliary_loss"] == count(full)
    assert counts["no_specialized"] == count(full) - count(full.router) - count(full.specialized)
    assert counts["no_generalized"] == count(full) - count(full.generalized)
    table = format_ablation_table(config, D_T, D_S)
    for name in PAPER_ABLATIONS:
        assert name in table and f"{counts[name]:,}" in table


def tiny_pair():
    torch.manual_seed(0)
    teacher = TinyWorldActionModel(obs_dim=20, text_dim=6, width=24, num_blocks=2).eval()
    return teacher, {"observation": torch.randn(2, 5, 20), "text_embeds": torch.randn(2, 4, 6)}


def student_inputs():
    generator = torch.Generator().manual_seed(4)
    return {
        "observation": torch.randn(2, 5, 12, generator=generator),
        "text_embeds": torch.randn(2, 4, 10, generator=generator),
    }


@pytest.mark.parametrize("ablation", ["no_specialized", "no_generalized", "no_auxiliary_loss"])
def test_ablated_adapter_trains_saves_and_loads(ablation, tmp_path):
    teacher, teacher_inputs = tiny_pair()
    base = CKTConfig(teacher=teacher, target_modules="text_proj", **SMALL)
    config = ablation_config(base, ablation)
    assert config.teacher_module is teacher
    torch.manual_seed(1)
    model = get_peft_model(TinyWorldActionModel(), config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == ablation_trainable_parameters(base, 24, 16)[ablation]

    model.train()
    frames, _ = model(**student_inputs(), teacher_inputs=teacher_inputs)
    aux = model.auxiliary_loss()
    if ablation == "no_generalized":
        assert aux.item() > 0
    else:  # no router (no_specialized) or a zero weight (no_auxiliary_loss): nothing to add to the student's loss
        assert aux.item() == 0.0
    if ablation == "no_auxiliary_loss":
        assert model.get_bank().router is not None  # the router still runs and routes
    (frames.square().mean() + aux).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    model.eval().save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    if ablation == "no_specialized":
        assert not any(".router." in k or ".specialized." in k for k in saved)
    if ablation == "no_generalized":
        assert not any(".generalized." in k for k in saved)
    torch.manual_seed(1)
    reloaded = PeftModel.from_pretrained(TinyWorldActionModel(), tmp_path, teacher=teacher).eval()
    for field_name, value in PAPER_ABLATIONS[ablation].overrides.items():
        assert getattr(reloaded.peft_config["default"], field_name) == value
    with torch.no_grad():
        expected, _ = model(**student_inputs(), teacher_inputs=teacher_inputs)
        again, _ = reloaded(**student_inputs(), teacher_inputs=teacher_inputs)
        with reloaded.disable_adapter():
            plain, _ = reloaded(**student_inputs())
    assert torch.equal(again, expected) and not torch.allclose(again, plain)


def test_training_flags_select_an_ablation():
    from peft_ckt.commands import build_parser
    from peft_ckt.training import CKTTrainingArguments, build_training_setup
    from peft_ckt.training.arguments import arguments_from_namespace

    argv = ["train", "--preset", "tiny", "--no-use-specialized-adapters", "--attention-dropout", "0.2"]
    args = arguments_from_namespace(build_parser().parse_args(argv), CKTTrainingArguments)
    setup = build_training_setup(args)
    config, bank = setup.model.peft_config["default"], setup.model.get_bank()
    assert not config.use_specialized_adapters and config.use_generalized_adapter
    assert bank.router is None and len(bank.specialized) == 0
    assert bank.generalized.cross_attention.dropout == 0.2


def test_ablations_subcommand_prints_the_table(capsys):
    from peft_ckt.commands import main

    assert main(["ablations"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_ablation_table(CKTConfig(teacher_layer="blocks.20"), 5120, 2048)
    assert "187,395,081" in out  # the paper's 187.4M trainable parameters for the full bank

"""The reference world action model: save/load, training (and resume), CKT and LoRA on it, the policy wrapper.

Real diffusers Wan (teacher) and Cosmos (student) backbones at a few thousand parameters; episodes are synthetic
arrays with the LIBERO shapes (the LIBERO rollout through `eval-libero` is in test_wam_libero.py).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import peft_ckt  # noqa: F401
from peft_ckt import CKTConfig
from peft_ckt.libero.metrics import wilson_interval
from peft_ckt.wam.data import ChunkDataset, held_out_batches
from peft_ckt.wam.modeling import WorldActionModel, flow_matching_loss, sample
from peft_ckt.wam.tokenizer import InstructionTokenizer, build_vocabulary
from peft_ckt.wam.training import train_wam

INSTRUCTIONS = ["pick up the alphabet soup and place it in the basket", "pick up the milk and place it in the basket"]


def fake_episodes(num: int = 2, length: int = 20, stride: int = 1, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "task": INSTRUCTIONS[i % 2],
            "init_index": i,
            "image_stride": stride,
            "state": rng.normal(size=(length, 8)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(length, 7)).astype(np.float32),
            "image": rng.integers(0, 255, size=(length, 16, 16, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 255, size=(length, 16, 16, 3), dtype=np.uint8),
        }
        for i in range(num)
    ]


TINY_DEFAULTS = dict(
    vocabulary=build_vocabulary(INSTRUCTIONS),
    image_size=16,
    pixel_block=4,
    chunk_size=16,
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=16,
)


def tiny_wam(backbone: str, **kwargs) -> WorldActionModel:
    torch.manual_seed(0 if backbone == "wan" else 1)
    defaults = {**TINY_DEFAULTS, "backbone": backbone, "num_layers": 4 if backbone == "wan" else 2}
    return WorldActionModel(**{**defaults, **kwargs})


def test_tokenizer_pads_and_marks_unknown_words():
    tokenizer = InstructionTokenizer(build_vocabulary(INSTRUCTIONS), max_length=12)
    ids = tokenizer(["pick up the milk", "grab the milk"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert (ids[0, 4:] == 0).all() and (ids[0, :4] > 1).all()
    assert ids[1, 0].item() == 1  # "grab" is unknown
    assert tokenizer.unknown_fraction("grab the milk") == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="must start with"):
        InstructionTokenizer(["milk"])


def test_frames_round_trip_actions_and_images():
    wam = tiny_wam("cosmos")
    actions = torch.rand(3, 16, 7) * 2 - 1
    actions[..., 6] = torch.where(actions[..., 6] > 0, 1.0, -1.0)
    assert torch.allclose(wam.actions_from_frame(wam.action_frame(actions)), actions, atol=1e-6)
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    back = wam.image_from_latent(wam.image_latent(images))
    assert torch.allclose(back, images.permute(0, 3, 1, 2).float() / 255, atol=1e-6)
    # The generated future view is the agent view pooled by `future_pool`, read back from its tiled frame.
    future = wam.future_image(wam.future_tokens(images))
    pooled = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2).float() / 255, wam.future_pool)
    assert future.shape == (3, 3, 8, 8) and torch.allclose(future, pooled, atol=1e-5)
    tokens = torch.randn(3, wam.tokens_per_frame, wam.generated_dim)
    frames = wam.generated_frames(tokens)
    assert frames.shape == (3, wam.latent_channels, 2, 4, 4)
    padded = torch.cat([torch.zeros(3, wam.latent_channels, 3, 4, 4), frames], dim=2)
    assert torch.allclose(wam.read_generated(padded), tokens, atol=1e-6)


def test_future_pool_must_divide_the_pixel_block():
    with pytest.raises(ValueError, match="future_pool"):
        tiny_wam("cosmos", future_pool=3)


def test_chunk_too_long_for_the_frame_is_refused():
    with pytest.raises(ValueError, match="chunk_size"):
        tiny_wam("cosmos", chunk_size=8)


class ExactWAM(WorldActionModel):
    """A WAM whose backbone output is replaced by the exact answer for one known batch: what a perfectly trained
    model predicts, `x_0` or `e - x_0` depending on `prediction_type`. It checks the sampler and the loss, which
    are the real code, against the parameterisation they claim."""

    def __init__(self, target: torch.Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = target  # generated tokens [B, n, 7 + future_dim]

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, instruction_ids=None):
        clean = self.target
        noisy = self.read_generated(hidden_states)
        t = timestep.view(-1, 1, 1)
        answer = clean if self.prediction_type == "sample" else (noisy - (1 - t) * clean) / t - clean
        return torch.cat([hidden_states[:, :, :3], self.generated_frames(answer)], dim=2)


@pytest.mark.parametrize("future_residual", [True, False])
@pytest.mark.parametrize("prediction_type", ["sample", "velocity"])
def test_sampler_and_loss_match_the_parameterisation(prediction_type, future_residual):
    batch = ChunkDataset(fake_episodes()).batch(torch.arange(4))
    target = tiny_wam("cosmos", future_residual=future_residual).generated_tokens(batch)
    kwargs = {**TINY_DEFAULTS, "backbone": "cosmos", "prediction_type": prediction_type}
    torch.manual_seed(1)
    wam = ExactWAM(target, future_residual=future_residual, **kwargs)
    # Rectified flow from any noise lands exactly on the data when the prediction is exact.
    out = sample(wam, wam, batch, num_steps=3, initial_noise=torch.randn_like(target))
    assert torch.allclose(out["latents"], target, atol=1e-4)
    assert torch.allclose(out["actions"][..., :6], batch["action"][..., :6], atol=1e-4)
    # ... and the future view it decodes is the real one (the change added back to the current view).
    future = batch["future.images.image"].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(out["future_image"], torch.nn.functional.avg_pool2d(future, wam.future_pool), atol=1e-4)
    assert flow_matching_loss(wam, wam, batch)["loss"].item() < 1e-8


def test_future_residual_generates_the_change_of_the_view():
    batch = ChunkDataset(fake_episodes()).batch(torch.arange(4))
    residual, absolute = tiny_wam("cosmos", future_residual=True), tiny_wam("cosmos", future_residual=False)
    current = residual.future_tokens(batch["observation.images.image"])
    change = residual.generated_tokens(batch)[..., 7:]
    assert torch.allclose(change, absolute.generated_tokens(batch)[..., 7:] - current, atol=1e-6)
    still = dict(batch, **{"future.images.image": batch["observation.images.image"]})
    assert residual.generated_tokens(still)[..., 7:].abs().max() < 1e-6  # nothing moved: nothing to generate


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        tiny_wam("cosmos", prediction_type="epsilon")


@pytest.mark.parametrize("backbone", ["wan", "cosmos"])
def test_save_load_round_trip(tmp_path, backbone):
    wam = tiny_wam(backbone, state_mean=[0.5] * 8).eval()
    wam.save_pretrained(tmp_path / "wam")
    config = json.loads((tmp_path / "wam" / "config.json").read_text())
    assert config["type"] == "wam" and config["backbone"] == backbone and config["state_mean"] == [0.5] * 8
    assert (tmp_path / "wam" / "model.safetensors").is_file()
    loaded = WorldActionModel.from_pretrained(tmp_path / "wam")
    assert loaded.name_or_path == str((tmp_path / "wam").resolve())
    batch = ChunkDataset(fake_episodes()).batch(torch.arange(4))
    noise = torch.randn(wam.noise_shape(4))
    a = sample(wam, wam, batch, initial_noise=noise)
    b = sample(loaded, loaded, batch, initial_noise=noise)
    assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["latents"], b["latents"])
    assert a["actions"].shape == (4, 16, 7) and a["future_image"].shape == (4, 3, 8, 8)


def test_chunk_dataset_windows_and_image_stride():
    episodes = fake_episodes(num=2, length=20, stride=4)
    dataset = ChunkDataset(episodes, chunk_size=16)
    assert len(dataset) == 10  # frames 0, 4, 8, 12, 16 of each episode
    batch = dataset.batch(torch.tensor([0, 16, 20]))
    assert torch.equal(batch["action"][0], torch.from_numpy(episodes[0]["action"][:16]))
    # Past the end of the episode the last action repeats; the future frame stops at the last frame.
    assert torch.equal(batch["action"][1, 3:], torch.from_numpy(episodes[0]["action"][19]).expand(13, 7))
    assert torch.equal(batch["future.images.image"][1], torch.from_numpy(episodes[0]["image"][19]))
    assert torch.equal(batch["future.images.image"][2], torch.from_numpy(episodes[1]["image"][16]))
    assert batch["task"] == [INSTRUCTIONS[0], INSTRUCTIONS[0], INSTRUCTIONS[1]]
    stats = dataset.statistics()
    assert stats["action_mean"][6] == 0.0 and stats["action_std"][6] == 1.0


def test_training_lowers_the_loss_and_resumes_bitwise(tmp_path):
    dataset = ChunkDataset(fake_episodes(num=2, length=20))
    batch = dataset.batch(torch.arange(len(dataset)))

    def held_out_loss(model):
        with torch.no_grad():
            return flow_matching_loss(model, model, batch, generator=torch.Generator().manual_seed(0))["loss"].item()

    straight = tiny_wam("cosmos")
    before = held_out_loss(straight)
    result = train_wam(straight, straight, dataset, steps=40, batch_size=8, learning_rate=3e-3, progress=False)
    assert len(result.losses) == 40
    assert held_out_loss(straight) < 0.8 * before

    class Interrupt(Exception):
        pass

    class Failing(ChunkDataset):
        calls = 0

        def batch(self, rows, squeeze=False):
            Failing.calls += 1
            if Failing.calls == 6:
                raise Interrupt
            return super().batch(rows, squeeze)

    interrupted = tiny_wam("cosmos")
    failing = Failing(fake_episodes(num=2, length=20))
    kwargs = dict(steps=8, batch_size=8, learning_rate=3e-3, progress=False, checkpoint=tmp_path / "c.pt")
    with pytest.raises(Interrupt):
        train_wam(interrupted, interrupted, failing, checkpoint_every=4, **kwargs)
    assert (tmp_path / "c.pt").is_file()
    resumed = train_wam(interrupted, interrupted, dataset, checkpoint_every=4, **kwargs)
    assert resumed.resumed_from == 4 and not (tmp_path / "c.pt").exists()
    reference = tiny_wam("cosmos")
    train_wam(reference, reference, dataset, **{**kwargs, "checkpoint": None})
    for (name, a), b in zip(interrupted.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def ckt_pair(folder):
    teacher, student = tiny_wam("wan").eval(), tiny_wam("cosmos").eval()
    teacher.requires_grad_(False)
    # Saved first: the adapter records where its teacher and its student come from.
    teacher.save_pretrained(folder / "teacher")
    student.save_pretrained(folder / "student")
    config = CKTConfig(
        teacher=teacher,
        teacher_layer=teacher.middle_layer(),
        context_kwarg="encoder_hidden_states",
        num_context_tokens=4,
        num_experts=4,
        top_k=2,
        bottleneck_dim=16,
        router_hidden_dim=16,
        num_attention_heads=2,
        teacher_hidden_size=teacher.width,
        student_hidden_size=student.text_dim,
    )
    return teacher, student, config


def test_ckt_on_the_wam_pair_trains_only_the_adapter_and_reuses_the_context(tmp_path):
    teacher, student, config = ckt_pair(tmp_path)
    model = get_peft_model(student, config)
    dataset = ChunkDataset(fake_episodes())
    batch = dataset.batch(torch.arange(6))
    frozen = {n: p.clone() for n, p in student.named_parameters() if "ckt" not in n}
    result = train_wam(model, student, dataset, steps=5, batch_size=4, teacher=teacher, progress=False)
    assert sum(result.expert_counts) == 5 * 4
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if n in frozen)
    model.eval()
    noise = torch.randn(student.noise_shape(6))
    context = model.encode_teacher(teacher.teacher_inputs(batch))
    assert context.tokens.shape == (6, 2 * 4 + 1, student.text_dim)
    reused = sample(model, student, batch, initial_noise=noise, ckt_context=context)
    live = sample(model, student, batch, initial_noise=noise, teacher_inputs=teacher.teacher_inputs(batch))
    assert torch.allclose(reused["latents"], live["latents"], atol=1e-6)
    with model.disable_adapter():
        alone = sample(model, student, batch, initial_noise=noise)
    assert not torch.allclose(alone["latents"], reused["latents"])
    # Saved with the student as base model and the teacher as a reference; reloaded identically.
    model.save_pretrained(tmp_path / "ckt")
    saved = json.loads((tmp_path / "ckt" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str((tmp_path / "student").resolve())
    assert saved["teacher"] == str((tmp_path / "teacher").resolve())
    from peft_ckt.wam.policy import WAMPolicy

    policy = WAMPolicy.from_pretrained(tmp_path / "ckt")
    assert policy.is_ckt
    context2 = policy.model.encode_teacher(policy._teacher().teacher_inputs(batch))
    again = sample(policy.model, policy.wam, batch, initial_noise=noise, ckt_context=context2)
    assert torch.allclose(again["latents"], reused["latents"], atol=1e-6)


def test_ckt_can_also_train_the_students_context_reading_projections(tmp_path):
    """`DemoSettings.ckt_modules_to_save` (peft's `modules_to_save`): CKT also trains the key and value projections
    through which the student's cross-attention reads its conditioning, saves them with the bank and reloads them
    into the policy; the teacher's own cross-attention, whose modules have the same names, stays untouched."""
    from safetensors.torch import load_file

    from experiments.libero_transfer.settings import DemoSettings
    from experiments.libero_transfer.stages.adapters import ckt_config
    from peft_ckt.wam.policy import WAMPolicy

    teacher, student, _ = ckt_pair(tmp_path)
    settings = DemoSettings(
        ckt_modules_to_save=("attn2.to_k", "attn2.to_v"), teacher_layer=-1, num_context_tokens=4, bottleneck_dim=16
    )
    model = get_peft_model(student, ckt_config(settings, teacher, student))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    copies = {n.split(".modules_to_save")[0] for n in trainable if ".modules_to_save." in n}
    assert copies == {
        f"base_model.model.backbone.transformer_blocks.{i}.attn2.{kv}"
        for i in range(student.num_layers)
        for kv in ("to_k", "to_v")
    }
    assert all("ckt_bank" in n or ".modules_to_save." in n for n in trainable)
    teacher_before = {n: p.clone() for n, p in teacher.named_parameters()}
    key = model.base_model.model.backbone.transformer_blocks[0].attn2.to_k
    train_wam(model, student, ChunkDataset(fake_episodes()), steps=3, batch_size=4, teacher=teacher, progress=False)
    assert not torch.equal(key.modules_to_save["default"].weight, key.original_module.weight)
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())
    model.eval()
    model.save_pretrained(tmp_path / "ckt")
    saved = load_file(str(tmp_path / "ckt" / "adapter_model.safetensors"))
    assert sum(".attn2.to_k." in k or ".attn2.to_v." in k for k in saved) >= 2 * student.num_layers
    batch = ChunkDataset(fake_episodes()).batch(torch.arange(4))
    noise = torch.randn(student.noise_shape(4))
    context = model.encode_teacher(teacher.teacher_inputs(batch))
    trained = sample(model, student, batch, initial_noise=noise, ckt_context=context)
    policy = WAMPolicy.from_pretrained(tmp_path / "ckt")
    again = sample(
        policy.model,
        policy.wam,
        batch,
        initial_noise=noise,
        ckt_context=policy.model.encode_teacher(policy._teacher().teacher_inputs(batch)),
    )
    assert torch.allclose(again["latents"], trained["latents"], atol=1e-6)
    with pytest.raises(ValueError, match="no student module is named 'attn9.to_k'"):
        ckt_config(dataclasses.replace(settings, ckt_modules_to_save=("attn9.to_k",)), teacher, student)


def test_lora_baseline_policy_and_budget(tmp_path):
    student = tiny_wam("cosmos")
    student.save_pretrained(tmp_path / "student")
    config = LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    model = get_peft_model(WorldActionModel.from_pretrained(tmp_path / "student"), config)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable > 0
    train_wam(model, model.base_model.model, ChunkDataset(fake_episodes()), steps=3, batch_size=4, progress=False)
    model.save_pretrained(tmp_path / "lora")
    from peft_ckt.libero.policies import load_policy

    policy = load_policy(tmp_path / "lora")
    assert not policy.is_ckt and isinstance(policy.model, PeftModel)
    observation = {
        "observation.images.image": np.zeros((16, 16, 3), np.uint8),
        "observation.images.wrist_image": np.zeros((16, 16, 3), np.uint8),
        "observation.state": np.zeros(8, np.float32),
        "task": INSTRUCTIONS[0],
    }
    policy.reset()
    assert policy.needs_observation()
    first = policy.select_action(observation)
    assert first.shape == (7,) and not policy.needs_observation()
    chunk = [first] + [policy.select_action(observation) for _ in range(policy.n_action_steps - 1)]
    assert policy.needs_observation()
    policy.reset()  # the same seed at every episode: the same chunk again
    assert np.array_equal(policy.select_action(observation), chunk[0])


def test_held_out_batches_are_fixed():
    dataset = ChunkDataset(fake_episodes(num=3, length=20))
    a = [b["action"] for b in held_out_batches(dataset, max_samples=10, batch_size=4)]
    b = [b["action"] for b in held_out_batches(dataset, max_samples=10, batch_size=4)]
    assert [x.shape[0] for x in a] == [4, 4, 2] and all(torch.equal(x, y) for x, y in zip(a, b))


def test_wilson_interval():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-3), pytest.approx(0.7634, abs=1e-3))


def test_policies_are_compared_with_fishers_exact_test():
    from peft_ckt.libero.metrics import compare_policies, compare_successes, success_cell

    # 6 of 56 against 0 of 56: two-sided p = 2 * C(56,6)C(56,0)/C(112,6) (the two tails are equal) = 0.0271.
    result = compare_successes(success_cell(6, 56), success_cell(0, 56))
    assert result["difference"] == pytest.approx(6 / 56) and result["p_value"] == pytest.approx(0.02714, abs=1e-5)
    assert compare_successes(success_cell(3, 10), success_cell(3, 10))["p_value"] == pytest.approx(1.0)
    assert compare_successes(success_cell(0, 0), success_cell(1, 2)) == {"difference": None, "p_value": None}
    cells = {"clean": success_cell(1, 8), "perturbed": success_cell(6, 56)}
    policies = {"student": {"clean": success_cell(0, 8), "perturbed": success_cell(0, 56)}, "student+ckt": cells}
    # Only the pairs whose policies are there: no LoRA row, no LoRA comparison.
    assert list(compare_policies(policies)) == ["student+ckt vs student"]


def test_report_rows_tables_and_plots(tmp_path):
    from experiments.libero_transfer.report import markdown_report, plot_experts, plot_success
    from experiments.libero_transfer.settings import ABLATIONS, PERTURBATION_KINDS, POLICIES, ablation_policy
    from experiments.libero_transfer.stages.rollouts import summarize_rollouts
    from peft_ckt.libero.metrics import compare_policies

    names = [*POLICIES, *(ablation_policy(a) for a in ABLATIONS)]  # the rows of `make demo ABLATIONS=1`
    rows = []
    for p, name in enumerate(names):
        for kind in ["none", *PERTURBATION_KINDS]:
            for init in range(3):
                rows.append({"policy_name": name, "perturbation": kind, "success": (init + p) % 3 == 0})
    offline = {s: {"action_mse": 0.2, "future_frame_mse": 0.01} for s in ("clean", "perturbed")}
    report = {"settings": {"suite": "libero_object", "eval_tasks": [0], "eval_episodes": 3, "severity": 3},
              "policies": {}, "offline": {"zeros": offline},
              "timing": {"total": 1.0}}  # fmt: skip
    for name in names:
        summary = summarize_rollouts([r for r in rows if r["policy_name"] == name])
        report["policies"][name] = {**summary, "trainable_params": 10, "trainable_percent": 1.0}
    student = report["policies"]["student"]
    assert student["perturbed"]["episodes"] == 21 and student["clean"]["episodes"] == 3
    assert student["success_rate"] == student["perturbed"]["successes"] / 21
    low, high = student["by_perturbation"]["camera"]["ci95"]
    assert 0 <= low <= student["by_perturbation"]["camera"]["success_rate"] <= high <= 1
    table = markdown_report(report)
    assert "| student+ckt | 10 (1.00%) |" in table and "| student+ckt (no generalized) | 10 (1.00%) |" in table
    assert "| zeros | 0.2000 | 0.2000 | 0.0100 | 0.0100 |" in table
    assert "modules_to_save" not in table  # the paper's frozen student: nothing to say
    assert "Fisher" not in table  # no comparisons in the report: no table of them
    report["comparisons"] = compare_policies(report["policies"])
    row = next(line for line in markdown_report(report).splitlines() if line.startswith("| student+ckt vs student |"))
    ckt, student = report["policies"]["student+ckt"]["perturbed"], report["policies"]["student"]["perturbed"]
    assert f"{ckt['successes']}/21 vs {student['successes']}/21" in row and "points" in row
    report["settings"]["ckt_modules_to_save"] = ["attn2.to_k", "attn2.to_v"]
    assert "student modules beside its bank (`modules_to_save`): `attn2.to_k`, `attn2.to_v`" in markdown_report(report)
    plot_success(report, tmp_path / "success.png")
    plot_experts([3, 1, 0, 4], [2, 2, 2, 2], tmp_path / "experts.png")
    for name in ("success.png", "experts.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_public_names():
    import peft_ckt.wam as wam

    assert wam.WorldActionModel is WorldActionModel and wam.sample is sample
    assert wam.WAMPolicy.name == "wam"
    with pytest.raises(AttributeError):
        wam.NoSuchThing  # noqa: B018


def test_moved_experiment_names_warn_or_say_where_the_experiment_lives(monkeypatch):
    """`peft_ckt.wam.DemoSettings` / `run_demo` moved to the repository's experiments/libero_transfer: from a checkout
    they resolve there with a DeprecationWarning; where the experiment is not importable (an installed wheel) the
    ImportError names where it lives."""
    import sys

    import peft_ckt.wam as wam
    from experiments.libero_transfer import TransferSettings, run_transfer

    with pytest.warns(DeprecationWarning, match="experiments.libero_transfer.TransferSettings"):
        assert wam.DemoSettings is TransferSettings
    with pytest.warns(DeprecationWarning, match="experiments.libero_transfer.run_transfer"):
        assert wam.run_demo is run_transfer
    assert "DemoSettings" not in wam.__all__
    # As in an installed wheel: no `experiments` package on the path.
    monkeypatch.setitem(sys.modules, "experiments", None)
    monkeypatch.setitem(sys.modules, "experiments.libero_transfer", None)
    with pytest.raises(ImportError, match="lives in the repository's experiments/libero_transfer"):
        wam.run_demo  # noqa: B018


def test_demo_splits_pretrain_the_student_on_its_own_tasks(tmp_path):
    """With `student_tasks` the student's narrow set is its own dataset (other tasks than the target set's);
    without, it is the first `student_episodes` of the teacher's clean demonstrations."""
    from experiments.libero_transfer.settings import DemoSettings
    from experiments.libero_transfer.stages.data import split_datasets
    from peft_ckt.libero.dataset import LeRobotDatasetWriter

    def write(name, rows):
        writer = LeRobotDatasetWriter(tmp_path / name, image_size=(16, 16))
        for episode, (task_id, init, kind) in zip(fake_episodes(num=len(rows), length=4), rows):
            images = {"image": list(episode["image"]), "wrist_image": list(episode["wrist_image"])}
            extra = {"task_id": task_id, "init_index": init, "perturbation": kind}
            writer.add_episode(episode["state"], episode["action"], images, task=f"task {task_id}", extra=extra)
        writer.finalize()
        return tmp_path / name

    data = {
        "clean": write("clean", [(0, 0, "none"), (0, 1, "none"), (0, 2, "none")]),
        "perturbed": write("perturbed", [(0, 3, "light")]),
        "heldout": write("heldout", [(0, 45, "none")]),
    }
    settings = DemoSettings(student_episodes=1, target_episodes=2, student_tasks=())
    splits = split_datasets(settings, data)
    assert [e["init_index"] for e in splits["student"]] == [0]
    assert [e["init_index"] for e in splits["target"]] == [0, 1] and len(splits["teacher"]) == 4
    data["student"] = write("student", [(4, 0, "none"), (5, 0, "none")])
    splits = split_datasets(DemoSettings(student_tasks=(4, 5)), data)
    assert sorted(e["task_id"] for e in splits["student"]) == [4, 5]
    assert {e["task_id"] for e in splits["target"]} == {0}


def test_each_stage_is_keyed_by_its_own_demonstrations():
    """A stage's cache key names the episodes it trains on: the teacher's does not move when the student's set
    does, the adapters' moves with the target count, and the order the episodes are read in does not matter."""
    from experiments.libero_transfer.cache import episodes_key
    from experiments.libero_transfer.settings import DemoSettings

    def episodes(*rows):
        return [
            {"task_id": t, "init_index": i, "perturbation": k, "task": f"task {t}", "action": np.zeros((5, 7))}
            for t, i, k in rows
        ]

    settings = DemoSettings()
    teacher = episodes((0, 0, "none"), (0, 1, "none"), (0, 2, "light"))
    key = episodes_key(settings, teacher)
    assert episodes_key(settings, list(reversed(teacher))) == key
    assert episodes_key(DemoSettings(student_tasks=(), target_episodes=1), teacher) == key
    assert episodes_key(settings, teacher[:2]) != key  # another target count: other demonstrations
    assert episodes_key(settings, episodes((0, 0, "none"), (0, 1, "none"), (0, 2, "noise"))) != key
    assert episodes_key(DemoSettings(image_size=64), teacher) != key  # collected differently


def test_demo_reads_the_teacher_block_its_settings_name():
    from experiments.libero_transfer.settings import DemoSettings
    from experiments.libero_transfer.stages.adapters import ckt_config, teacher_layer_path

    teacher, student = tiny_wam("wan", num_layers=6), tiny_wam("cosmos")
    assert teacher_layer_path(DemoSettings(teacher_layer=-1), teacher) == teacher.middle_layer() == "backbone.blocks.2"
    config = ckt_config(DemoSettings(teacher_layer=4), teacher, student)
    assert config.teacher_layer == "backbone.blocks.4" and dict(teacher.named_modules())[config.teacher_layer]
    with pytest.raises(ValueError, match="teacher_layer=6: the teacher has 6 blocks"):
        teacher_layer_path(DemoSettings(teacher_layer=6), teacher)


def test_demo_adapters_do_not_depend_on_what_the_process_did_before(tmp_path):
    """The adapter stage seeds its adapter's initial weights: the same settings give the same adapter whatever the
    process drew from the global generator before (a cached teacher loaded instead of trained); another
    `adapter_seed` gives another one."""
    from safetensors.torch import load_file

    from experiments.libero_transfer.settings import DemoSettings
    from experiments.libero_transfer.stages.adapters import adapter_stage

    student = tiny_wam("cosmos")
    student.save_pretrained(tmp_path / "student")
    episodes = fake_episodes(num=2, length=20)
    settings = DemoSettings(adapter_steps=2, batch_size=2, lora_rank=2)

    def trained(cache: str, noise_drawn: int, **changes):
        torch.rand(noise_drawn)  # what the process drew before
        path, _ = adapter_stage(
            dataclasses.replace(settings, **changes),
            tmp_path / cache,
            "lora",
            None,
            str(tmp_path / "student"),
            episodes,
        )
        return load_file(str(path / "adapter_model.safetensors"))

    first, second = trained("a", 0), trained("b", 12_345)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = trained("c", 0, adapter_seed=1)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_adapter_seeds_pool_retrained_policies_and_count_shared_ones_once(tmp_path):
    from experiments.libero_transfer.seeds import adapter_seeds_markdown, check_adapter_seeds, pool_adapter_seeds
    from experiments.libero_transfer.settings import PERTURBATION_KINDS
    from experiments.libero_transfer.stages.rollouts import summarize_rollouts

    def report(seed, ckt_wins):
        # 8 episodes per condition; student+ckt wins `ckt_wins` of its 56 perturbed episodes, the student none.
        policies, offline = {}, {}
        for name, path in (("student", "models/student"), ("student+ckt", f"adapters/ckt-seed{seed}")):
            wins = ckt_wins if name == "student+ckt" else 0
            rows = [{"perturbation": "none", "success": False}] * 8
            rows += [{"perturbation": kind, "success": False} for kind in PERTURBATION_KINDS for _ in range(8)]
            rows = [{**r, "success": r["perturbation"] != "none" and i - 8 < wins} for i, r in enumerate(rows)]
            policies[name] = {**summarize_rollouts(rows), "path": path}
            offline[name] = {"clean": {"action_mse": 0.1}, "perturbed": {"action_mse": 0.2 + seed}}
        return {"policies": policies, "offline": offline}

    pooled = pool_adapter_seeds({0: report(0, 5), 3: report(3, 12)})
    student, ckt = pooled["policies"]["student"], pooled["policies"]["student+ckt"]
    # The student's folder is the same in both runs: its 56 perturbed episodes count once.
    assert (
        not student["retrained"] and student["perturbed"]["episodes"] == 56 and student["perturbed"]["successes"] == 0
    )
    # The adapter was retrained: every seed's 56 perturbed episodes count.
    assert ckt["retrained"] and ckt["perturbed"]["episodes"] == 112 and ckt["perturbed"]["successes"] == 17
    assert ckt["per_seed"][3]["perturbed"] == [12, 56] and ckt["per_seed"][0]["action_mse"]["perturbed"] == 0.2
    low, high = ckt["perturbed"]["ci95"]
    assert 0 < low < 17 / 112 < high < 1
    # 17 of 112 against 0 of 56: Fisher's exact test, two-sided.
    assert pooled["comparisons"]["student+ckt vs student"]["perturbed"]["p_value"] < 0.001
    table = adapter_seeds_markdown(pooled)
    assert "| student+ckt vs student | 17/112 vs 0/56 | +15.2 points | <0.001 |" in table
    assert "| student+ckt | 5/56 (0/8) | 12/56 (0/8) | 17/112 = 15% (" in table
    assert "| student | 0/56 (0/8) | 0/56 (0/8) | 0/56 = 0% (0-6) | 0/8 |" in table
    with pytest.raises(ValueError, match="reports policies"):
        other = report(1, 0)
        del other["policies"]["student"]
        pool_adapter_seeds({0: report(0, 1), 1: other})
    assert check_adapter_seeds([2, 0]) == (2, 0)
    for bad, message in (([], "at least one"), ([0, -1], ">= 0"), ([1, 1], "differ")):
        with pytest.raises(ValueError, match=message):
            check_adapter_seeds(bad)

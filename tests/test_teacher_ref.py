"""`TeacherRef`: one object resolves a teacher (a module, a local folder or a Hub id), trust-checks a stored
reference, loads and attaches it, and knows what `adapter_config.json` stores for it."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_ckt import CKTConfig, TeacherRef
from peft_ckt.testing import (
    TINY_CKT_KWARGS,
    tiny_cosmos_inputs,
    tiny_cosmos_student,
    tiny_wan_inputs,
    tiny_wan_teacher,
)

torch.set_num_threads(1)

WAN_CLASS = "diffusers.models.transformers.transformer_wan.WanTransformer3DModel"
SMALL = TINY_CKT_KWARGS
# The LIBERO policy loader's opt-in (peft_ckt.libero.policy.POLICY_OPT_IN): its checks name the CLI switch.
POLICY_OPT_IN = "`trust_remote_code=True` (`--trust-remote-code` on the command line)"


@pytest.fixture(scope="module")
def teacher_dir(teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "wan"
    teacher.save_pretrained(folder)
    return folder


def test_a_module_is_attached_and_stores_its_class(teacher):
    ref = TeacherRef(teacher)
    assert ref.is_loaded and ref.module is teacher and ref
    assert ref.load() is teacher and ref.resolve(load=False) is teacher
    # Built from a config: no name/path to store, only the class to load it with.
    assert ref.to_config_dict() == {"teacher": None, "teacher_class": WAN_CLASS}
    ref.check()  # an attached module has nothing to trust-check


def test_copies_share_the_module_but_not_the_reference(teacher):
    ref = TeacherRef(teacher)
    copied = copy.deepcopy(ref)
    assert copied.module is teacher and copy.copy(ref).module is teacher
    other = tiny_wan_teacher(num_layers=2)
    copied.attach(other)
    assert ref.module is teacher and copied.module is other


def test_a_local_folder_is_loaded_on_demand(teacher, teacher_dir):
    ref = TeacherRef(str(teacher_dir))
    assert ref and not ref.is_loaded and ref.resolve(load=False) is None
    assert ref.to_config_dict() == {"teacher": str(teacher_dir), "teacher_class": None}
    loaded = ref.load()
    assert type(loaded) is type(teacher) and ref.module is loaded and ref.load() is loaded
    for (name, expected), got in zip(teacher.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(expected, got), name
    # The reference stays what was given (not a cache path); the class is filled in from the loaded module.
    assert ref.to_config_dict() == {"teacher": str(teacher_dir), "teacher_class": WAN_CLASS}


def test_an_untrusted_class_is_refused_before_import(teacher_dir):
    ref = TeacherRef(str(teacher_dir), "ckt_not_a_trusted_pkg.models.Teacher")
    with pytest.raises(ValueError, match=r"'ckt_not_a_trusted_pkg.models.Teacher', outside the trusted packages"):
        ref.check()
    with pytest.raises(ValueError, match=r"outside the trusted packages.*trust_remote_code=True"):
        ref.load()  # refused with the check's own message, not wrapped in a load error
    assert not ref.is_loaded
    TeacherRef.check_folder(teacher_dir, "ckt_not_a_trusted_pkg.models.Teacher", trust_remote_code=True)


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"The CKT teacher folder .* has only pickle weights"):
        TeacherRef(str(folder)).check()
    TeacherRef(str(folder), trust_remote_code=True).check()


def test_wrong_types_and_empty_references():
    with pytest.raises(TypeError, match="nn.Module or a Hub id"):
        TeacherRef(3)
    empty = TeacherRef.from_config_dict({"teacher": "", "teacher_class": "anything.At.All"})
    assert not empty and empty.resolve(load=True) is None
    empty.check()  # nothing to check
    with pytest.raises(ValueError, match="holds no teacher"):
        empty.load()


def test_what_an_adapter_stores_and_lazy_loading(teacher, teacher_dir, tmp_path):
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL)).eval()
    config = model.peft_config["default"]
    assert config.teacher_ref.module is teacher
    config.teacher = str(teacher_dir)  # the reference a Hub/local teacher would carry
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    stored = TeacherRef.from_adapter_folder(tmp_path / "adapter")
    assert stored.to_config_dict() == {"teacher": saved["teacher"], "teacher_class": saved["teacher_class"]}
    assert stored.to_config_dict() == {"teacher": str(teacher_dir), "teacher_class": WAN_CLASS}

    with torch.no_grad():
        expected = model(**tiny_cosmos_inputs(2), teacher_inputs=tiny_wan_inputs(2)).sample
    loaded = PeftModel.from_pretrained(tiny_cosmos_student(), tmp_path / "adapter").eval()
    assert loaded.peft_config["default"].teacher_module is None  # not loaded until needed
    assert loaded.base_model.teacher_module(load=False) is None
    module = loaded.base_model.teacher_module()  # trust-checked, loaded and attached once
    assert module is not None and loaded.base_model.teacher_module() is module
    assert loaded.peft_config["default"].teacher_ref.to_config_dict() == stored.to_config_dict()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**tiny_cosmos_inputs(2), teacher_inputs=tiny_wan_inputs(2)).sample, expected, rtol=0, atol=0
        )


def test_policy_loader_check_of_a_saved_adapter(teacher, tmp_path):
    """The call that replaces the LIBERO policy loader's own copy of the trust checks."""
    model = get_peft_model(tiny_cosmos_student(), CKTConfig(teacher=teacher, **SMALL))
    model.peft_config["default"].teacher = str(tmp_path / "teacher")
    model.save_pretrained(tmp_path / "adapter")
    adapter_config = tmp_path / "adapter" / "adapter_config.json"
    values = json.loads(adapter_config.read_text())
    adapter_config.write_text(json.dumps({**values, "teacher_class": "ckt_not_a_trusted_pkg.Teacher"}))

    ref = TeacherRef.from_adapter_folder(adapter_config)
    with pytest.raises(ValueError, match=r"teacher reference .*'ckt_not_a_trusted_pkg.Teacher'.*--trust-remote-code"):
        ref.check(what=f"The teacher reference ({ref.name!r}) of {adapter_config}", opt_in=POLICY_OPT_IN)
    TeacherRef.from_adapter_folder(adapter_config, trust_remote_code=True).check(opt_in=POLICY_OPT_IN)


def test_a_lerobot_policy_is_referenced_by_its_pretrained_path_and_its_class_is_trusted(tmp_path):
    # LeRobot policies carry no name_or_path: their folder is `config.pretrained_path` (a PreTrainedConfig field).
    class PolicyConfig:
        pretrained_path = str(tmp_path / "act-teacher")

    class Policy(torch.nn.Module):
        config = PolicyConfig()

    policy = Policy()
    ref = TeacherRef(policy)
    assert ref.name == str(tmp_path / "act-teacher")
    # Trusted on the dotted path alone, like diffusers and transformers classes: nothing is imported to check it.
    TeacherRef.check_folder(tmp_path, teacher_class="lerobot.policies.act.modeling_act.ACTPolicy")
    with pytest.raises(ValueError, match="outside the trusted packages"):
        TeacherRef.check_folder(tmp_path, teacher_class="lerobotish.policies.ACTPolicy")

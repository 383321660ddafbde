"""The frozen teacher: load it by reference, and extract one intermediate layer's output with an early exit."""

from __future__ import annotations

import difflib
import importlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch
from torch import nn


class _TeacherEarlyExit(Exception):
    """Raised from the capture hook to stop the teacher right after `teacher_layer` (later blocks never run)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


def get_submodule_or_raise(model: nn.Module, path: str, role: str, kwarg_name: str) -> nn.Module:
    """`model.get_submodule(path)` with an error that names the problem and suggests close module names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else f" Some of its modules: {names[:8]}."
        raise ValueError(
            f"`{kwarg_name}={path!r}` does not name a module of the {role} ({type(model).__name__}).{hint}"
        ) from None


def _describe_output(output: Any) -> str:
    def one(value: Any) -> str:
        return f"tensor{list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__

    if isinstance(output, (tuple, list)):
        return f"{type(output).__name__} of {len(output)}: (" + ", ".join(one(v) for v in output) + ")"
    return one(output)


def select_layer_output(output: Any, layer_name: str, output_index: Optional[int] = None) -> torch.Tensor:
    """The tensor `H_T` in a teacher layer's output: the output itself, or element `output_index` of a tuple. A tuple
    without `output_index` is refused (element 0 is not always the hidden states, e.g. Wan's `condition_embedder`
    returns the timestep embedding first)."""
    if isinstance(output, Mapping):  # transformers' ModelOutput: its tensors in order, the hidden states first
        output = tuple(value for value in output.values() if isinstance(value, torch.Tensor))
        output_index = 0 if output_index is None else output_index
    if isinstance(output, torch.Tensor):
        if output_index is None:
            return output
        raise ValueError(
            f"`teacher_output_index={output_index}`, but `teacher_layer={layer_name!r}` returns a single "
            f"{_describe_output(output)}: leave `teacher_output_index=None`."
        )
    elif isinstance(output, (tuple, list)):
        if output_index is None:
            raise ValueError(
                f"`teacher_layer={layer_name!r}` returns a {_describe_output(output)}; set `teacher_output_index` to "
                "the element that holds H_T [B, N, d_t]."
            )
        if not -len(output) <= output_index < len(output) or not isinstance(output[output_index], torch.Tensor):
            raise ValueError(
                f"`teacher_output_index={output_index}` does not name a tensor of `teacher_layer={layer_name!r}`'s "
                f"output, a {_describe_output(output)}."
            )
        return output[output_index]
    raise TypeError(f"The teacher layer returned {type(output).__name__}; expected a tensor [B, N, d_t].")


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in module.parameters():
        return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    # The teacher may live on its own device and in its own dtype (e.g. bf16): floating inputs follow it.
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device, dtype) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device, dtype) for item in value)
    return value


def batch_size_of(inputs: Mapping[str, Any]) -> Optional[int]:
    """Batch size of the first tensor in a kwargs dict, or None when it holds no tensor."""
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return value.shape[0]
    return None


class TeacherFeatureExtractor:
    """Runs a frozen teacher up to `layer_name` only and returns that layer's output `H_T [B, N, d_t]`.

    The capture hook is installed for each call (not once), so that several CKT models can share one teacher.
    The teacher runs without autograd; the features are detached. This object is deliberately not an `nn.Module`:
    the teacher must never become a submodule (peft would treat it as adapter weights).
    """

    def __init__(self, teacher: nn.Module, layer_name: str, output_index: Optional[int] = None):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"The teacher must be an nn.Module, got {type(teacher).__name__}.")
        self.teacher = teacher
        self.layer_name = layer_name
        self.output_index = output_index
        self.layer = get_submodule_or_raise(teacher, layer_name, "teacher", "teacher_layer")
        teacher.requires_grad_(False)
        teacher.eval()

    def __call__(self, teacher_inputs: Mapping[str, Any]) -> torch.Tensor:
        if not isinstance(teacher_inputs, Mapping):
            raise TypeError(
                f"`teacher_inputs` must be a dict of keyword arguments for the teacher's forward, got "
                f"{type(teacher_inputs).__name__}."
            )
        if batch_size_of(teacher_inputs) == 0:
            raise ValueError("`teacher_inputs` hold a batch of 0 samples; the teacher needs at least one sample.")
        device, dtype = _module_device_dtype(self.teacher)
        inputs = _to_device(dict(teacher_inputs), device, dtype)

        def capture(module: nn.Module, args: Any, output: Any) -> None:
            raise _TeacherEarlyExit(select_layer_output(output, self.layer_name, self.output_index))

        handle = self.layer.register_forward_hook(capture)
        try:
            with torch.no_grad():
                self.teacher(**inputs)
        except _TeacherEarlyExit as exit_:
            features = exit_.features.detach()
        else:
            raise RuntimeError(
                f"The teacher finished its forward without running `teacher_layer={self.layer_name!r}`: that module "
                "is not on the path of these teacher inputs."
            )
        finally:
            handle.remove()
        if features.ndim == 2:  # [B, d_t]: a single token per sample
            features = features[:, None]
        if features.ndim != 3:
            raise ValueError(
                f"`teacher_layer={self.layer_name!r}` returned shape {tuple(features.shape)}; expected [B, N, d_t]."
            )
        # One host sync per teacher call (the teacher runs once per observation, not per denoising step).
        if not bool(torch.isfinite(features).all()):
            raise ValueError(
                f"The teacher's features at `{self.layer_name}` contain NaN or inf; check the teacher inputs and dtype."
            )
        return features


def infer_width(module: nn.Module) -> Optional[int]:
    """Output width of common modules: Linear, Embedding, norms; `None` when it cannot be told."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1]) if isinstance(shape, (tuple, list)) else int(shape)
    for name in ("embedding_dim", "out_features", "hidden_size", "embed_dim", "dim"):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    return None


def _config_get(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _known_output_width(layer: nn.Module) -> Optional[int]:
    """Width of what `layer` itself returns, when its type says it: a Linear, an Embedding, a norm, a module with
    `out_features`, or a module whose only Linear is its output projection (e.g. diffusers' GELU `proj`)."""
    if isinstance(layer, (nn.Linear, nn.Embedding)) or getattr(layer, "normalized_shape", None):
        return infer_width(layer)
    if isinstance(getattr(layer, "out_features", None), int):
        return layer.out_features
    linears = [module for module in layer.modules() if isinstance(module, nn.Linear)]
    return linears[0].out_features if len(linears) == 1 else None


def _is_stack_block(layer_name: str) -> bool:
    """`blocks.3`, `model.layers.7`: a block of the model's main stack, which keeps the residual width. Not
    `blocks.3.ffn.net.0`, a sub-layer of one."""
    parts = layer_name.split(".")
    digits = [i for i, part in enumerate(parts) if part.isdigit()]
    return bool(digits) and digits[0] == len(parts) - 1


def teacher_layer_width(teacher: nn.Module, layer: nn.Module, layer_name: str) -> tuple[Optional[int], bool]:
    """`(d_t, certain)`: the width of `teacher_layer`'s output, and whether it is certain. Certain: the layer's own
    output width (see `_known_output_width`), or the model's hidden size for a block of its main stack. A hidden
    size read from the config for a sub-layer, or a norm's width inside it, is a guess that an explicit
    `teacher_hidden_size` may override (the adapter bank checks the real width on the first teacher call)."""
    width = _known_output_width(layer)
    if width is not None:
        return width, True
    width = _config_hidden_size(teacher)
    if width is not None:
        return width, _is_stack_block(layer_name)
    return infer_teacher_hidden_size(teacher, layer), False


def _config_hidden_size(teacher: nn.Module) -> Optional[int]:
    config = getattr(teacher, "config", None)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("hidden_size", "d_model", "n_embd"):
        value = _config_get(config, key)
        if isinstance(value, int):
            return value
    heads, head_dim = _config_get(config, "num_attention_heads"), _config_get(config, "attention_head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int):  # diffusers transformers: inner_dim
        return heads * head_dim
    return None


def infer_teacher_hidden_size(teacher: nn.Module, layer: nn.Module) -> Optional[int]:
    """Width `d_t` of the teacher's residual stream: from its config (transformers / diffusers), else from the
    layer itself (a Linear/Embedding/norm, or the first norm inside a block)."""
    width = _config_hidden_size(teacher)
    if width is not None:
        return width
    width = infer_width(layer)
    if width is not None:
        return width
    for sub in layer.modules():
        if isinstance(sub, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or "Norm" in type(sub).__name__:
            width = infer_width(sub)
            if width is not None:
                return width
    return None


# A class path from a file (an adapter's `teacher_class`, a policy's `policy_class`) is imported automatically only
# from these packages; anything else could run whatever installed module a downloaded file names.
# LeRobot policies are resolved like diffusers / transformers models (`from_pretrained` of a saved policy folder).
TRUSTED_PACKAGES = ("diffusers", "transformers", "peft_ckt", "lerobot")
# Weight files that are unpickled when read: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The user's allow-list of teacher classes, read whenever a stored teacher reference is checked: comma-separated
# package prefixes ("my_pkg", "my_pkg.models") or dotted class paths ("my_pkg.models.MyTeacher").
TRUSTED_TEACHERS_ENV = "PEFT_CKT_TRUSTED_TEACHERS"
# What `trust_teacher_classes` added in this process (in order, without duplicates).
_trusted_teacher_entries: list[str] = []
# How the class refusal of a teacher reference names the allow-list (the pickle refusal does not: see below).
TEACHER_ALLOW_LIST_HINT = (
    f"or allow-list it: `peft_ckt.trust_teacher_classes(...)` or the {TRUSTED_TEACHERS_ENV} environment variable"
)


def _allow_list_entry(entry: str, source: str) -> str:
    """`entry` stripped, refused unless it is a dotted Python name (`source` names where it came from)."""
    stripped = entry.strip() if isinstance(entry, str) else entry
    if not isinstance(stripped, str) or not stripped or not all(part.isidentifier() for part in stripped.split(".")):
        raise ValueError(
            f"{source} holds {stripped!r}, which is not a package prefix or dotted class path ('my_pkg', "
            "'my_pkg.models.MyTeacher')."
        )
    return stripped


def _env_teacher_entries() -> list[str]:
    value = os.environ.get(TRUSTED_TEACHERS_ENV, "")
    source = f"The environment variable {TRUSTED_TEACHERS_ENV}"
    return [_allow_list_entry(entry, source) for entry in value.split(",") if entry.strip()]


class _TrustedTeachers:
    """What [`trust_teacher_classes`] returns: used as a context manager, it removes on exit the entries it added."""

    def __init__(self, added: list[str]) -> None:
        self.added = added

    def __enter__(self) -> _TrustedTeachers:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        untrust_teacher_classes(*self.added)


def trust_teacher_classes(*entries: str) -> _TrustedTeachers:
    """Allows stored teacher references (an adapter's `teacher_class`) to name classes outside [`TRUSTED_PACKAGES`]:
    each entry is a package prefix (`"my_pkg"`, `"my_pkg.models"`: every class below it) or a dotted class path
    (`"my_pkg.models.MyTeacher"`: that class only). A plain `PeftModel.from_pretrained(student, path)` then loads
    such a teacher. For this process only; the environment variable `PEFT_CKT_TRUSTED_TEACHERS` (comma-separated
    entries, read at load time) does the same across processes.

    This trusts the class's code only, not the weights: the teacher is still read from safetensors only (a folder
    with only pickle weights is refused) unless `trust_remote_code=True`.

    Returns an object that, used as a context manager, removes on exit the entries this call added:
    `with peft_ckt.trust_teacher_classes("my_pkg"): ...`.
    """
    added = []
    for entry in entries:
        entry = _allow_list_entry(entry, "`trust_teacher_classes`")
        if entry not in _trusted_teacher_entries:
            _trusted_teacher_entries.append(entry)
            added.append(entry)
    return _TrustedTeachers(added)


def untrust_teacher_classes(*entries: str) -> None:
    """Removes entries added by [`trust_teacher_classes`] (entries not added are ignored; those of the environment
    variable stay until it is changed). Without arguments, removes every entry added in this process."""
    if not entries:
        _trusted_teacher_entries.clear()
        return
    for entry in entries:
        entry = _allow_list_entry(entry, "`untrust_teacher_classes`")
        if entry in _trusted_teacher_entries:
            _trusted_teacher_entries.remove(entry)


def trusted_teacher_classes() -> tuple[str, ...]:
    """Every package prefix or class path a stored teacher reference may name now: [`TRUSTED_PACKAGES`], then the
    environment variable's entries, then those of [`trust_teacher_classes`]."""
    entries = [*TRUSTED_PACKAGES, *_env_teacher_entries(), *_trusted_teacher_entries]
    return tuple(dict.fromkeys(entries))


def _under(path: str, prefixes: Iterable[str]) -> bool:
    # "my_pkg" covers "my_pkg.models.Teacher" but not "my_pkg2.Teacher".
    return any(path == prefix or path.startswith(prefix + ".") for prefix in prefixes)


def is_trusted_class_path(path: str) -> bool:
    """Whether the dotted path `path` lies in one of [`TRUSTED_PACKAGES`] (checked on the string: nothing imported)."""
    return path.split(".", 1)[0] in TRUSTED_PACKAGES


def is_trusted_teacher_class(path: str) -> bool:
    """Whether a teacher reference may name the class `path`: [`TRUSTED_PACKAGES`] or the user's allow-list (see
    [`trust_teacher_classes`]). Checked on the string: nothing imported."""
    return is_trusted_class_path(path) or _under(path, trusted_teacher_classes())


def check_trusted_class_path(path: str, what: str, opt_in: str) -> None:
    """Refuses, before any import, a class path outside [`TRUSTED_PACKAGES`]; `what` names its source and `opt_in`
    the switch that allows it."""
    if not is_trusted_class_path(path):
        raise ValueError(
            f"{what} names the class {path!r}, outside the trusted packages ({', '.join(TRUSTED_PACKAGES)}): it was "
            f"not imported, since importing it runs that module's code. If you trust its source, pass {opt_in}."
        )


def check_trusted_teacher_class(path: str, what: str, opt_in: str) -> None:
    """[`check_trusted_class_path`] for a teacher reference: classes the user allow-listed pass too (see
    [`trust_teacher_classes`]), and the error names that allow-list next to `opt_in`."""
    if not is_trusted_teacher_class(path):
        raise ValueError(
            f"{what} names the class {path!r}, outside the trusted packages ({', '.join(TRUSTED_PACKAGES)}) and "
            f"the allow-list: it was not imported, since importing it runs that module's code. If you trust its "
            f"source, pass {opt_in}, {TEACHER_ALLOW_LIST_HINT} (e.g. {path.split('.', 1)[0]!r})."
        )


def import_class(path: str, trust_remote_code: bool = False) -> type:
    """Imports the teacher class `package.module.Class`; outside [`TRUSTED_PACKAGES`] and the user's allow-list (see
    [`trust_teacher_classes`]) only with `trust_remote_code=True`."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"`teacher_class` must be 'package.module.Class', got {path!r}.")
    if not trust_remote_code:
        check_trusted_teacher_class(path, "The teacher reference (`teacher_class`)", "`trust_remote_code=True`")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"Cannot import the teacher class {path!r}: {err}") from err


def check_safetensors_folder(folder: str, what: str, opt_in: str) -> None:
    """Refuses a local model folder whose weights are pickle files only (no `*.safetensors`), naming the file."""
    if not os.path.isdir(folder):
        return
    names = sorted(os.listdir(folder))
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"{what} {folder} has only pickle weights ({os.path.join(folder, pickles[0])}), no .safetensors file: "
            f"unpickling can run arbitrary code, so it is not read. Convert it to safetensors, or pass {opt_in} if "
            "you trust its source."
        )


def _reads_safetensors_by_switch(cls: type) -> bool:
    # diffusers' and transformers' models accept `use_safetensors`; peft_ckt's own models read safetensors only.
    return any(
        base.__name__ in ("ModelMixin", "PreTrainedModel")
        and base.__module__.startswith(("diffusers.", "transformers."))
        for base in cls.__mro__
    )


def is_hf_class(cls: type) -> bool:
    """Whether `cls.from_pretrained` is diffusers' or transformers' (a model, an Auto class, a subclass of one): it
    takes `trust_remote_code`, and decides by it whether a folder's own code (`auto_map` in its config) runs."""
    return _reads_safetensors_by_switch(cls) or cls.__module__.split(".", 1)[0] in ("diffusers", "transformers")


def load_teacher(
    reference: str, teacher_class: Optional[str] = None, trust_remote_code: bool = False, **kwargs: Any
) -> nn.Module:
    """Loads a teacher from a Hub id or a local folder through its class's `from_pretrained`.

    The class is `teacher_class` when given; otherwise it is read from the folder's `config.json` (diffusers'
    `_class_name`, transformers' `architectures`). Unless `trust_remote_code=True`, a `teacher_class` outside
    diffusers, transformers, peft_ckt, lerobot and the user's allow-list ([`trust_teacher_classes`]) is refused
    before it is imported, and the weights are read from safetensors only (a folder with only pickle weights is
    refused, whatever the class: the allow-list trusts code, not weight files).
    """
    opt_in = "`trust_remote_code=True`"
    if not trust_remote_code:
        check_safetensors_folder(reference, "The teacher folder", opt_in)
    if teacher_class:
        cls = import_class(teacher_class, trust_remote_code=trust_remote_code)
    else:
        config_path = os.path.join(reference, "config.json")
        if not os.path.isfile(config_path):
            from huggingface_hub import hf_hub_download

            config_path = hf_hub_download(reference, "config.json")
        with open(config_path) as f:
            model_config = json.load(f)
        if "_class_name" in model_config:
            cls = getattr(importlib.import_module("diffusers"), str(model_config["_class_name"]), None)
        elif model_config.get("architectures"):
            cls = getattr(importlib.import_module("transformers"), str(model_config["architectures"][0]), None)
        else:
            raise ValueError(
                f"Cannot tell the class of the teacher {reference!r}: pass `teacher=` (a module) or set `teacher_class`."
            )
        if not isinstance(cls, type):
            raise ValueError(f"{config_path} names no diffusers/transformers model class; pass `teacher=` (a module).")
    if not trust_remote_code and not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"The teacher class {cls!r} is not an nn.Module; pass the teacher module instead.")
    if not hasattr(cls, "from_pretrained"):
        raise TypeError(f"The teacher class {cls.__name__} has no `from_pretrained`; pass the teacher module instead.")
    if is_hf_class(cls):
        # Said explicitly: left unset, transformers asks on stdin whether to run a folder's `auto_map` code, and a
        # "y" there (or in a piped stdin) would run it without the user's `trust_remote_code=True`.
        kwargs.setdefault("trust_remote_code", trust_remote_code)
        if not trust_remote_code:
            kwargs.setdefault("use_safetensors", True)
    return cls.from_pretrained(reference, **kwargs)

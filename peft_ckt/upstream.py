"""Converts adapter banks trained with the authors' CKT-WAM code into peft-ckt adapter folders.

Their training script saves `checkpoint_XXXXXXXX.pt`: a dict with `iteration`, `adapter_bank` (the bank's state
dict), `optimizer`, `scheduler`, `config` (their training dataclass as a dict) and `student_trainable` (student
tensors that had `requires_grad`; their script does not freeze the student). Their bank's parameter names and
shapes (`d_t` teacher width, `d_b` bottleneck, `d_s` student width, `K` query tokens, `M` experts, `h` router
hidden width):

| theirs | shape | ours (in the bank) |
| --- | --- | --- |
| `{branch}.down_proj.{weight,bias}` | `[d_b, d_t]`, `[d_b]` | `{branch}.down.*` |
| `{branch}.up_proj.{weight,bias}` | `[d_s, d_b]`, `[d_s]` | `{branch}.up.*` |
| `{branch}.layer_norm.{weight,bias}` | `[d_s]` | `{branch}.norm.*` |
| `{branch}.query_tokens` | `[1, K, d_s]` | `{branch}.cross_attention.queries` `[K, d_s]` |
| `{branch}.cross_attn.in_proj_{weight,bias}` | `[3 d_s, d_s]`, `[3 d_s]` | `cross_attention.to_{q,k,v}.*` (split in 3; no key bias) |
| `{branch}.cross_attn.out_proj.{weight,bias}` | `[d_s, d_s]`, `[d_s]` | `{branch}.cross_attention.to_out.*` |
| `{branch}.post_attn_norm.{weight,bias}` | `[d_s]` | `{branch}.cross_attention.norm.*` |
| `router.gate.{0,2}.{weight,bias}` | `[h, d_t]`, `[M, h]` | `router.mlp.{0,2}.*` |
| `router.noise_weight` | `[1]` | `router.noise_scale` |
| `sep_token` | `[1, 1, d_s]` | `separator` `[1, d_s]` |

with `{branch}` = `generalized_adapter` (ours: `generalized`) or `specialized_adapters.{m}` (ours: `specialized.{m}`).
Both compute the same context: their `[C_g ; C_s]` after `<SEP>` in `[E_t ; <SEP> ; C_A]` is our "append" injection.
Their key bias (the middle third of `in_proj_bias`) is dropped: it adds the same value to every logit of a query,
which the softmax cancels, and our key projection has no bias.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .atomic import commit_directory
from .config import CKTConfig

# Where the bank's tensors live in a saved peft-ckt adapter (`CKTModel` attaches its layer to the student as `ckt`).
ADAPTER_BANK_PREFIX = "base_model.model.ckt.ckt_bank."
STUDENT_TRAINABLE_FILE = "student_trainable.safetensors"
UPSTREAM_NUM_HEADS = 8  # hard-coded in their Adapter's nn.MultiheadAttention

_BRANCH_RENAMES = {
    "down_proj": "down",
    "up_proj": "up",
    "layer_norm": "norm",
    "query_tokens": "cross_attention.queries",
    "cross_attn.out_proj": "cross_attention.to_out",
    "post_attn_norm": "cross_attention.norm",
}


@dataclass
class UpstreamConversion:
    """What [`convert_upstream_checkpoint`] produced."""

    config: CKTConfig
    state_dict: dict[str, torch.Tensor]  # our bank's keys (no peft prefix)
    iteration: Optional[int] = None
    student_trainable: dict[str, torch.Tensor] = field(default_factory=dict)


class UpstreamConversionError(ValueError):
    """A conversion that cannot be done; the message names the input at fault (the checkpoint, the student, the
    output folder)."""


class UpstreamCheckpointError(UpstreamConversionError):
    """The file is not a CKT-WAM checkpoint this converter understands."""


def load_upstream_checkpoint(path: str) -> dict[str, Any]:
    """Loads their `.pt` with `weights_only=True`: tensors and plain containers only, never arbitrary objects."""
    if not os.path.exists(path):
        raise UpstreamCheckpointError(f"{path!r} was not found: no such checkpoint file.")
    if os.path.isdir(path):
        raise UpstreamCheckpointError(f"{path!r} is a folder, not a CKT-WAM checkpoint file (.pt).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UpstreamCheckpointError(_unloadable_reason(path, error)) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("adapter_bank"), dict):
        raise UpstreamCheckpointError(
            f"{path!r} is not a CKT-WAM checkpoint: expected a dict with an 'adapter_bank' state dict."
        )
    return checkpoint


def _unloadable_reason(path: str, error: Exception) -> str:
    """Why `torch.load` failed, told apart from the file itself: a refused pickle global (the only case that
    means "more than tensors"), a truncated or corrupt torch zip archive, a text file, or something else."""
    import pickle

    if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error).lower().replace(" ", "_"):
        return (
            f"Refusing to load {path!r}: it holds more than tensors and plain values (torch.load(weights_only=True) "
            f"failed: {error})."
        )
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return f"{path!r} is empty, not a CKT-WAM checkpoint."
    if head.startswith(b"PK"):  # torch.save's zip archive, cut short or damaged
        return f"{path!r} is a truncated or corrupt torch checkpoint (torch.load failed: {error}); copy it again."
    try:
        head.decode("utf-8")
        is_text = b"\0" not in head
    except UnicodeDecodeError:
        is_text = False
    if is_text:
        return f"{path!r} is a text file, not a CKT-WAM checkpoint (a .pt file written by torch.save)."
    return f"{path!r} is not a torch checkpoint torch.load can read ({type(error).__name__}: {error})."


def _rename_branch_parameter(name: str) -> str:
    for theirs, ours in _BRANCH_RENAMES.items():
        if name == theirs or name.startswith(theirs + "."):
            return ours + name[len(theirs) :]
    raise UpstreamCheckpointError(f"Unknown parameter in a CKT-WAM adapter branch: {name!r}.")


def _convert_state_dict(theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in theirs.items():
        if not isinstance(tensor, torch.Tensor):
            raise UpstreamCheckpointError(f"adapter_bank[{key!r}] is not a tensor.")
        tensor = tensor.detach().float().contiguous()
        if key == "sep_token":
            ours["separator"] = tensor.reshape(1, tensor.shape[-1])
        elif key == "router.noise_weight":
            ours["router.noise_scale"] = tensor.reshape(1)
        elif key.startswith("router.gate."):
            ours["router.mlp." + key[len("router.gate.") :]] = tensor
        elif key.startswith(("generalized_adapter.", "specialized_adapters.")):
            if key.startswith("generalized_adapter."):
                branch, name = "generalized", key[len("generalized_adapter.") :]
            else:
                index, name = key[len("specialized_adapters.") :].split(".", 1)
                branch = f"specialized.{index}"
            if name == "query_tokens":
                ours[f"{branch}.cross_attention.queries"] = tensor.reshape(tensor.shape[-2], tensor.shape[-1])
            elif name in ("cross_attn.in_proj_weight", "cross_attn.in_proj_bias"):
                kind = name.rsplit("_", 1)[-1]  # weight | bias
                for projection, part in zip(("to_q", "to_k", "to_v"), tensor.chunk(3, dim=0)):
                    if (projection, kind) == ("to_k", "bias"):
                        continue  # cancels in the softmax: our key projection has none (see the module docstring)
                    ours[f"{branch}.cross_attention.{projection}.{kind}"] = part.contiguous()
            else:
                ours[f"{branch}.{_rename_branch_parameter(name)}"] = tensor
        else:
            raise UpstreamCheckpointError(f"Unknown parameter in the CKT-WAM adapter bank: {key!r}.")
    return ours


def _sizes_from_weights(theirs: dict[str, torch.Tensor]) -> dict[str, int]:
    required = (
        "generalized_adapter.down_proj.weight",
        "generalized_adapter.up_proj.weight",
        "generalized_adapter.query_tokens",
        "router.gate.0.weight",
    )
    missing = [key for key in required if key not in theirs]
    if missing:
        raise UpstreamCheckpointError(f"The adapter bank lacks {missing}: not a CKT-WAM AdapterBank state dict.")
    down = theirs["generalized_adapter.down_proj.weight"]
    experts = {int(key.split(".")[1]) for key in theirs if key.startswith("specialized_adapters.")}
    if not experts or experts != set(range(len(experts))):
        raise UpstreamCheckpointError(f"Specialized adapters must be numbered 0..M-1, found {sorted(experts)}.")
    return {
        "teacher_hidden_size": down.shape[1],
        "bottleneck_dim": down.shape[0],
        "student_hidden_size": theirs["generalized_adapter.up_proj.weight"].shape[0],
        "num_context_tokens": theirs["generalized_adapter.query_tokens"].shape[-2],
        "router_hidden_dim": theirs["router.gate.0.weight"].shape[0],
        "num_experts": len(experts),
    }


def convert_upstream_checkpoint(
    checkpoint: dict[str, Any],
    teacher: Optional[str] = None,
    teacher_layer: Optional[str] = None,
    num_attention_heads: int = UPSTREAM_NUM_HEADS,
    **config_kwargs: Any,
) -> UpstreamConversion:
    """Maps a loaded CKT-WAM checkpoint (see [`load_upstream_checkpoint`]) onto a [`CKTConfig`] and our bank's state
    dict. Sizes come from the tensors; `top_k`, `adapter_dropout` and `load_balance_weight` from their config (their
    defaults when absent); `config_kwargs` set any other CKTConfig field (e.g. `context_kwarg`, `teacher_class`)."""
    theirs = checkpoint["adapter_bank"]
    upstream_config = checkpoint.get("config") or {}
    sizes = _sizes_from_weights(theirs)
    # Their config names (TrainConfig) next to the sizes the tensors have: a disagreement means a foreign file.
    for their_name, our_name in (
        ("teacher_hidden_dim", "teacher_hidden_size"),
        ("student_hidden_dim", "student_hidden_size"),
        ("adapter_bottleneck_dim", "bottleneck_dim"),
        ("num_adapter_output_tokens", "num_context_tokens"),
        ("num_specialized_experts", "num_experts"),
        ("gating_hidden_dim", "router_hidden_dim"),
    ):
        if their_name in upstream_config and upstream_config[their_name] != sizes[our_name]:
            raise UpstreamCheckpointError(
                f"The checkpoint's config says {their_name}={upstream_config[their_name]}, but its tensors have "
                f"{our_name}={sizes[our_name]}."
            )
    if teacher_layer is None:
        if upstream_config.get("use_middle_layer", True) is False:
            raise UpstreamCheckpointError(
                "The checkpoint was trained on the teacher's last block (use_middle_layer=False): pass the teacher "
                "layer explicitly (e.g. --teacher-layer blocks.39)."
            )
        teacher_layer = f"blocks.{upstream_config.get('teacher_block_index', 20)}"
    dropout = float(upstream_config.get("adapter_dropout", 0.1))
    config = CKTConfig(
        teacher=teacher,
        teacher_layer=teacher_layer,
        injection="append",
        top_k=int(upstream_config.get("top_k", 2)),
        num_attention_heads=num_attention_heads,
        adapter_dropout=dropout,
        attention_dropout=dropout,  # their nn.MultiheadAttention(dropout=adapter_dropout)
        router_noise="router.noise_weight" in theirs,
        use_separator="sep_token" in theirs,
        load_balance_weight=float(upstream_config.get("load_balance_weight", 0.01)),
        **{**sizes, **config_kwargs},
    )
    student_trainable = checkpoint.get("student_trainable") or {}
    return UpstreamConversion(
        config=config,
        state_dict=_convert_state_dict(theirs),
        iteration=checkpoint.get("iteration"),
        student_trainable={key: value for key, value in student_trainable.items() if isinstance(value, torch.Tensor)},
    )


def _build_on_meta(folder: str, model_config: dict[str, Any]) -> Optional[nn.Module]:
    """The diffusers/transformers model that `folder`'s config.json describes, on the meta device (shapes only,
    nothing read but the config); `None` when the config names no such class or it cannot be built from it."""
    import importlib

    if "_class_name" in model_config:
        cls = getattr(importlib.import_module("diffusers"), str(model_config["_class_name"]), None)
    elif model_config.get("architectures"):
        cls = getattr(importlib.import_module("transformers"), str(model_config["architectures"][0]), None)
    else:
        return None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if hasattr(cls, "from_config"):  # diffusers
                return cls.from_config(model_config)
            return cls._from_config(cls.config_class.from_pretrained(folder))  # transformers
    except Exception:  # an unusual model: its width is then checked at load time only
        return None


def _config_width(model_config: dict[str, Any], context_kwarg: Optional[str]) -> Optional[int]:
    """The conditioning width that config.json states for `context_kwarg` (the keys the injection reads)."""
    from .injection import WIDTH_KEYS_FOR_CONTEXT

    text_config = model_config.get("text_config")
    for config in ([text_config] if isinstance(text_config, dict) else []) + [model_config]:
        for key in WIDTH_KEYS_FOR_CONTEXT.get(context_kwarg, ()):
            if isinstance(config.get(key), int):
                return config[key]
    return None


def check_student(student: str, config: CKTConfig) -> None:
    """Checks the student the converted adapter names as its base model (`--student`), before anything is written.

    A local folder must hold a model's `config.json`, and its conditioning (at `config.context_kwarg`, or the output
    of `config.target_modules`) must have the bank's width `d_s` where the model tells it: a diffusers/transformers
    model is built on the meta device from its config (no weights read) and measured as loading would. A name that is
    no local file or folder must be a Hub id (`org/name`); it is not looked up.
    """
    from .injection import infer_student_hidden_size, resolve_route

    path = os.path.expanduser(student)
    if os.path.isfile(path):
        raise UpstreamConversionError(f"--student {student!r} is a file, not a model folder or a Hub id.")
    if not os.path.isdir(path):
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(student)
        except HFValidationError:
            raise UpstreamConversionError(
                f"--student {student!r} was not found: no such folder, and not a Hub id ('org/name')."
            ) from None
        return
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise UpstreamConversionError(
            f"--student {student!r} is a folder without a config.json: not a saved model (save it with "
            "`save_pretrained`, or give its Hub id)."
        )
    try:
        with open(config_file) as f:
            model_config = json.load(f)
    except (OSError, ValueError) as err:
        raise UpstreamConversionError(f"--student {student!r}: cannot read {config_file}: {err}.") from None
    if not isinstance(model_config, dict):
        raise UpstreamConversionError(f"--student {student!r}: {config_file} is not a JSON object.")
    model = _build_on_meta(path, model_config)
    if model is not None:
        try:
            route = resolve_route(model, config.context_kwarg, config.target_modules)
        except ValueError as err:
            flag = "--target-modules" if config.target_modules else "--context-kwarg"
            raise UpstreamConversionError(f"{flag} does not fit the student {student!r}: {err}") from None
        width, where = infer_student_hidden_size(model, route), route.describe()
    elif not config.target_modules:
        width, where = _config_width(model_config, config.context_kwarg), f"`{config.context_kwarg}`"
    else:
        return  # a module's width needs the model: checked when the adapter is loaded
    if width is not None and width != config.student_hidden_size:
        raise UpstreamConversionError(
            f"--student {student!r} has conditioning width {width} at {where}, but the checkpoint's adapters produce "
            f"d_s={config.student_hidden_size}: give the student the checkpoint was trained with (or the "
            "--context-kwarg / --target-modules where its conditioning has that width)."
        )


def student_trainable_warning(count: int, num_values: int, written: Optional[str]) -> str:
    where = (
        f"They were written to {written}; load them into the student (load_state_dict(..., strict=False)) before "
        "wrapping it with the adapter."
        if written
        else "They are NOT in the converted adapter; pass --write-student-trainable to write them beside it."
    )
    return (
        f"The checkpoint's 'student_trainable' holds {count} student tensors ({num_values:,} values): the authors' "
        "script trained the student too, so the adapter alone does not reproduce this checkpoint's results. " + where
    )


# The files a conversion writes: an older output's copies are replaced, a stale student file is not kept.
CONVERTED_FILES = ("adapter_model.safetensors", "adapter_config.json", STUDENT_TRAINABLE_FILE)


def _check_output_dir(output_dir: str) -> str:
    """The real path of `output_dir`, refused when it is a file or holds the current folder (it is replaced
    whole)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UpstreamConversionError(f"output_dir {output_dir!r} is a file, not a folder: choose another path.")
    target = os.path.realpath(output_dir)
    cwd = os.path.realpath(os.getcwd())
    if target == cwd or cwd.startswith(target.rstrip(os.sep) + os.sep):
        raise UpstreamConversionError(
            f"output_dir {output_dir!r} holds the current folder, and the output folder is replaced whole: name a "
            "new or adapter folder (e.g. ./adapter)."
        )
    return target


def save_converted(
    conversion: UpstreamConversion,
    output_dir: str,
    base_model_name_or_path: Optional[str] = None,
    write_student_trainable: bool = False,
) -> list[str]:
    """Writes `adapter_model.safetensors` and `adapter_config.json` (and, if asked, `student_trainable.safetensors`)
    into `output_dir`, all or nothing: the folder is written beside it and swapped in whole (other files of an
    older `output_dir` are carried over; a `student_trainable.safetensors` not written this time is not), so a failure
    leaves the older folder as it was. `base_model_name_or_path` (the student) is checked first ([`check_student`]).
    Returns the written paths. Warns when the checkpoint holds student tensors."""
    from safetensors.torch import save_file

    config = conversion.config
    config.base_model_name_or_path = base_model_name_or_path
    config.inference_mode = True
    # Check the state dict against a bank of this config before writing anything.
    from .layer import CKTAdapterBank

    with torch.device("meta"):
        bank = CKTAdapterBank(config, config.teacher_hidden_size, config.student_hidden_size)
    expected = {key: tuple(value.shape) for key, value in bank.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in conversion.state_dict.items()}
    if expected != got:
        missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        wrong = sorted(key for key in expected.keys() & got.keys() if expected[key] != got[key])
        raise UpstreamCheckpointError(
            f"The converted weights do not fit the bank: missing {missing}, unexpected {unexpected}, wrong shapes {wrong}."
        )
    if base_model_name_or_path:
        check_student(base_model_name_or_path, config)
    target = _check_output_dir(output_dir)

    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.convert-")
    try:
        tensors = {ADAPTER_BANK_PREFIX + key: value for key, value in conversion.state_dict.items()}
        save_file(tensors, os.path.join(staging, "adapter_model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(staging)
        names = ["adapter_model.safetensors", "adapter_config.json"]
        if conversion.student_trainable and write_student_trainable:
            # Copies: safetensors refuses tensors that share memory.
            student = {key: value.detach().clone().contiguous() for key, value in conversion.student_trainable.items()}
            save_file(student, os.path.join(staging, STUDENT_TRAINABLE_FILE), metadata={"format": "pt"})
            names.append(STUDENT_TRAINABLE_FILE)
        if os.path.isdir(target):  # what else the older folder holds (a README, a model card) stays
            for name in sorted(set(os.listdir(target)) - set(CONVERTED_FILES)):
                source, copy = os.path.join(target, name), os.path.join(staging, name)
                if os.path.isdir(source) and not os.path.islink(source):
                    shutil.copytree(source, copy, symlinks=True)
                else:
                    shutil.copy2(source, copy, follow_symlinks=False)
        commit_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    written = [os.path.join(output_dir, name) for name in names]
    if conversion.student_trainable:
        count = len(conversion.student_trainable)
        values = sum(value.numel() for value in conversion.student_trainable.values())
        student_file = os.path.join(output_dir, STUDENT_TRAINABLE_FILE) if write_student_trainable else None
        warnings.warn(student_trainable_warning(count, values, student_file), UserWarning, stacklevel=2)
    return written


__all__ = [
    "UpstreamCheckpointError",
    "UpstreamConversionError",
    "UpstreamConversion",
    "check_student",
    "convert_upstream_checkpoint",
    "load_upstream_checkpoint",
    "save_converted",
]

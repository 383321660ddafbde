"""Share CKT adapters on the Hugging Face Hub with a model card that says what they are.

`PeftModel.push_to_hub` is transformers' implementation: it replaces the card that peft's `save_pretrained`
writes with a bare one (no `library_name: peft`, no `base_model`). [`push_to_hub`] instead saves the adapter to a
temporary folder, writes a CKT model card there with `huggingface_hub.ModelCard`, and uploads the folder with
`upload_folder`. [`install_push_to_hub`] makes `PeftModel.push_to_hub` route CKT models to it (other PEFT methods
keep transformers' behaviour).

Pulling back needs nothing special: `PeftModel.from_pretrained(student, "user/repo", teacher=teacher)`.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, ModelCard
    from peft import PeftModel

CKT_MODEL_CARD_TAGS = ("peft", "ckt", "robotics", "world-action-model")
_REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_PATCH_MARKER = "_peft_ckt_push_to_hub"


def _ckt_config(model: PeftModel, adapter_name: Optional[str] = None):
    """The CKTConfig of `adapter_name` (default: the active adapter), or None when that adapter is not CKT."""
    from .config import CKTConfig

    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict) or not peft_config:
        return None
    name = adapter_name or getattr(model, "active_adapter", None) or next(iter(peft_config))
    config = peft_config.get(name)
    return config if isinstance(config, CKTConfig) else None


def count_adapter_parameters(model: PeftModel, adapter_name: Optional[str] = None) -> tuple[int, int]:
    """`(adapter parameters, all parameters)`: the CKT bank of `adapter_name` (default: the active adapter) plus its
    `modules_to_save` copies, whatever their `requires_grad`. An adapter reloaded for inference is frozen, yet the
    card must report what was trained: the same numbers as `print_trainable_parameters()` of the training model."""
    config = _ckt_config(model, adapter_name)
    name = adapter_name or getattr(model, "active_adapter", None) or next(iter(model.peft_config))
    owned = (f"ckt_bank.{name}.", f"modules_to_save.{name}.")
    adapter = total = 0
    for param_name, param in model.named_parameters():
        total += param.numel()
        if config is not None and any(part in f"{param_name}." for part in owned):
            adapter += param.numel()
    return adapter, total


def is_ckt_model(model: Any) -> bool:
    """True when `model` is a PeftModel whose active adapter is a CKT adapter."""
    return _ckt_config(model) is not None


def _looks_like_hub_id(name: Optional[str]) -> bool:
    # The Hub rejects cards whose `base_model` is not a repo id (e.g. a local folder), so only ids qualify.
    return bool(name) and not os.path.exists(name) and bool(_REPO_ID_PATTERN.match(name)) and len(name) <= 96


def resolve_base_model(model: PeftModel, base_model: Optional[str] = None) -> Optional[str]:
    """The student's Hub id for the card's `base_model`: the explicit argument, else what peft recorded in the
    adapter config, else the student's own config. Local paths and unnamed (randomly built) students give None."""
    if base_model:
        return base_model
    config = _ckt_config(model)
    candidates = [getattr(config, "base_model_name_or_path", None)]
    student = model.get_base_model() if hasattr(model, "get_base_model") else None
    student_config = getattr(student, "config", None)
    candidates.append(getattr(student, "name_or_path", None))
    if isinstance(student_config, dict):  # diffusers' FrozenDict
        candidates.append(student_config.get("_name_or_path"))
    else:
        candidates.append(getattr(student_config, "_name_or_path", None))
    for candidate in candidates:
        if _looks_like_hub_id(candidate):
            return candidate
    return None


def build_model_card(
    model: PeftModel,
    repo_id: Optional[str] = None,
    base_model: Optional[str] = None,
    tags: Optional[list[str]] = None,
    adapter_name: Optional[str] = None,
) -> ModelCard:
    """Model card of a CKT adapter: `library_name: peft`, `base_model` (the student), the CKT tags, and a body
    naming the teacher (reference and layer), K, M, top-k and the trainable share of parameters."""
    from huggingface_hub import ModelCard, ModelCardData
    from peft import __version__ as peft_version

    config = _ckt_config(model, adapter_name)
    if config is None:
        raise ValueError("build_model_card needs a PeftModel whose active adapter is a CKT adapter.")
    base_model = resolve_base_model(model, base_model)
    trainable, total = count_adapter_parameters(model, adapter_name)
    trainable_pct = 100.0 * trainable / max(total, 1)
    student_class = type(model.get_base_model()).__name__
    stored = config.teacher_ref.to_config_dict()  # what adapter_config.json holds for the teacher
    teacher_ref = stored["teacher"]
    teacher_class = stored["teacher_class"] or "unknown"
    teacher_text = (
        f"`{teacher_ref}` (`{teacher_class}`)"
        if teacher_ref
        else f"an unnamed `{teacher_class}` module (not on the Hub)"
    )
    all_tags = list(dict.fromkeys([*CKT_MODEL_CARD_TAGS, *(tags or [])]))

    card_data = ModelCardData(library_name="peft", base_model=base_model, tags=all_tags)
    # Extra metadata keys are kept by the Hub; they make the transfer searchable and machine-readable.
    card_data.ckt = {
        "teacher": teacher_ref,
        "teacher_class": stored["teacher_class"],
        "teacher_layer": config.teacher_layer,
        "num_context_tokens": config.num_context_tokens,
        "num_experts": config.num_experts,
        "top_k": config.top_k,
        "injection": config.injection,
        "trainable_parameters": trainable,
        "trainable_percent": round(trainable_pct, 4),
    }
    title = repo_id or "CKT adapter"
    branches = int(config.use_generalized_adapter) + int(config.use_specialized_adapters)
    class_name = teacher_class.rsplit(".", 1)[-1]
    if teacher_ref:
        teacher_lines = f'from {teacher_class.split(".")[0]} import {class_name}\n\nteacher = {class_name}.from_pretrained("{teacher_ref}")'
    else:
        teacher_lines = f"teacher = ...  # the {class_name} this adapter was trained with"
    content = f"""---
{card_data.to_yaml()}
---

# {title}

A **CKT (Context Knowledge Transfer)** adapter for the student world action model
{f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model else f"`{student_class}`"},
trained with [`peft-ckt`](https://github.com/peft-ckt/peft-ckt) on top of PEFT.
A frozen teacher runs up to one intermediate layer; a small adapter bank (a generalized adapter, a router and
sparse expert adapters with learnable-query cross-attention) turns those features into a short context that is
injected into the frozen student's conditioning sequence.

| | |
|---|---|
| Student (`base_model`) | {f"`{base_model}`" if base_model else f"`{student_class}` (no Hub id recorded)"} |
| Teacher | {teacher_text} |
| Teacher layer `l*` | `{config.teacher_layer}` |
| Context tokens per branch `K` | {config.num_context_tokens} (context length {branches * config.num_context_tokens}{" + 1 separator" if config.use_separator else ""}) |
| Generalized adapter | {"yes" if config.use_generalized_adapter else "no (ablation)"} |
| Specialized adapters `M` / top-k | {f"{config.num_experts} / {config.top_k}" if config.use_specialized_adapters else "none (ablation)"} |
| Injection | `{config.injection}` into `{config.context_kwarg or config.target_modules}` |
| Trainable parameters | {trainable:,} of {total:,} ({trainable_pct:.4f}% of the student + adapter) |

## Usage

```python
import peft_ckt  # registers the "ckt" PEFT method
from peft import PeftModel

{teacher_lines}
student = ...  # the base model above
model = PeftModel.from_pretrained(student, "{repo_id or "<repo_id>"}", teacher=teacher)
output = model(**student_inputs, teacher_inputs=teacher_inputs)
```

Without `teacher=`, the teacher stored in `adapter_config.json` is loaded.

### Framework versions

- PEFT {peft_version}
"""
    return ModelCard(content)


def push_to_hub(
    model: PeftModel,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token: Optional[str | bool] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    base_model: Optional[str] = None,
    tags: Optional[list[str]] = None,
    **save_kwargs: Any,
) -> CommitInfo:
    """Uploads a CKT adapter (`adapter_model.safetensors`, `adapter_config.json`) and its model card to `repo_id`.

    Args:
        model: a PeftModel with a CKT adapter.
        repo_id: `"user/name"` (or `"name"`, in the token owner's namespace). Created if missing.
        base_model: the student's Hub id for the card; inferred when None (see [`resolve_base_model`]).
        tags: extra card tags, added to `peft`, `ckt`, `robotics`, `world-action-model`.
        save_kwargs: forwarded to `save_pretrained` (e.g. `selected_adapters`).

    Returns:
        The `huggingface_hub.CommitInfo` of the upload (`.oid`, `.commit_url`).
    """
    from huggingface_hub import HfApi

    if not is_ckt_model(model):
        raise ValueError("peft_ckt.hub.push_to_hub expects a PeftModel whose active adapter is a CKT adapter.")
    save_kwargs.pop("max_shard_size", None)  # transformers' argument; adapters are saved unsharded
    save_kwargs.pop("safe_serialization", None)  # CKT saves safetensors only
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="peft-ckt-push-") as folder:
        model.save_pretrained(folder, **save_kwargs)
        # Replaces the generic card peft's save_pretrained wrote.
        build_model_card(model, repo_id=repo_id, base_model=base_model, tags=tags).save(
            os.path.join(folder, "README.md")
        )
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload CKT adapter",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


def install_push_to_hub() -> None:
    """Makes `PeftModel.push_to_hub` use [`push_to_hub`] for CKT models; other adapters keep the original.

    Idempotent. Only `PeftModel` (and its subclasses) is patched, not transformers' `PushToHubMixin`.
    """
    from peft import PeftModel

    current = PeftModel.push_to_hub
    if getattr(current, _PATCH_MARKER, False):
        return
    original = current

    @functools.wraps(original)
    def push_to_hub_routed(self, repo_id: str, *args: Any, **kwargs: Any):
        if args or not is_ckt_model(self):
            return original(self, repo_id, *args, **kwargs)
        return push_to_hub(self, repo_id, **kwargs)

    setattr(push_to_hub_routed, _PATCH_MARKER, True)
    push_to_hub_routed.__wrapped_original__ = original
    PeftModel.push_to_hub = push_to_hub_routed


def uninstall_push_to_hub() -> None:
    """Restores the original `PeftModel.push_to_hub` (mainly for tests)."""
    from peft import PeftModel

    current = PeftModel.push_to_hub
    if getattr(current, _PATCH_MARKER, False):
        PeftModel.push_to_hub = current.__wrapped_original__

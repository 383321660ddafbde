"""Where and how the CKT context enters the student: its conditioning sequence, masks, labels, positions.

`E_t [B, L, d_s]` becomes `[E_t ; <SEP> ; C_A]` ("append") or `[C_A ; <SEP> ; E_t]` ("prepend"); the context tokens
`[B, T, d_s]` (T = 2K, plus one with the separator) arrive already ordered from the adapter bank.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .teacher import get_submodule_or_raise, infer_width

# Attention-mask kwargs that may cover the conditioning sequence, tried in order; one is extended only when its
# length equals the conditioning length.
MASK_KWARGS_FOR_CONTEXT = {
    "encoder_hidden_states": ("encoder_attention_mask", "attention_mask"),
    "inputs_embeds": ("attention_mask",),
}
DEFAULT_MASK_KWARGS = ("attention_mask",)
# Config keys that give the width of a conditioning kwarg, most specific first.
WIDTH_KEYS_FOR_CONTEXT = {
    "encoder_hidden_states": (
        "text_embed_dim",
        "text_dim",
        "cross_attention_dim",
        "joint_attention_dim",
        "encoder_hidden_size",
        "caption_channels",
    ),
    "inputs_embeds": ("hidden_size", "d_model", "n_embd"),
}
IGNORE_INDEX = -100
CACHE_KWARGS = ("cache", "past_key_values")


def concat_context(sequence: torch.Tensor, context: torch.Tensor, injection: str) -> torch.Tensor:
    """`[B, L, d]` and `[B, T, d]` -> `[B, L+T, d]` in the order of `injection`."""
    if sequence.ndim != 3:
        raise ValueError(f"The student's conditioning must be [B, L, d_s], got shape {tuple(sequence.shape)}.")
    if sequence.shape[0] != context.shape[0]:
        raise ValueError(
            f"Batch size mismatch: the CKT context (from the teacher batch) has {context.shape[0]} samples but the "
            f"student batch has {sequence.shape[0]}. Teacher and student inputs must describe the same samples."
        )
    if sequence.shape[-1] != context.shape[-1]:
        raise ValueError(
            f"Width mismatch: the student's conditioning has width {sequence.shape[-1]} but the CKT context has "
            f"{context.shape[-1]} (student_hidden_size)."
        )
    context = context.to(device=sequence.device, dtype=sequence.dtype)
    parts = (sequence, context) if injection == "append" else (context, sequence)
    return torch.cat(parts, dim=1)


def replace_placeholders(sequence: torch.Tensor, context: torch.Tensor, injection: str) -> torch.Tensor:
    """`[B, L+T, d]` whose first ("prepend") or last ("append") T positions are placeholders -> the same sequence with
    the context `[B, T, d]` in their place."""
    count = context.shape[1]
    if sequence.ndim != 3 or sequence.shape[1] < count:
        raise ValueError(
            f"The student's embeddings have shape {tuple(sequence.shape)}; expected [B, L+{count}, d_s] with the "
            "context placeholders."
        )
    kept = sequence[:, count:] if injection == "prepend" else sequence[:, : sequence.shape[1] - count]
    return concat_context(kept, context, injection)


def add_placeholder_ids(input_ids: torch.Tensor, count: int, token_id: int, injection: str) -> torch.Tensor:
    """`input_ids [B, L]` -> `[B, L+count]` with `count` placeholder ids where the context goes.

    The student then sees token ids as long as its embedded sequence, so whatever it derives from the ids (e.g. the
    last non-padding token a sequence classifier pools) indexes the extended sequence correctly.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"CKT expects `input_ids` of shape [B, L], got {tuple(input_ids.shape)}.")
    placeholders = torch.full((input_ids.shape[0], count), token_id, dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([placeholders, input_ids] if injection == "prepend" else [input_ids, placeholders], dim=1)


def insert_ones(mask: torch.Tensor, count: int, position: int) -> torch.Tensor:
    """Inserts `count` attended positions into a 2D mask `[B, S]` at `position`."""
    if mask.ndim != 2:
        raise ValueError(
            f"CKT can extend 2D attention masks [B, S] only; got shape {tuple(mask.shape)}. Pass a 2D mask and let "
            "the student build its own 4D mask."
        )
    ones = torch.ones(mask.shape[0], count, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask[:, :position], ones, mask[:, position:]], dim=1)


def pad_labels(labels: torch.Tensor, count: int, injection: str) -> torch.Tensor:
    """Gives the added positions the ignore index (-100) so they never enter the LM loss."""
    pad = torch.full((labels.shape[0], count), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    return torch.cat([labels, pad] if injection == "append" else [pad, labels], dim=1)


def extend_position_ids(position_ids: torch.Tensor, count: int, injection: str) -> torch.Tensor:
    """Positions for the extended sequence: prepended tokens take 0..T-1 and shift the rest; appended ones follow."""
    steps = torch.arange(count, dtype=position_ids.dtype, device=position_ids.device)
    steps = steps.expand(*position_ids.shape[:-1], count)
    if injection == "prepend":
        return torch.cat([steps, position_ids + count], dim=-1)
    return torch.cat([position_ids, position_ids[..., -1:] + 1 + steps], dim=-1)


def is_cached_decoding_step(kwargs: Mapping[str, Any]) -> bool:
    """True on the decoding steps of `generate` (the KV cache already holds the prompt and the context)."""
    # transformers >= 5.24 names the cache `cache`; earlier versions `past_key_values`.
    cache = next((kwargs[name] for name in CACHE_KWARGS if kwargs.get(name) is not None), None)
    if cache is None:
        return False
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length()) > 0
    return len(cache) > 0


@dataclass
class InjectionRoute:
    """Where `E_t` comes from: a forward kwarg of the student (`context_kwarg`) or a module's output."""

    context_kwarg: Optional[str] = None
    module_name: Optional[str] = None
    module: Optional[nn.Module] = field(default=None, repr=False)
    # Index of `context_kwarg` among the student's positional parameters (to also catch positional calls).
    positional_index: Optional[int] = None
    # The target module is the student's input embedding (transformers' `get_input_embeddings()`): E_t is then
    # `inputs_embeds` when the student is called with it, and `input_ids` get placeholders for the context.
    embeds_input: bool = False
    input_ids_index: Optional[int] = None
    placeholder_token_id: int = 0

    @property
    def mask_kwargs(self) -> tuple[str, ...]:
        if self.context_kwarg is not None:
            return MASK_KWARGS_FOR_CONTEXT.get(self.context_kwarg, ("encoder_attention_mask", "attention_mask"))
        return DEFAULT_MASK_KWARGS

    @property
    def is_token_sequence(self) -> bool:
        """Whether E_t is the student's own token sequence (LM-style: labels and positions follow it)."""
        return self.module is not None or self.context_kwarg == "inputs_embeds"

    def describe(self) -> str:
        return f"kwarg `{self.context_kwarg}`" if self.module is None else f"output of module `{self.module_name}`"


def _find_target_module(student: nn.Module, target_modules: Any) -> tuple[str, nn.Module]:
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    found = []
    for name, module in student.named_modules():
        if name and any(name == target or name.endswith("." + target) for target in names):
            found.append((name, module))
    if not found:
        # exact dotted path inside the student, with close-match suggestions
        get_submodule_or_raise(student, names[0], "student", "target_modules")
    if len(found) > 1:
        raise ValueError(
            f"`target_modules={target_modules!r}` matches {len(found)} student modules ({[n for n, _ in found][:5]}); "
            "CKT injects the context once: name exactly one module whose output is the conditioning sequence."
        )
    return found[0]


def resolve_route(student: nn.Module, context_kwarg: Optional[str], target_modules: Any) -> InjectionRoute:
    """Checks that the configured injection point exists on the student and returns it."""
    parameters = inspect.signature(student.forward).parameters
    positional = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if target_modules:
        name, module = _find_target_module(student, target_modules)
        route = InjectionRoute(module_name=name, module=module)
        if module is _input_embeddings(student) and "inputs_embeds" in parameters:
            route.embeds_input = True
            route.input_ids_index = positional.index("input_ids") if "input_ids" in positional else None
            config = getattr(student, "config", None)
            pad_token_id = getattr(config, "pad_token_id", None)
            route.placeholder_token_id = 1 if pad_token_id == 0 else 0
        return route
    accepts_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if context_kwarg not in parameters and not accepts_var_kwargs:
        raise ValueError(
            f"The student's forward ({type(student).__name__}) has no argument `context_kwarg={context_kwarg!r}`; "
            f"its arguments are {list(parameters)}. Set `context_kwarg` to the conditioning argument or "
            "`target_modules` to the module that produces it."
        )
    index = positional.index(context_kwarg) if context_kwarg in positional else None
    return InjectionRoute(context_kwarg=context_kwarg, positional_index=index)


def _input_embeddings(student: nn.Module) -> Optional[nn.Module]:
    get_input_embeddings = getattr(student, "get_input_embeddings", None)
    if get_input_embeddings is None:
        return None
    try:
        return get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None


def infer_student_hidden_size(student: nn.Module, route: InjectionRoute) -> Optional[int]:
    """Width `d_s` of the conditioning sequence, from the target module or the student's config."""
    if route.module is not None:
        return infer_width(route.module)
    config = getattr(student, "config", None)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in WIDTH_KEYS_FOR_CONTEXT.get(route.context_kwarg, ()):
        value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if isinstance(value, int):
            return value
    if route.context_kwarg == "inputs_embeds" and hasattr(student, "get_input_embeddings"):
        embeddings = student.get_input_embeddings()
        if embeddings is not None:
            return infer_width(embeddings)
    return None

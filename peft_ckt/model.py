"""`CKTModel`: the peft tuner that runs the teacher, the adapter bank, and injects the context into the student."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .config import CKTConfig
from .injection import (
    InjectionRoute,
    concat_context,
    extend_position_ids,
    infer_student_hidden_size,
    insert_ones,
    is_cached_decoding_step,
    pad_labels,
    resolve_route,
)
from .layer import CKTAdapterBank, CKTContext, CKTLayer
from .teacher import TeacherFeatureExtractor, infer_teacher_hidden_size, load_teacher

# Not "ckt_...": peft skips modules whose name contains the method prefix when it walks tuner layers.
LAYER_NAME = "ckt"
# Keyword arguments that belong to CKT, never to the student.
CKT_FORWARD_KWARGS = ("teacher_inputs", "ckt_context")


def _strip_ckt_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    # Installed permanently on the student: with the adapter disabled (or the student called directly) the CKT
    # kwargs must still never reach the student's forward.
    if any(name in kwargs for name in CKT_FORWARD_KWARGS):
        kwargs = {k: v for k, v in kwargs.items() if k not in CKT_FORWARD_KWARGS}
    return args, kwargs


class _ForwardInjection:
    """Per-call state: injects one context into every student forward run inside one peft forward/generate."""

    def __init__(self, context: CKTContext, route: InjectionRoute, injection: str, aux_loss: torch.Tensor):
        self.context = context
        self.route = route
        self.injection = injection
        self.aux_loss = aux_loss
        self.num_tokens = context.tokens.shape[1]
        self.inject_module_output = False
        self.prompt_length: Optional[int] = None  # mask length at prefill, where appended tokens sit in the cache

    def before_student(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        decoding = is_cached_decoding_step(kwargs)
        route, count = self.route, self.num_tokens
        conditioning_length = None
        if not decoding:
            if route.context_kwarg is not None:
                args, kwargs, conditioning_length = self._inject_kwarg(args, kwargs)
            else:
                self.inject_module_output = True
        # Masks: on the prefill step they cover the conditioning; on decoding steps they cover the cached sequence.
        for mask_name in route.mask_kwargs:
            mask = kwargs.get(mask_name)
            if not isinstance(mask, torch.Tensor):
                continue
            if decoding:
                position = 0 if self.injection == "prepend" else self.prompt_length
                kwargs[mask_name] = insert_ones(mask, count, position)
            elif conditioning_length is None or mask.shape[-1] == conditioning_length:
                self.prompt_length = mask.shape[-1]
                kwargs[mask_name] = insert_ones(mask, count, 0 if self.injection == "prepend" else mask.shape[-1])
            break
        if route.is_token_sequence:
            labels = kwargs.get("labels")
            if isinstance(labels, torch.Tensor) and labels.ndim == 2 and not decoding:
                kwargs["labels"] = pad_labels(labels, count, self.injection)
            position_ids = kwargs.get("position_ids")
            if isinstance(position_ids, torch.Tensor):
                kwargs["position_ids"] = (
                    position_ids + count if decoding else extend_position_ids(position_ids, count, self.injection)
                )
        return args, kwargs

    def _inject_kwarg(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, int]:
        name, index = self.route.context_kwarg, self.route.positional_index
        if name in kwargs and kwargs[name] is not None:
            sequence = kwargs[name]
            kwargs[name] = concat_context(sequence, self.context.tokens, self.injection)
        elif index is not None and len(args) > index and args[index] is not None:
            sequence = args[index]
            args = (*args[:index], concat_context(sequence, self.context.tokens, self.injection), *args[index + 1 :])
        else:
            raise ValueError(
                f"CKT injects its context into the student's `{name}`, but the student was called without it. Pass "
                f"`{name}=...` (the conditioning sequence [B, L, d_s])."
            )
        return args, kwargs, sequence.shape[1]

    def after_target_module(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self.inject_module_output:
            return output
        self.inject_module_output = False
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"CKT target module `{self.route.module_name}` returned {type(output).__name__}; it must return the "
                "conditioning sequence tensor [B, L, d_s]."
            )
        return concat_context(output, self.context.tokens, self.injection)

    def after_student(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        # The student's own loss (when it returns one) gets the weighted load-balancing loss.
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            output["loss"] = loss + self.aux_loss.to(loss.dtype)
        return output


class CKTModel(BaseTuner):
    """
    Context Knowledge Transfer (CKT) between world action models, as a peft tuner. Build it with
    `peft.get_peft_model(student, CKTConfig(teacher=teacher, ...))`.

    The teacher stays outside the module tree (never saved, never trained); the adapter banks live in a
    [`CKTLayer`] attached to the student as `ckt`. A forward with `teacher_inputs=` runs the teacher up to
    `teacher_layer` (early exit, no autograd), the bank turns `H_T [B, N, d_t]` into a context `[B, 2K(+1), d_s]`,
    and the context is injected into the student's conditioning. With `ckt_context=` (from [`encode_teacher`]) the
    teacher and the bank run once for many student calls (e.g. all denoising steps).
    """

    prefix: str = "ckt_"
    tuner_layer_cls = CKTLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ injection (peft's BaseTuner interface)
    def _ckt_state(self) -> dict:
        state = self.__dict__.get("_ckt")
        if state is None:
            # Per-adapter runtime objects. Kept out of nn.Module registration: the teacher is not an adapter weight.
            state = {"extractors": {}, "routes": {}, "last_context": None, "strip_handle": None}
            self.__dict__["_ckt"] = state
        return state

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        return peft_config

    def _check_new_adapter_config(self, config: PeftConfig) -> None:
        if not isinstance(config, CKTConfig):
            raise TypeError(f"CKTModel needs a CKTConfig, got {type(config).__name__}.")

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("CKT does not replace student modules; see CKTModel.inject_adapter.")

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if not (name == LAYER_NAME or name.startswith(LAYER_NAME + ".")):
                param.requires_grad = False

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
    ) -> None:
        """Validates the config against teacher and student, then builds the adapter bank `adapter_name`.

        Every check runs before anything is attached, so a bad config leaves the student untouched.
        """
        config: CKTConfig = self.peft_config[adapter_name]
        self._check_new_adapter_config(config)
        state = self._ckt_state()

        # A stored teacher reference is loaded now only if its width is unknown; otherwise on first use, so that
        # training from cached features, pushing or inspecting an adapter never loads a (possibly 14B) teacher.
        teacher = self._resolve_teacher(config, load=config.teacher_hidden_size is None)
        extractor = TeacherFeatureExtractor(teacher, config.teacher_layer) if teacher is not None else None
        route = resolve_route(model, config.context_kwarg, config.target_modules)

        inferred_t = infer_teacher_hidden_size(teacher, extractor.layer) if extractor is not None else None
        teacher_hidden_size = _checked_width("teacher", config.teacher_hidden_size, inferred_t, config.teacher_layer)
        inferred_s = infer_student_hidden_size(model, route)
        student_hidden_size = _checked_width("student", config.student_hidden_size, inferred_s, route.describe())
        if student_hidden_size % config.num_attention_heads:
            raise ValueError(
                f"The student width d_s={student_hidden_size} is not divisible by num_attention_heads="
                f"{config.num_attention_heads}."
            )
        # Saved with the adapter, so it can be rebuilt without inspecting (or even loading) the teacher.
        config.teacher_hidden_size, config.student_hidden_size = teacher_hidden_size, student_hidden_size

        layer = getattr(model, LAYER_NAME, None)
        if layer is None:
            layer = CKTLayer()
            model.add_module(LAYER_NAME, layer)
        elif not isinstance(layer, CKTLayer):
            raise ValueError(f"The student already has a `{LAYER_NAME}` attribute that is not a CKTLayer.")
        if adapter_name in layer.ckt_bank:
            raise ValueError(f"An adapter named {adapter_name!r} already exists.")
        layer.update_layer(adapter_name, config, teacher_hidden_size, student_hidden_size, device=_device_of(model))
        if not config.inference_mode:
            self._mark_only_adapters_as_trainable(model)
        else:
            model.requires_grad_(False)

        state["extractors"][adapter_name] = extractor
        state["routes"][adapter_name] = route
        if state["strip_handle"] is None:
            state["strip_handle"] = model.register_forward_pre_hook(_strip_ckt_kwargs, with_kwargs=True, prepend=True)
        self.targeted_module_names.append(route.module_name or LAYER_NAME)

    @staticmethod
    def _resolve_teacher(config: CKTConfig, load: bool) -> Optional[nn.Module]:
        """The attached teacher module; a stored reference is loaded only when `load` (else lazily, on first use)."""
        if isinstance(config.teacher, nn.Module):  # set on the config after construction
            config.attach_teacher(config.teacher)
        if config.teacher_module is not None:
            return config.teacher_module
        if config.teacher and load:
            return CKTModel._load_teacher_reference(config)
        return None

    @staticmethod
    def _load_teacher_reference(config: CKTConfig) -> nn.Module:
        reference, teacher_class = config.teacher, config.teacher_class
        try:
            teacher = load_teacher(reference, teacher_class)
        except Exception as err:
            raise RuntimeError(
                f"Could not load the CKT teacher {reference!r} (class {teacher_class}): {err}. Pass the teacher "
                "module instead: `PeftModel.from_pretrained(student, path, teacher=teacher)`."
            ) from err
        config.attach_teacher(teacher)
        # Keep the reference the adapter was saved with (the loaded model may report a cache path).
        config.teacher, config.teacher_class = reference, teacher_class or config.teacher_class
        return teacher

    # ------------------------------------------------------------------ adapters
    @property
    def ckt_layer(self) -> CKTLayer:
        return getattr(self.model, LAYER_NAME)

    def _active_adapter_name(self) -> str:
        active = self.active_adapters
        if len(active) != 1:
            raise ValueError(f"CKT runs one adapter at a time; active adapters: {active}.")
        return active[0]

    def get_bank(self, adapter_name: Optional[str] = None) -> CKTAdapterBank:
        """The adapter bank of `adapter_name` (default: the active adapter)."""
        return self.ckt_layer.ckt_bank[adapter_name or self._active_adapter_name()]

    def attach_teacher(self, teacher: nn.Module, adapter_name: Optional[str] = None) -> None:
        """Attaches (or replaces) the teacher of an adapter, e.g. after loading an adapter trained from a cache."""
        adapter_name = adapter_name or self._active_adapter_name()
        config: CKTConfig = self.peft_config[adapter_name]
        extractor = TeacherFeatureExtractor(teacher, config.teacher_layer)
        inferred = infer_teacher_hidden_size(teacher, extractor.layer)
        _checked_width("teacher", config.teacher_hidden_size, inferred, config.teacher_layer)
        config.attach_teacher(teacher)
        self._ckt_state()["extractors"][adapter_name] = extractor

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        state = self._ckt_state()
        state["extractors"].pop(adapter_name, None)
        state["routes"].pop(adapter_name, None)

    def set_adapter(self, adapter_name: Union[str, list[str]], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(f"CKT runs one adapter at a time; got {names}.")
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def _unload_and_optionally_merge(self, merge: bool = True, *args: Any, **kwargs: Any) -> nn.Module:
        if merge:
            raise ValueError("CKT adds context tokens; it has no weights to merge into the student. Use `unload()`.")
        self._remove_ckt_from_student()
        return self.model

    def unload(self) -> nn.Module:
        """Removes CKT from the student and returns the untouched student."""
        return self._unload_and_optionally_merge(merge=False)

    def _remove_ckt_from_student(self) -> None:
        state = self._ckt_state()
        if state["strip_handle"] is not None:
            state["strip_handle"].remove()
            state["strip_handle"] = None
        if hasattr(self.model, LAYER_NAME):
            delattr(self.model, LAYER_NAME)

    # ------------------------------------------------------------------ teacher -> context
    def extract_teacher_features(
        self, teacher_inputs: Mapping[str, Any], adapter_name: Optional[str] = None
    ) -> torch.Tensor:
        """Runs the frozen teacher up to `teacher_layer` only: `H_T [B, N, d_t]`, detached, on the bank's device
        and dtype."""
        adapter_name = adapter_name or self._active_adapter_name()
        extractor = self._ckt_state()["extractors"].get(adapter_name)
        config: CKTConfig = self.peft_config[adapter_name]
        if extractor is None and isinstance(config.teacher, str) and config.teacher:
            reference = config.teacher, config.teacher_class
            self.attach_teacher(self._load_teacher_reference(config), adapter_name)
            config.teacher, config.teacher_class = reference
            extractor = self._ckt_state()["extractors"][adapter_name]
        if extractor is None:
            raise ValueError(
                f"No teacher is attached to CKT adapter {adapter_name!r}: pass `teacher=` to CKTConfig or to "
                "`PeftModel.from_pretrained`, call `model.attach_teacher(teacher)`, or pass `ckt_context=`."
            )
        features = extractor(teacher_inputs)
        bank = self.get_bank(adapter_name)
        return features.to(device=bank.router.noise_scale.device, dtype=bank.dtype)

    def encode_features(self, teacher_features: torch.Tensor, adapter_name: Optional[str] = None) -> CKTContext:
        """Runs the adapter bank on (live or cached) teacher features `[B, N, d_t]` -> [`CKTContext`]."""
        bank = self.get_bank(adapter_name)
        features = teacher_features.to(device=bank.router.noise_scale.device, dtype=bank.dtype)
        context = bank(features)
        self._ckt_state()["last_context"] = context
        return context

    def encode_teacher(self, teacher_inputs: Mapping[str, Any], adapter_name: Optional[str] = None) -> CKTContext:
        """Teacher (to `teacher_layer`) + adapter bank once -> [`CKTContext`]; reuse it with `ckt_context=` for every
        denoising step of the student."""
        return self.encode_features(self.extract_teacher_features(teacher_inputs, adapter_name), adapter_name)

    def auxiliary_loss(self) -> torch.Tensor:
        """`load_balance_weight * L_bal` of the last forward (already added to `out.loss` when the student returns a
        loss). Zero before any forward."""
        context = self._ckt_state()["last_context"]
        if context is None:
            return torch.zeros(())
        weight = self.peft_config[self._active_adapter_name()].load_balance_weight
        return weight * context.load_balance_loss

    def last_context(self) -> Optional[CKTContext]:
        """The context of the last forward (router probabilities and choices are useful to log)."""
        return self._ckt_state()["last_context"]

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        # Entered by PeftModel around every forward/generate while an adapter is enabled.
        adapter_name = self._active_adapter_name()
        context = kwargs.get("ckt_context")
        teacher_inputs = kwargs.get("teacher_inputs")
        if context is not None:
            if isinstance(context, torch.Tensor):
                context = CKTContext(context, *(torch.empty(0),) * 3, load_balance_loss=torch.zeros(()))
            elif not isinstance(context, CKTContext):
                raise TypeError(f"`ckt_context` must be a CKTContext (from encode_teacher), got {type(context)}.")
            self._ckt_state()["last_context"] = context
        elif teacher_inputs is not None:
            context = self.encode_teacher(teacher_inputs, adapter_name)
        else:
            raise ValueError(
                "The CKT adapter needs the teacher's view of this batch: pass `teacher_inputs={...}` (keyword "
                "arguments of the teacher's forward) or a precomputed `ckt_context=model.encode_teacher(...)`. To run "
                "the student alone, use `with model.disable_adapter():`."
            )
        config: CKTConfig = self.peft_config[adapter_name]
        route = self._ckt_state()["routes"][adapter_name]
        aux_loss = config.load_balance_weight * context.load_balance_loss
        injection = _ForwardInjection(context, route, config.injection, aux_loss)
        handles = [
            self.model.register_forward_pre_hook(injection.before_student, with_kwargs=True),
            self.model.register_forward_hook(injection.after_student, with_kwargs=True),
        ]
        if route.module is not None:
            handles.append(route.module.register_forward_hook(injection.after_target_module))
        patched_validation = self._hide_ckt_kwargs_from_generate()
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            if patched_validation:
                del self.model._validate_model_kwargs

    def _hide_ckt_kwargs_from_generate(self) -> bool:
        # transformers' `generate` rejects kwargs its model does not declare; `teacher_inputs`/`ckt_context` reach it
        # through PeftModel.generate, and the student pre-hook drops them from every forward anyway.
        validate = getattr(self.model, "_validate_model_kwargs", None)
        if validate is None or "_validate_model_kwargs" in vars(self.model):
            return False

        def validate_without_ckt(model_kwargs: dict) -> Any:
            return validate({k: v for k, v in model_kwargs.items() if k not in CKT_FORWARD_KWARGS})

        self.model._validate_model_kwargs = validate_without_ckt
        return True

    # ------------------------------------------------------------------ state dict naming
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # `...ckt.ckt_bank.<adapter>.generalized.down.weight` -> `...ckt.ckt_bank.generalized.down.weight`
        return re.sub(rf"(\.|^)ckt_bank\.{re.escape(adapter_name)}(?=\.|$)", r"\1ckt_bank", key)


def _checked_width(role: str, explicit: Optional[int], inferred: Optional[int], where: str) -> int:
    if explicit is not None and inferred is not None and explicit != inferred:
        raise ValueError(
            f"{role}_hidden_size={explicit} does not match the {role}'s width {inferred} at {where}. Leave "
            f"`{role}_hidden_size=None` to use the inferred width."
        )
    width = explicit if explicit is not None else inferred
    if width is None:
        raise ValueError(
            f"Cannot infer the {role}'s width at {where}: set `{role}_hidden_size` in CKTConfig."
            + (" (No teacher is attached, so its width cannot be read.)" if role == "teacher" else "")
        )
    return width


def _device_of(model: nn.Module) -> Optional[torch.device]:
    for param in model.parameters():
        return param.device
    return None

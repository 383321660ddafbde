"""`CKTModel`: the peft tuner that runs the teacher, the adapter bank, and injects the context into the student."""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import set_additional_trainable_modules
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import CKTConfig
from .injection import (
    InjectionRoute,
    add_placeholder_ids,
    concat_context,
    extend_position_ids,
    infer_student_hidden_size,
    insert_ones,
    is_cached_decoding_step,
    pad_labels,
    replace_placeholders,
    resolve_route,
)
from .layer import MERGE_ERROR, CKTAdapterBank, CKTContext, CKTLayer
from .teacher import TeacherFeatureExtractor, teacher_layer_width
from .teacher_ref import TeacherRef

# Not "ckt_...": peft skips modules whose name contains the method prefix when it walks tuner layers.
LAYER_NAME = "ckt"
# Keyword arguments that belong to CKT, never to the student.
CKT_FORWARD_KWARGS = ("teacher_inputs", "ckt_context")
_NO_CONTEXT_ERROR = (
    "The student ran {where} with its CKT adapter enabled but without the teacher's context (a method of the "
    "student called outside `PeftModel.forward`, e.g. `select_action`). Wrap the call in `with "
    "model.injection_scope(teacher_inputs=...):` (or `ckt_context=`), or use `with model.disable_adapter():` to run "
    "the student alone."
)


class _ForwardInjection:
    """Per-call state: injects one context into every student forward run inside one peft forward/generate."""

    def __init__(self, context: CKTContext, route: InjectionRoute, injection: str, aux_loss: torch.Tensor):
        self.context = context
        self.route = route
        self.injection = injection
        self.aux_loss = aux_loss
        self.num_tokens = context.tokens.shape[1]
        self.inject_module_output = False
        self.replace_module_placeholders = False
        self.prompt_length: Optional[int] = None  # mask length at prefill, where appended tokens sit in the cache
        self.scoped = False  # set by `CKTModel.injection_scope`

    def before_student(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        decoding = is_cached_decoding_step(kwargs)
        route, count = self.route, self.num_tokens
        conditioning_length = None
        if not decoding:
            if route.context_kwarg is not None:
                args, kwargs, conditioning_length = self._inject_kwarg(args, kwargs)
            elif route.embeds_input and kwargs.get("inputs_embeds") is not None:
                # Called with embeddings: the embedding module does not run, and `inputs_embeds` is E_t itself.
                kwargs["inputs_embeds"] = concat_context(kwargs["inputs_embeds"], self.context.tokens, self.injection)
            else:
                if route.embeds_input:
                    args, kwargs = self._add_placeholder_ids(args, kwargs)
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

    def _add_placeholder_ids(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # The embedding of the placeholders is replaced by the context in `after_target_module`.
        route, count = self.route, self.num_tokens
        index = route.input_ids_index
        if isinstance(kwargs.get("input_ids"), torch.Tensor):
            ids = kwargs["input_ids"]
            kwargs["input_ids"] = add_placeholder_ids(ids, count, route.placeholder_token_id, self.injection)
        elif index is not None and len(args) > index and isinstance(args[index], torch.Tensor):
            ids = add_placeholder_ids(args[index], count, route.placeholder_token_id, self.injection)
            args = (*args[:index], ids, *args[index + 1 :])
        else:
            return args, kwargs
        self.replace_module_placeholders = True
        return args, kwargs

    def after_target_module(self, module: nn.Module, args: tuple, output: Any) -> Any:
        # In an injection scope every run of the target module is one pass of the student (e.g. the denoising
        # steps of a policy's `select_action`, which call its submodules, not its forward).
        if not (self.inject_module_output or (self.scoped and not self.route.embeds_input)):
            return output
        self.inject_module_output = False
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"CKT target module `{self.route.module_name}` returned {type(output).__name__}; it must return the "
                "conditioning sequence tensor [B, L, d_s]."
            )
        if self.replace_module_placeholders:
            return replace_placeholders(output, self.context.tokens, self.injection)
        return concat_context(output, self.context.tokens, self.injection)

    def after_student(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self.inject_module_output:
            self.inject_module_output = False
            raise RuntimeError(
                f"CKT's target module `{self.route.module_name}` did not run in this forward of the student, so the "
                "context was not injected. Target the module that produces the conditioning sequence on this call "
                "path (or use `context_kwarg`)."
            )
        # The student's own loss (when it returns one) gets the weighted load-balancing loss: a ModelOutput / dict
        # `loss`, or the scalar first element of a tuple (`return_dict=False`, LeRobot's `(loss, info)`).
        if isinstance(output, tuple) and output and _is_scalar_loss(output[0]):
            return (output[0] + self.aux_loss.to(output[0].dtype), *output[1:])
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            output["loss"] = loss + self.aux_loss.to(loss.dtype)
        return output


def _is_scalar_loss(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point()


def _detached(context: Optional[CKTContext]) -> Optional[CKTContext]:
    if context is None:
        return None
    return dataclasses.replace(
        context, **{f.name: getattr(context, f.name).detach().clone() for f in dataclasses.fields(context)}
    )


class _RuntimeState:
    """What a `CKTModel` keeps besides adapter weights: teacher extractors, injection routes, the last context, the
    student hooks. Deliberately not module state (the teacher is not an adapter weight).

    Copies (`copy.deepcopy` of the model) share the frozen teacher, get their own routes and hooks, and keep the last
    context without its autograd graph (a graph cannot be deep-copied).
    """

    def __init__(self) -> None:
        self.extractors: dict[str, Optional[TeacherFeatureExtractor]] = {}
        self.routes: dict[str, InjectionRoute] = {}
        self.last_context: Optional[CKTContext] = None
        self.last_adapter: Optional[str] = None
        self.student_hooks: list[RemovableHandle] = []
        self.guarded: set[nn.Module] = set()  # target modules carrying the no-context guard
        self.peft_calls = 0  # PeftModel forward/generate calls in progress (they inject through their own hooks)
        self.injecting = 0  # calls and scopes in progress that inject a context (the student's guard checks it)
        self.forwarded = 0  # student methods in progress that PeftModel handed over unchanged (`select_action`...)
        self.scopes = 0  # `injection_scope` blocks open

    def __deepcopy__(self, memo: dict) -> _RuntimeState:
        new = _RuntimeState.__new__(_RuntimeState)
        memo[id(self)] = new
        new.extractors = dict(self.extractors)  # shared: the teacher is frozen and possibly huge
        new.routes = copy.deepcopy(self.routes, memo)
        new.last_context = _detached(self.last_context)
        new.last_adapter = self.last_adapter
        new.student_hooks = copy.deepcopy(self.student_hooks, memo)
        new.guarded = copy.deepcopy(self.guarded, memo)
        new.peft_calls = new.injecting = new.forwarded = new.scopes = 0
        return new

    def __getstate__(self) -> dict:
        return {
            **self.__dict__,
            "last_context": _detached(self.last_context),
            "peft_calls": 0,
            "injecting": 0,
            "forwarded": 0,
        }


def _validate_model_kwargs_without_ckt(self: nn.Module, model_kwargs: dict) -> Any:
    # transformers' `generate` rejects kwargs its model does not declare; `teacher_inputs`/`ckt_context` reach it
    # through PeftModel.generate (with the adapter enabled or not), and the student's pre-hook removes them from
    # every forward.
    kept = {k: v for k, v in model_kwargs.items() if k not in CKT_FORWARD_KWARGS}
    return type(self)._validate_model_kwargs(self, kept)


class CKTModel(BaseTuner):
    """
    Context Knowledge Transfer (CKT) between world action models, as a peft tuner. Build it with
    `peft.get_peft_model(student, CKTConfig(teacher=teacher, ...))`.

    The teacher stays outside the module tree (never saved, never trained); the adapter banks live in a
    [`CKTLayer`] attached to the student as `ckt`. A forward with `teacher_inputs=` runs the teacher up to
    `teacher_layer` (early exit, no autograd), the bank turns `H_T [B, N, d_t]` into a context `[B, 2K(+1), d_s]`,
    and the context is injected into the student's conditioning. With `ckt_context=` (from [`encode_teacher`]) the
    teacher and the bank run once for many student calls (e.g. all denoising steps).

    The student itself also injects: a student given CKT through `peft.inject_adapter_in_model` (no `PeftModel`)
    computes and injects the context when called with `teacher_inputs=` or `ckt_context=`.
    """

    prefix: str = "ckt_"
    tuner_layer_cls = CKTLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ injection (peft's BaseTuner interface)
    def _ckt_state(self) -> _RuntimeState:
        state = self.__dict__.get("_ckt")
        if state is None:
            # Kept out of nn.Module registration: the teacher is not an adapter weight.
            state = self.__dict__["_ckt"] = _RuntimeState()
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
        ref = config.teacher_ref
        teacher = ref.resolve(load=config.teacher_hidden_size is None)
        if teacher is not None:
            config.attach_teacher(ref)  # the loaded module, under the reference the adapter was saved with
        extractor = (
            TeacherFeatureExtractor(teacher, config.teacher_layer, config.teacher_output_index)
            if teacher is not None
            else None
        )
        route = resolve_route(model, config.context_kwarg, config.target_modules)

        inferred_t, certain = (
            teacher_layer_width(teacher, extractor.layer, config.teacher_layer)
            if extractor is not None
            else (None, True)
        )
        saved = getattr(config, "_saved_adapter", None)
        teacher_hidden_size = _checked_width(
            "teacher", config.teacher_hidden_size, inferred_t, config.teacher_layer, saved, certain
        )
        inferred_s = infer_student_hidden_size(model, route)
        student_hidden_size = _checked_width(
            "student", config.student_hidden_size, inferred_s, route.describe(), saved
        )
        if student_hidden_size % config.num_attention_heads:
            raise ValueError(
                f"The student width d_s={student_hidden_size} is not divisible by num_attention_heads="
                f"{config.num_attention_heads}."
            )
        # Saved with the adapter, so it can be rebuilt without inspecting (or even loading) the teacher.
        config.teacher_hidden_size, config.student_hidden_size = teacher_hidden_size, student_hidden_size

        layer = getattr(model, LAYER_NAME, None)
        if layer is not None and not isinstance(layer, CKTLayer):
            raise ValueError(f"The student already has a `{LAYER_NAME}` attribute that is not a CKTLayer.")
        if layer is not None and adapter_name in layer.ckt_bank:
            raise ValueError(f"An adapter named {adapter_name!r} already exists.")
        # Like peft's own methods: the first adapter freezes the student; adding another one keeps the trainability
        # of everything already there (earlier banks, modules_to_save copies).
        existing = [(param, param.requires_grad) for param in model.parameters()] if layer is not None else []
        if layer is None:
            layer = CKTLayer()
            model.add_module(LAYER_NAME, layer)
        device, _ = _student_device_and_dtype(model, route)
        layer.update_layer(
            adapter_name,
            config,
            teacher_hidden_size,
            student_hidden_size,
            device=device,
            low_cpu_mem_usage=low_cpu_mem_usage,
        )
        if not config.inference_mode:
            self._mark_only_adapters_as_trainable(model)
        else:
            model.requires_grad_(False)
        set_additional_trainable_modules(
            model=model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(model),
            adapter_name=adapter_name,
            activate_adapter=adapter_name in self.active_adapters,
        )
        for param, requires_grad in existing:
            param.requires_grad = requires_grad

        state.extractors[adapter_name] = extractor
        state.routes[adapter_name] = route
        self._install_student_hooks(model)
        if route.module is not None and not route.embeds_input and route.module not in state.guarded:
            state.guarded.add(route.module)
            state.student_hooks.append(route.module.register_forward_pre_hook(self._guard_target_module))
        if (route.module_name or LAYER_NAME) not in self.targeted_module_names:
            self.targeted_module_names.append(route.module_name or LAYER_NAME)

    def _install_student_hooks(self, model: nn.Module) -> None:
        """Once per tuner: the student's pre-hook (CKT kwargs never reach its forward; a direct call injects) and, for
        transformers students, `generate` accepting the CKT kwargs (also with the adapter disabled)."""
        state = self._ckt_state()
        if not state.student_hooks:
            state.student_hooks.append(
                model.register_forward_pre_hook(self._student_pre_hook, with_kwargs=True, prepend=True)
            )
        if hasattr(type(model), "_validate_model_kwargs") and "_validate_model_kwargs" not in vars(model):
            model._validate_model_kwargs = types.MethodType(_validate_model_kwargs_without_ckt, model)

    def _remove_student_hooks(self, model: nn.Module) -> None:
        state = self._ckt_state()
        for handle in state.student_hooks:
            handle.remove()
        state.student_hooks.clear()
        state.guarded.clear()
        if "_validate_model_kwargs" in vars(model):
            del model._validate_model_kwargs

    def _student_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        """Permanent on the student: `teacher_inputs`/`ckt_context` never reach its forward. Inside a PeftModel call
        they were already used; with the adapter disabled they are ignored; on a direct call they are used here."""
        if not any(name in kwargs for name in CKT_FORWARD_KWARGS):
            state = self._ckt_state()
            layer = getattr(self.model, LAYER_NAME, None)
            if state.forwarded and not state.injecting and layer is not None and not layer.disable_adapters:
                route = state.routes.get(self._active_adapter_name())
                if route is not None and route.context_kwarg is not None and route.module is None:
                    raise RuntimeError(_NO_CONTEXT_ERROR.format(where="its forward"))
            return None
        ckt_kwargs = {name: kwargs[name] for name in CKT_FORWARD_KWARGS if kwargs.get(name) is not None}
        kwargs = {k: v for k, v in kwargs.items() if k not in CKT_FORWARD_KWARGS}
        layer = getattr(self.model, LAYER_NAME, None)
        if (
            not ckt_kwargs  # e.g. teacher_inputs=None
            or self._ckt_state().peft_calls  # a PeftModel call injects through its own hooks
            or layer is None
            or layer.disable_adapters  # the student alone
            or not self.active_adapters
        ):
            return args, kwargs
        # A direct call of the student (e.g. after `inject_adapter_in_model`): inject here, for this call only.
        if is_cached_decoding_step(kwargs):
            raise ValueError(
                "A student given CKT with `inject_adapter_in_model` cannot `generate()`: the context must be added "
                "once and tracked over the decoding steps. Use `get_peft_model` (or `PeftModel.from_pretrained`) and "
                "call `generate` on the PeftModel."
            )
        adapter_name = self._active_adapter_name()
        injection = self._make_injection(adapter_name, ckt_kwargs.get("ckt_context"), ckt_kwargs.get("teacher_inputs"))
        handles: list[RemovableHandle] = []
        if injection.route.module is not None:
            handles.append(injection.route.module.register_forward_hook(injection.after_target_module))

        state = self._ckt_state()
        state.injecting += 1

        def finish(student: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            state.injecting -= 1
            for handle in handles:
                handle.remove()
            # `output` is None when the forward raised (this hook always runs): nothing to add to.
            return output if output is None else injection.after_student(student, args, kwargs, output)

        handles.append(module.register_forward_hook(finish, with_kwargs=True, always_call=True))
        return injection.before_student(module, args, kwargs)

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

    def attach_teacher(self, teacher: Union[nn.Module, TeacherRef], adapter_name: Optional[str] = None) -> None:
        """Attaches (or replaces) the teacher of an adapter, e.g. after loading an adapter trained from a cache. A
        loaded [`TeacherRef`] keeps its stored reference; a module records its own name/path and class."""
        adapter_name = adapter_name or self._active_adapter_name()
        config: CKTConfig = self.peft_config[adapter_name]
        module = teacher.module if isinstance(teacher, TeacherRef) else teacher
        if isinstance(teacher, TeacherRef) and module is None:
            raise TypeError("The TeacherRef holds no module: call `load()` on it first.")
        extractor = TeacherFeatureExtractor(module, config.teacher_layer, config.teacher_output_index)
        inferred, certain = teacher_layer_width(module, extractor.layer, config.teacher_layer)
        saved = getattr(config, "_saved_adapter", None)
        _checked_width("teacher", config.teacher_hidden_size, inferred, config.teacher_layer, saved, certain)
        config.attach_teacher(teacher)
        self._ckt_state().extractors[adapter_name] = extractor

    def teacher_module(self, adapter_name: Optional[str] = None, load: bool = True) -> Optional[nn.Module]:
        """The teacher of an adapter (default: the active one). A stored reference (Hub id / local folder) is
        trust-checked, loaded and attached when `load` (it is otherwise loaded on first use); `None` when the adapter
        has no teacher (e.g. trained from cached features)."""
        adapter_name = adapter_name or self._active_adapter_name()
        config: CKTConfig = self.peft_config[adapter_name]
        ref = config.teacher_ref
        if self._ckt_state().extractors.get(adapter_name) is None and ref.resolve(load=load) is not None:
            self.attach_teacher(ref, adapter_name)
        return ref.module

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        state = self._ckt_state()
        state.extractors.pop(adapter_name, None)
        state.routes.pop(adapter_name, None)

    def set_adapter(self, adapter_name: Union[str, list[str]], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(f"CKT runs one adapter at a time; got {names}.")
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """With `autocast_adapter_dtype=True` (peft's default) a bank in fp16/bf16 is upcast to fp32 (new banks are
        created in fp32); with `False` the bank takes the student's dtype, as peft's other methods do."""
        if autocast_adapter_dtype:
            super()._cast_adapter_dtype(adapter_name=adapter_name, autocast_adapter_dtype=True)
            return
        layer = getattr(self.model, LAYER_NAME, None)
        if layer is None or adapter_name not in layer.ckt_bank:
            return
        _, dtype = _student_device_and_dtype(self.model, self._ckt_state().routes.get(adapter_name))
        if dtype is not None:
            layer.ckt_bank[adapter_name] = layer.ckt_bank[adapter_name].to(dtype)

    # ------------------------------------------------------------------ unload / merge
    def _check_merge_allowed(self) -> None:
        raise ValueError(MERGE_ERROR.format(method="merge"))

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        raise ValueError(MERGE_ERROR.format(method="merge_adapter"))

    def unmerge_adapter(self) -> None:
        raise ValueError(MERGE_ERROR.format(method="unmerge_adapter"))

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(
            MERGE_ERROR.format(method="add_weighted_adapter")
            + " Adapter banks of different adapters cannot be combined into one either: run them one at a time."
        )

    def _unload_and_optionally_merge(self, merge: bool = True, *args: Any, **kwargs: Any) -> nn.Module:
        if merge:
            raise ValueError(MERGE_ERROR.format(method="merge_and_unload"))
        self._remove_student_hooks(self.model)
        if hasattr(self.model, LAYER_NAME):
            delattr(self.model, LAYER_NAME)
        state = self._ckt_state()
        state.extractors.clear()
        state.routes.clear()
        state.last_context = None
        # peft's generic part: restores `modules_to_save` wrappers and removes `peft_config` from the student.
        return super()._unload_and_optionally_merge(merge=False)

    def unload(self) -> nn.Module:
        """Removes CKT from the student and returns the untouched student (its original modules, no hooks, no
        `peft_config`)."""
        return self._unload_and_optionally_merge(merge=False)

    # ------------------------------------------------------------------ teacher -> context
    def extract_teacher_features(
        self, teacher_inputs: Mapping[str, Any], adapter_name: Optional[str] = None
    ) -> torch.Tensor:
        """Runs the frozen teacher up to `teacher_layer` only: `H_T [B, N, d_t]`, detached, on the bank's device
        and dtype."""
        adapter_name = adapter_name or self._active_adapter_name()
        config: CKTConfig = self.peft_config[adapter_name]
        if self._ckt_state().extractors.get(adapter_name) is None:
            self.teacher_module(adapter_name, load=True)  # a stored reference is loaded on first use
        extractor = self._ckt_state().extractors.get(adapter_name)
        if extractor is None:
            raise ValueError(
                f"No teacher is attached to CKT adapter {adapter_name!r}: pass `teacher=` to CKTConfig or to "
                "`PeftModel.from_pretrained`, call `model.attach_teacher(teacher)`, or pass `ckt_context=`."
            )
        features = extractor(teacher_inputs)
        if config.teacher_sequence_first:  # [N, B, d_t] (e.g. ACT's encoder) -> [B, N, d_t]
            features = features.transpose(0, 1)
        bank = self.get_bank(adapter_name)
        return features.to(device=bank.device, dtype=bank.dtype)

    def encode_features(self, teacher_features: torch.Tensor, adapter_name: Optional[str] = None) -> CKTContext:
        """Runs the adapter bank on (live or cached) teacher features `[B, N, d_t]` -> [`CKTContext`]."""
        adapter_name = adapter_name or self._active_adapter_name()
        bank = self.get_bank(adapter_name)
        features = teacher_features.to(device=bank.device, dtype=bank.dtype)
        # NaN/inf would spread silently through the softmax into every token of the context; one sync per
        # observation (the bank syncs once anyway).
        if isinstance(features, torch.Tensor) and features.is_floating_point() and not torch.compiler.is_compiling():
            if not bool(torch.isfinite(features).all()):
                raise ValueError(
                    "The teacher features given to the CKT adapter bank hold NaN or inf values; check the teacher's "
                    "inputs, its dtype (fp16 overflow) or the feature cache."
                )
        context = bank(features)
        self._remember(context, adapter_name)
        return context

    def encode_teacher(self, teacher_inputs: Mapping[str, Any], adapter_name: Optional[str] = None) -> CKTContext:
        """Teacher (to `teacher_layer`) + adapter bank once -> [`CKTContext`]; reuse it with `ckt_context=` for every
        denoising step of the student."""
        return self.encode_features(self.extract_teacher_features(teacher_inputs, adapter_name), adapter_name)

    def _remember(self, context: CKTContext, adapter_name: str) -> None:
        state = self._ckt_state()
        state.last_context, state.last_adapter = context, adapter_name

    def auxiliary_loss(self) -> torch.Tensor:
        """`load_balance_weight * L_bal` of the last forward (already added to `out.loss` when the student returns a
        loss). Zero before any forward."""
        state = self._ckt_state()
        if state.last_context is None:
            return torch.zeros(())
        adapter_name = state.last_adapter if state.last_adapter in self.peft_config else self._active_adapter_name()
        return self.peft_config[adapter_name].load_balance_weight * state.last_context.load_balance_loss

    def last_context(self) -> Optional[CKTContext]:
        """The context of the last forward (router probabilities and choices are useful to log)."""
        return self._ckt_state().last_context

    def _adapter_for_call(self, adapter_names: Any) -> Optional[str]:
        """The adapter of one forward: the active one, or the single name of `adapter_names` (`None` for peft's
        `"__base__"`: the student alone). A batch mixing adapters is refused."""
        if adapter_names is None:
            return self._active_adapter_name()
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        if len(names) != 1:
            raise ValueError(
                "CKT runs one adapter per forward: the context comes from one adapter bank for the whole batch, so a "
                f"mixed batch (`adapter_names` with {sorted(names)}) is not supported. Split the batch by adapter and "
                "call `set_adapter(name)` for each part (or pass one name for the whole batch)."
            )
        (name,) = names
        if name == "__base__":
            return None
        if name not in self.peft_config:
            raise ValueError(f"Unknown adapter {name!r} in `adapter_names`; adapters: {list(self.peft_config)}.")
        return name

    def _make_injection(
        self, adapter_name: str, context: Optional[Any], teacher_inputs: Optional[Mapping[str, Any]]
    ) -> _ForwardInjection:
        """The context of one call (given, or teacher + bank now) and how it enters the student."""
        if context is not None:
            if isinstance(context, torch.Tensor):
                self._check_context_tokens(context, adapter_name)
                context = CKTContext(context, *(torch.empty(0),) * 3, load_balance_loss=torch.zeros(()))
            elif not isinstance(context, CKTContext):
                raise TypeError(f"`ckt_context` must be a CKTContext (from encode_teacher), got {type(context)}.")
            else:
                self._check_context_tokens(context.tokens, adapter_name)
            self._remember(context, adapter_name)
        elif teacher_inputs is not None:
            context = self.encode_teacher(teacher_inputs, adapter_name)
        else:
            raise ValueError(
                "The CKT adapter needs the teacher's view of this batch: pass `teacher_inputs={...}` (keyword "
                "arguments of the teacher's forward) or a precomputed `ckt_context=model.encode_teacher(...)`. To run "
                "the student alone, use `with model.disable_adapter():`."
            )
        config: CKTConfig = self.peft_config[adapter_name]
        route = self._ckt_state().routes[adapter_name]
        aux_loss = config.load_balance_weight * context.load_balance_loss
        return _ForwardInjection(context, route, config.injection, aux_loss)

    def _check_context_tokens(self, tokens: Any, adapter_name: str) -> None:
        """A given context must be a floating `[B, 2K(+1), d_s]` tensor holding data. Metadata only: no host-device
        sync on the per-denoising-step path (its values were checked where they were made)."""
        config: CKTConfig = self.peft_config[adapter_name]
        length = config.context_length
        width = self.get_bank(adapter_name).student_hidden_size
        if (
            not isinstance(tokens, torch.Tensor)
            or tokens.ndim != 3
            or tuple(tokens.shape[1:]) != (length, width)
            or not tokens.is_floating_point()
            or tokens.device.type == "meta"
        ):
            got = (
                f"a {tokens.dtype} tensor of shape {list(tokens.shape)} on {tokens.device}"
                if isinstance(tokens, torch.Tensor)
                else type(tokens).__name__
            )
            raise ValueError(
                f"`ckt_context` must be a floating-point tensor [B, 2K(+1), d_s] = [B, {length}, {width}] holding data "
                f"(e.g. `model.encode_teacher(...)`), got {got}."
            )
        # Values are checked once per tensor: a context this model made (the remembered one) was checked from its
        # features, so the per-denoising-step path does not sync again.
        last = self._ckt_state().last_context
        if (last is None or last.tokens is not tokens) and not torch.compiler.is_compiling():
            if not bool(torch.isfinite(tokens).all()):
                raise ValueError(
                    "`ckt_context` holds NaN or inf values; recompute it with `model.encode_teacher(...)`."
                )

    @contextmanager
    def _injecting(self, injection: Optional[_ForwardInjection], peft_call: bool = False) -> Iterator[None]:
        """Hooks that inject `injection` into every student forward (and target-module run) inside the block."""
        state = self._ckt_state()
        handles = []
        if injection is not None:
            handles = [
                self.model.register_forward_pre_hook(injection.before_student, with_kwargs=True),
                self.model.register_forward_hook(injection.after_student, with_kwargs=True),
            ]
            if injection.route.module is not None:
                handles.append(injection.route.module.register_forward_hook(injection.after_target_module))
        state.peft_calls += peft_call
        state.injecting += 1
        try:
            yield
        finally:
            state.peft_calls -= peft_call
            state.injecting -= 1
            for handle in handles:
                handle.remove()

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        # Entered by PeftModel around every forward/generate while an adapter is enabled.
        adapter_name = self._adapter_for_call(kwargs.get("adapter_names"))
        injection = None
        if self._ckt_state().scopes:
            # Inside `injection_scope`: the scope's hooks inject; a second context would be appended twice.
            if any(kwargs.get(name) is not None for name in CKT_FORWARD_KWARGS):
                raise ValueError(
                    "This call passes `teacher_inputs`/`ckt_context` inside `injection_scope`, which already injects "
                    "its context: pass them to one of the two."
                )
        elif adapter_name is not None:
            injection = self._make_injection(adapter_name, kwargs.get("ckt_context"), kwargs.get("teacher_inputs"))
        with self._injecting(injection, peft_call=True):
            yield

    @contextmanager
    def injection_scope(
        self,
        teacher_inputs: Optional[Mapping[str, Any]] = None,
        ckt_context: Optional[Any] = None,
        adapter_name: Optional[str] = None,
    ) -> Iterator[CKTContext]:
        """Injects one context into every run of the student inside the block, also where peft does not wrap the
        call: methods of the student that `PeftModel` hands to the base model unchanged (a LeRobot policy's
        `select_action` / `predict_action_chunk`, a sampler calling the student's submodules).

        The teacher and the bank run once, on entry (or `ckt_context` is used as given), so every denoising step of
        one predicted chunk sees the same context. With a `target_modules` route every run of the target module
        gets the context; with a `context_kwarg` route every call of the student's forward does. Outside a scope,
        a student with an enabled CKT adapter that runs without a context raises instead of silently running
        alone.

        Example:
            with model.injection_scope(teacher_inputs=teacher_batch) as context:
                actions = model.select_action(batch)
        """
        adapter_name = adapter_name or self._active_adapter_name()
        injection = self._make_injection(adapter_name, ckt_context, teacher_inputs)
        injection.scoped = True
        state = self._ckt_state()
        state.scopes += 1
        try:
            with self._injecting(injection):
                yield injection.context
        finally:
            state.scopes -= 1

    def __getattr__(self, name: str) -> Any:
        # PeftModel hands unknown attributes to this tuner, which hands them to the student. A student method reached
        # that way (a LeRobot policy's `select_action`) runs guarded: the student must not run in it without a
        # context (`_guard_target_module`, `_student_pre_hook`). Direct calls of the student stay as they are.
        attr = super().__getattr__(name)
        if not isinstance(attr, types.MethodType) or attr.__self__ is not self.__dict__["_modules"].get("model"):
            return attr
        state = self._ckt_state()

        @functools.wraps(attr)
        def forwarded(*args: Any, **kwargs: Any) -> Any:
            state.forwarded += 1
            try:
                return attr(*args, **kwargs)
            finally:
                state.forwarded -= 1

        return forwarded

    def _guard_target_module(self, module: nn.Module, args: tuple) -> None:
        """Permanent on a target module: inside a forwarded student method, it must not run with an enabled adapter
        and no context being injected."""
        state = self._ckt_state()
        layer = getattr(self.model, LAYER_NAME, None)
        if not state.forwarded or state.injecting or layer is None or layer.disable_adapters:
            return
        route = state.routes.get(self._active_adapter_name())
        if route is not None and route.module is module:
            raise RuntimeError(_NO_CONTEXT_ERROR.format(where=f"its target module `{route.module_name}`"))

    # ------------------------------------------------------------------ state dict naming
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # `...ckt.ckt_bank.<adapter>.generalized.down.weight` -> `...ckt.ckt_bank.generalized.down.weight`
        return re.sub(rf"(\.|^)ckt_bank\.{re.escape(adapter_name)}(?=\.|$)", r"\1ckt_bank", key)


def _checked_width(
    role: str,
    explicit: Optional[int],
    inferred: Optional[int],
    where: str,
    saved_adapter: Optional[str] = None,
    certain: bool = True,
) -> int:
    """The width to build the bank with. An explicit width must match a certain inferred one; it overrides a guess
    (the bank then checks the real width on the first call)."""
    if explicit is not None and inferred is not None and explicit != inferred and certain:
        if saved_adapter is not None:  # the width is the saved adapter's, not a setting the user can leave out
            raise ValueError(
                f"The CKT adapter {saved_adapter} was trained for a {role} of width {explicit} ({role}_hidden_size), "
                f"and this {role} has width {inferred} at {where}: load it onto the {role} it was trained with."
            )
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


def _student_device_and_dtype(
    model: nn.Module, route: Optional[InjectionRoute]
) -> tuple[Optional[torch.device], Optional[torch.dtype]]:
    """Device and floating dtype of the student where the context enters (its target module, else the student),
    ignoring CKT's own weights."""
    for owner in (route.module if route is not None else None, model):
        if owner is None:
            continue
        for name, param in owner.named_parameters():
            if owner is model and (name == LAYER_NAME or name.startswith(LAYER_NAME + ".")):
                continue
            if param.is_floating_point():
                return param.device, param.dtype
    return None, None

"""Configuration of CKT (Context Knowledge Transfer) adapters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from peft.config import PeftConfig
from peft.utils import PeftType
from torch import nn

from .teacher_ref import TeacherRef

INJECTION_MODES = ("append", "prepend")


@dataclass
class CKTConfig(PeftConfig):
    """
    Configuration of a [`CKTModel`]: a frozen teacher world action model (WAM) transfers what it knows into a frozen
    student WAM through a short learned context.

    A few learned query tokens compress the output of one intermediate teacher layer (`H_T [B, N, d_t]`), an
    always-on adapter plus a router over sparse expert adapters turn it into a context `C_A [B, 2K, d_s]`, and the
    context (after a separator token) is appended to (or prepended before) the student's conditioning sequence.

    Args:
        teacher (`nn.Module` or `str`, *optional*):
            The frozen teacher, or a Hub id / local folder to load it from (with the class named in `teacher_class`).
            A module is kept by reference and never serialized: `adapter_config.json` stores its name or path.
        teacher_layer (`str`):
            Dotted path of the teacher module whose output is `H_T`, e.g. `"blocks.20"`. Later blocks never run.
        teacher_output_index (`int`, *optional*):
            When `teacher_layer` returns a tuple: the element that is `H_T` (a tuple is refused without it).
        teacher_sequence_first (`bool`):
            `teacher_layer` returns `[N, B, d_t]` (sequence first, e.g. the `nn.MultiheadAttention` encoder layers of
            LeRobot's ACT) rather than `[B, N, d_t]`; the features are transposed before the bank.
        context_kwarg (`str`, *optional*):
            Keyword argument of the student's `forward` that carries the conditioning `E_t [B, L, d_s]`, e.g.
            `"encoder_hidden_states"` or `"inputs_embeds"`.
        target_modules (`str` or `list[str]`, *optional*):
            Alternatively, the student module (exact name or name suffix) whose output is `E_t`, e.g.
            `"embed_tokens"`. Takes precedence over `context_kwarg` when set.
        injection (`"append"` or `"prepend"`):
            `[E_t ; <SEP> ; C_A]` (the paper's choice) or `[C_A ; <SEP> ; E_t]` (natural for causal LMs).
        modules_to_save (`list[str]`, *optional*):
            Student modules trained fully and saved with the adapter (as for peft's other methods), e.g. a new
            classification head.
    """

    teacher: Optional[Union[str, Any]] = field(
        default=None,
        metadata={
            "help": "The frozen teacher model (an nn.Module, kept by reference) or a Hub id / local path to load it "
            "from. Only its name or path is saved."
        },
    )
    teacher_class: Optional[str] = field(
        default=None,
        metadata={
            "help": "Import path ('package.module.Class') of the teacher's class, used to load it by reference. "
            "Filled in automatically from a teacher module."
        },
    )
    teacher_layer: str = field(
        default="blocks.20",
        metadata={"help": "Dotted path of the teacher module whose output H_T [B, N, d_t] is transferred."},
    )
    teacher_output_index: Optional[int] = field(
        default=None,
        metadata={
            "help": "Element of the teacher layer's output that is H_T, when that module returns a tuple (e.g. 0 for "
            "a block returning `(hidden_states, ...)`). A tuple output is refused while this is None."
        },
    )
    teacher_sequence_first: bool = field(
        default=False,
        metadata={
            "help": "The teacher layer's output is sequence-first [N, B, d_t] (e.g. ACT's encoder layers) instead of "
            "[B, N, d_t]; it is transposed to batch-first before the adapter bank."
        },
    )
    context_kwarg: Optional[str] = field(
        default="encoder_hidden_states",
        metadata={"help": "Student forward kwarg that carries the conditioning sequence E_t [B, L, d_s]."},
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Student module name(s) whose output is the conditioning sequence E_t (e.g. 'embed_tokens'). "
            "Takes precedence over `context_kwarg` when set."
        },
    )
    injection: Literal["append", "prepend"] = field(
        default="append",
        metadata={"help": "'append': [E_t; <SEP>; C_A] (paper). 'prepend': [C_A; <SEP>; E_t] (causal LMs)."},
    )
    num_context_tokens: int = field(
        default=32, metadata={"help": "K: learned query tokens per adapter branch (the context has 2K tokens)."}
    )
    num_experts: int = field(default=8, metadata={"help": "M: number of specialized (sparse expert) adapters."})
    top_k: int = field(default=2, metadata={"help": "Specialized adapters run per sample (top-k of the router)."})
    bottleneck_dim: int = field(default=512, metadata={"help": "d_b: bottleneck width of each adapter branch."})
    router_hidden_dim: int = field(default=512, metadata={"help": "Hidden width of the router MLP."})
    num_attention_heads: int = field(
        default=8, metadata={"help": "Heads of the learnable-query cross-attention (must divide d_s)."}
    )
    adapter_dropout: float = field(default=0.1, metadata={"help": "Dropout after each branch's bottleneck MLP."})
    attention_dropout: float = field(
        default=0.1,
        metadata={
            "help": "Dropout on the attention weights of each branch's learnable-query cross-attention, in training "
            "(the paper's nn.MultiheadAttention(dropout=0.1)). Adapters saved before this field load with 0.1."
        },
    )
    router_noise: bool = field(
        default=True, metadata={"help": "Add learned-scale Gaussian noise to the router logits in training."}
    )
    use_separator: bool = field(
        default=True, metadata={"help": "Insert a learned <SEP> token between the conditioning and the context."}
    )
    load_balance_weight: float = field(
        default=0.01,
        metadata={
            "help": "Weight of the load-balancing loss L_bal added to the student's loss (0: the paper's 'no "
            "auxiliary loss' ablation)."
        },
    )
    zero_idle_expert_grads: bool = field(
        default=False,
        metadata={
            "help": "Give a specialized adapter that no sample of the batch picked a zero gradient instead of none "
            "(`.grad is None`), as the authors' code does by running every expert. Costs one tiny extra term per "
            "idle expert; useful with optimizers or gradient checks that expect every trainable parameter to have a "
            "gradient."
        },
    )
    use_generalized_adapter: bool = field(
        default=True,
        metadata={
            "help": "Keep the always-on generalized adapter (C_g). False is the paper's 'no generalized adapter' "
            "ablation: the context is the routed C_s only (K tokens)."
        },
    )
    use_specialized_adapters: bool = field(
        default=True,
        metadata={
            "help": "Keep the router and the M specialized adapters (C_s). False is the paper's 'no specialized "
            "adapters' ablation: the context is C_g only (K tokens), with no router and no L_bal."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Student modules trained fully and saved with the adapter besides the CKT weights, e.g. a new "
            "classification head. `task_type='SEQ_CLS'` adds the usual head names ('classifier', 'score')."
        },
    )
    teacher_hidden_size: Optional[int] = field(
        default=None, metadata={"help": "d_t, width of H_T. Inferred from the teacher when None."}
    )
    student_hidden_size: Optional[int] = field(
        default=None, metadata={"help": "d_s, width of E_t. Inferred from the student when None."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.CKT
        self._teacher_ref: Optional[TeacherRef] = None
        if isinstance(self.teacher, nn.Module):
            self.attach_teacher(self.teacher)
        elif self.teacher is not None and not isinstance(self.teacher, str):
            raise TypeError(
                f"`teacher` must be an nn.Module or a Hub id / local path (str), got {type(self.teacher).__name__}."
            )

        if not isinstance(self.teacher_layer, str) or not self.teacher_layer.strip():
            raise ValueError("`teacher_layer` must be the dotted path of a teacher module, e.g. 'blocks.20'.")
        if self.teacher_output_index is not None and (
            not isinstance(self.teacher_output_index, int) or isinstance(self.teacher_output_index, bool)
        ):
            raise ValueError(
                f"`teacher_output_index` must be an integer (the tuple element holding H_T) or None, got "
                f"{self.teacher_output_index!r}."
            )
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        elif self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                self.target_modules = None
        if self.target_modules is None and not self.context_kwarg:
            raise ValueError(
                "CKT needs to know where the student's conditioning enters: set `context_kwarg` (e.g. "
                "'encoder_hidden_states') or `target_modules` (e.g. 'embed_tokens')."
            )
        if self.injection not in INJECTION_MODES:
            raise ValueError(f"`injection` must be one of {INJECTION_MODES}, got {self.injection!r}.")
        for name in ("num_context_tokens", "num_experts", "top_k", "bottleneck_dim", "router_hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.top_k > self.num_experts:
            raise ValueError(
                f"`top_k` ({self.top_k}) cannot be larger than `num_experts` ({self.num_experts}): each sample runs "
                "its top-k specialized adapters."
            )
        if not isinstance(self.num_attention_heads, int) or self.num_attention_heads < 1:
            raise ValueError(f"`num_attention_heads` must be a positive integer, got {self.num_attention_heads!r}.")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"`adapter_dropout` must be in [0, 1), got {self.adapter_dropout}.")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"`attention_dropout` must be in [0, 1), got {self.attention_dropout}.")
        if not (self.use_generalized_adapter or self.use_specialized_adapters):
            raise ValueError(
                "`use_generalized_adapter` and `use_specialized_adapters` cannot both be False: the context would "
                "be empty."
            )
        # NaN passes `< 0` and inf would swamp the student's loss: both refused by name.
        if not (math.isfinite(self.load_balance_weight) and self.load_balance_weight >= 0):
            raise ValueError(f"`load_balance_weight` must be a finite number >= 0, got {self.load_balance_weight}.")
        for name in ("teacher_hidden_size", "student_hidden_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer or None, got {value!r}.")
        if self.student_hidden_size is not None and self.student_hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`student_hidden_size` ({self.student_hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )

    # The teacher module is state of the running process, not of the config file.
    @property
    def context_length(self) -> int:
        """Tokens of the context appended to the student: K per branch present (generalized, specialized), + 1
        for `<SEP>`: `2K + 1` for the full bank."""
        branches = int(self.use_generalized_adapter) + int(self.use_specialized_adapters)
        return branches * self.num_context_tokens + int(self.use_separator)

    @property
    def teacher_ref(self) -> TeacherRef:
        """The teacher as one [`TeacherRef`]: the attached module (never serialized) and the reference that
        `adapter_config.json` stores. The `teacher`/`teacher_class` fields are that stored reference, so the ref
        mirrors them; attach or load a teacher through `CKTModel.attach_teacher` / `CKTModel.teacher_module`."""
        if isinstance(self.teacher, nn.Module):  # set on the config after construction
            self.attach_teacher(self.teacher)
        ref = getattr(self, "_teacher_ref", None)
        if ref is None:
            ref = self._teacher_ref = TeacherRef()
        ref.name, ref.teacher_class = self.teacher or None, self.teacher_class
        ref.trust_remote_code = self.trust_remote_code
        return ref

    @property
    def teacher_module(self) -> Optional[nn.Module]:
        """The attached teacher module, if any (never serialized)."""
        ref = getattr(self, "_teacher_ref", None)
        return ref.module if ref is not None else None

    def attach_teacher(self, teacher: Union[nn.Module, TeacherRef]) -> None:
        """Keeps a teacher module by reference and records its name/path and class for `adapter_config.json`; a
        [`TeacherRef`] is kept as it is (e.g. one just loaded from the stored reference, which it keeps)."""
        if not isinstance(teacher, (nn.Module, TeacherRef)):
            raise TypeError(f"The teacher must be an nn.Module, got {type(teacher).__name__}.")
        ref = teacher if isinstance(teacher, TeacherRef) else TeacherRef(teacher)
        if ref.module is None:
            raise TypeError("The TeacherRef holds no module: call `load()` on it first.")
        self._teacher_ref = ref
        self.teacher, self.teacher_class = ref.name, ref.teacher_class

    # Not a dataclass field, so never read from nor written to `adapter_config.json`: only the user can set it.
    @property
    def trust_remote_code(self) -> bool:
        """Whether a stored teacher reference may name a class outside diffusers, transformers, peft_ckt, lerobot and
        the allow-list (`peft_ckt.trust_teacher_classes`), and be read from pickle weights (both can run arbitrary
        code). Default False; set by `PeftModel.from_pretrained(..., trust_remote_code=True)` or directly on the
        config."""
        return bool(getattr(self, "_trust_remote_code", False))

    @trust_remote_code.setter
    def trust_remote_code(self, value: bool) -> None:
        self._trust_remote_code = bool(value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        # peft lets saved values win over keyword arguments; a teacher passed at load time must win instead.
        teacher = kwargs.pop("teacher", None)
        trust_remote_code = kwargs.pop("trust_remote_code", False)
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        if not isinstance(config, CKTConfig):  # peft builds whatever class the file's `peft_type` names
            peft_type = getattr(config.peft_type, "value", config.peft_type)
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {peft_type} adapter ({type(config).__name__}), not a CKT "
                f"adapter: its adapter_config.json says peft_type={peft_type!r}."
            )
        # Widths checked against the models later are then reported as those the saved adapter was trained for.
        config._saved_adapter = str(pretrained_model_name_or_path)
        config.trust_remote_code = trust_remote_code
        if isinstance(teacher, nn.Module):
            config.attach_teacher(teacher)
        elif isinstance(teacher, str):
            config.teacher, config._teacher_ref = teacher, None
        elif teacher is not None:
            raise TypeError(f"`teacher` must be an nn.Module or a str, got {type(teacher).__name__}.")
        return config

"""`TeacherRef`: the one object that knows a CKT adapter's teacher, from reference to loaded, attached module.

A teacher is given as an `nn.Module`, a local folder or a Hub id. `adapter_config.json` stores only the reference
(`teacher`: name or path, `teacher_class`: "package.module.Class"), never the module. Loading a stored reference is
trust-checked first: a class outside diffusers/transformers/peft_ckt/lerobot and the user's allow-list
(`peft_ckt.trust_teacher_classes`, `PEFT_CKT_TRUSTED_TEACHERS`) is not imported, and a folder with only pickle weights
is not read, unless `trust_remote_code=True`. The allow-list trusts code only: it never allows pickle weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from .teacher import check_safetensors_folder, check_trusted_teacher_class, load_teacher

# The opt-in named by the trust errors of an adapter's stored teacher reference.
ADAPTER_OPT_IN = (
    "`trust_remote_code=True` to `PeftModel.from_pretrained` (or set `config.trust_remote_code = True`), "
    "or load the teacher yourself and pass `teacher=`"
)
# `what` of the pickle-weights refusal, whoever checks the folder.
TEACHER_FOLDER = "The CKT teacher folder"


def module_reference(module: nn.Module) -> tuple[Optional[str], str]:
    """Returns `(name_or_path, "package.module.Class")` of a model, the name being `None` when the model was not
    loaded from a Hub id or a folder (e.g. built from a config). LeRobot policies have no `name_or_path`: theirs is
    `config.pretrained_path`."""
    config = getattr(module, "config", None)
    name = (
        getattr(module, "name_or_path", None)
        or getattr(config, "_name_or_path", None)
        or getattr(config, "pretrained_path", None)
    )
    if name is None and isinstance(config, dict):  # diffusers' FrozenDict config
        name = config.get("_name_or_path")
    cls = type(module)
    return (str(name) if name else None), f"{cls.__module__}.{cls.__qualname__}"


class TeacherRef:
    """A CKT teacher: its stored reference (`name`, `teacher_class`) and, once attached or loaded, its module.

    Args:
        teacher: an `nn.Module` (attached now; its name/path and class are recorded), a Hub id or local folder
            (loaded on [`load`]), another `TeacherRef` (copied), or `None` (no teacher yet).
        teacher_class: "package.module.Class" used to load a reference; read from the folder's `config.json` when
            `None`. Ignored for a module (its own class is recorded).
        trust_remote_code: allow a class outside diffusers/transformers/peft_ckt/lerobot and the allow-list (see
            `peft_ckt.trust_teacher_classes`), and pickle weights (both can run arbitrary code). Never stored in
            `adapter_config.json`.

    Copies (`copy.copy` / `copy.deepcopy`, e.g. of a config or a peft model) share the module (frozen, possibly
    14B) but not the reference: attaching another teacher to a copy leaves the original as it was. Not an
    `nn.Module`: the teacher must never become a submodule of a peft model (peft treats those as adapter weights).

    Example:
        ```python
        ref = TeacherRef("path/to/wan_teacher")      # nothing read yet
        ref.check()                                  # trust checks only (no import, no weights read)
        teacher = ref.load()                         # check + load + attach; `ref.module is teacher`
        ref.to_config_dict()                         # {"teacher": "path/to/wan_teacher", "teacher_class": "diffusers...."}
        ```
    """

    __slots__ = ("module", "name", "teacher_class", "trust_remote_code")

    def __init__(
        self,
        teacher: Union[nn.Module, str, TeacherRef, None] = None,
        teacher_class: Optional[str] = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.module: Optional[nn.Module] = None
        self.name: Optional[str] = None
        self.teacher_class: Optional[str] = None
        self.trust_remote_code = bool(trust_remote_code)
        if isinstance(teacher, TeacherRef):
            self.module, self.name, self.teacher_class = teacher.module, teacher.name, teacher.teacher_class
            self.trust_remote_code = teacher.trust_remote_code or self.trust_remote_code
        elif isinstance(teacher, nn.Module):
            self.attach(teacher)
        elif teacher is None or isinstance(teacher, str):
            self.name, self.teacher_class = teacher or None, teacher_class
        else:
            raise TypeError(
                f"`teacher` must be an nn.Module or a Hub id / local path (str), got {type(teacher).__name__}."
            )

    # ------------------------------------------------------------------ stored form
    @classmethod
    def from_config_dict(cls, values: dict[str, Any], trust_remote_code: bool = False) -> TeacherRef:
        """The reference stored in an `adapter_config.json` dict (its `teacher` and `teacher_class` keys); a
        `teacher` that is not a non-empty string gives an empty reference."""
        name, teacher_class = values.get("teacher"), values.get("teacher_class")
        if not (isinstance(name, str) and name):
            return cls(trust_remote_code=trust_remote_code)
        return cls(name, str(teacher_class) if teacher_class else None, trust_remote_code=trust_remote_code)

    @classmethod
    def from_adapter_folder(cls, path: Union[str, os.PathLike], trust_remote_code: bool = False) -> TeacherRef:
        """The reference stored in a saved adapter: `path` is its folder or its `adapter_config.json`. Reads only
        that JSON file (nothing is imported)."""
        path = Path(path)
        config_file = path / "adapter_config.json" if path.is_dir() else path
        return cls.from_config_dict(json.loads(config_file.read_text()), trust_remote_code=trust_remote_code)

    def to_config_dict(self) -> dict[str, Optional[str]]:
        """What `adapter_config.json` stores for this teacher: `{"teacher": name or path, "teacher_class": ...}`."""
        return {"teacher": self.name, "teacher_class": self.teacher_class}

    # ------------------------------------------------------------------ state
    @property
    def is_loaded(self) -> bool:
        """Whether a teacher module is attached (given, or loaded from the reference)."""
        return self.module is not None

    def __bool__(self) -> bool:
        """True when there is a teacher: a module, or a reference to load it from."""
        return self.module is not None or bool(self.name)

    def attach(self, module: nn.Module) -> None:
        """Keeps `module` by reference and records its name/path and class (what `adapter_config.json` stores)."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"The teacher must be an nn.Module, got {type(module).__name__}.")
        self.module = module
        self.name, self.teacher_class = module_reference(module)

    # ------------------------------------------------------------------ trust checks
    @staticmethod
    def check_folder(
        folder: Union[str, os.PathLike],
        teacher_class: Optional[str] = None,
        trust_remote_code: bool = False,
        what: Optional[str] = None,
        opt_in: str = ADAPTER_OPT_IN,
    ) -> None:
        """Refuses, before anything is imported or read, a teacher reference whose `teacher_class` lies outside
        diffusers/transformers/peft_ckt/lerobot and the user's allow-list (`peft_ckt.trust_teacher_classes`), or whose
        local folder has only pickle weights (allow-listed class or not). No-op with `trust_remote_code=True`. `what`
        names the reference in the error, `opt_in` the switch that allows it."""
        if trust_remote_code:
            return
        folder = os.fspath(folder)
        if teacher_class:
            what = what or f"The CKT adapter's teacher reference ({folder!r})"
            check_trusted_teacher_class(str(teacher_class), what, opt_in)
        check_safetensors_folder(folder, TEACHER_FOLDER, opt_in)

    def check(self, what: Optional[str] = None, opt_in: str = ADAPTER_OPT_IN) -> None:
        """[`check_folder`] on this reference (no-op without one, with an attached module, or when trusted)."""
        if self.module is None and self.name:
            self.check_folder(self.name, self.teacher_class, self.trust_remote_code, what, opt_in)

    # ------------------------------------------------------------------ loading
    def load(self, **kwargs: Any) -> nn.Module:
        """The teacher module: the attached one, else the reference checked ([`check`]), loaded through its
        class's `from_pretrained` (`kwargs` go there) and attached. The stored reference is kept as it was (the
        loaded model may report a cache path); `teacher_class` is filled in from the loaded module when unset."""
        if self.module is not None:
            return self.module
        if not self.name:
            raise ValueError("This TeacherRef holds no teacher: pass a module, a local folder or a Hub id.")
        reference, teacher_class, trust = self.name, self.teacher_class, self.trust_remote_code
        self.check()  # refused with its own message (not wrapped below)
        try:
            teacher = load_teacher(reference, teacher_class, trust_remote_code=trust, **kwargs)
        except Exception as err:
            pickle_hint = (
                " The teacher is read from safetensors only: `trust_remote_code=True` allows pickle weights."
                if not trust and "safetensors" in str(err)
                else ""
            )
            raise RuntimeError(
                f"Could not load the CKT teacher {reference!r} (class {teacher_class}): {err}.{pickle_hint} Pass the "
                "teacher module instead: `PeftModel.from_pretrained(student, path, teacher=teacher)`."
            ) from err
        self.attach(teacher)
        self.name, self.teacher_class = reference, teacher_class or self.teacher_class
        return teacher

    def resolve(self, load: bool) -> Optional[nn.Module]:
        """The attached module; a stored reference is loaded only when `load` (else `None`: loaded on first use)."""
        if self.module is not None:
            return self.module
        return self.load() if self.name and load else None

    # ------------------------------------------------------------------ copies share the module
    def __copy__(self) -> TeacherRef:
        return TeacherRef(self)

    def __deepcopy__(self, memo: dict) -> TeacherRef:
        return TeacherRef(self)

    def __repr__(self) -> str:
        module = type(self.module).__name__ if self.module is not None else None
        return f"TeacherRef(name={self.name!r}, teacher_class={self.teacher_class!r}, module={module})"

"""peft-ckt: Context Knowledge Transfer (CKT) between world action models, as a Hugging Face `peft` method.

Importing this package registers the "ckt" method with peft, so that `get_peft_model(student, CKTConfig(...))` and
`PeftModel.from_pretrained(student, path, teacher=teacher)` work like for any built-in method.
"""

from .config import CKTConfig
from .hub import install_push_to_hub
from .layer import CKTAdapterBank, CKTContext, CKTLayer
from .loading import install_load_checks
from .model import CKTModel
from .registration import register_ckt
from .teacher import trust_teacher_classes, trusted_teacher_classes, untrust_teacher_classes
from .teacher_ref import TeacherRef

__version__ = "0.1.0"

register_ckt()
# `model.push_to_hub(...)` on a CKT PeftModel keeps peft's model card (see peft_ckt.hub).
install_push_to_hub()
# A local CKT adapter folder with missing or corrupt weights, or a mislabelled peft_type, fails with a named error.
install_load_checks()

__all__ = [
    "CKTAdapterBank",
    "CKTConfig",
    "CKTContext",
    "CKTLayer",
    "CKTModel",
    "__version__",
    "TeacherRef",
    "register_ckt",
    "trust_teacher_classes",
    "trusted_teacher_classes",
    "untrust_teacher_classes",
]

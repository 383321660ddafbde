"""peft-ckt: Context Knowledge Transfer (CKT) between world action models, as a Hugging Face `peft` method.

Importing this package registers the "ckt" method with peft, so that `get_peft_model(student, CKTConfig(...))` and
`PeftModel.from_pretrained(student, path, teacher=teacher)` work like for any built-in method.
"""

from .config import CKTConfig
from .layer import CKTAdapterBank, CKTContext, CKTLayer
from .model import CKTModel
from .registration import register_ckt

__version__ = "0.1.0"

register_ckt()

__all__ = ["CKTAdapterBank", "CKTConfig", "CKTContext", "CKTLayer", "CKTModel", "__version__", "register_ckt"]

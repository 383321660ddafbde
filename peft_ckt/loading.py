"""Early, named errors on the paths that load a CKT adapter with peft (`PeftModel.from_pretrained`, `load_adapter`).

peft resolves an adapter folder it cannot fully read by asking the Hub (a local folder whose weights are missing
ends in a connection error after retries), hands safetensors' errors through without the file's name, and builds
whatever `peft_type` the config names (a CKT config marked as another method fails deep inside that method).
[`install_load_checks`] makes `PeftModel.from_pretrained` and `PeftModel.load_adapter` look at a local adapter
folder first and name the problem, and name the weights file when safetensors cannot read one (also one downloaded
from the Hub); other methods' folders are otherwise left to peft.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
# Keys only a CKT adapter config has: a config holding all of them but another `peft_type` was mislabelled.
CKT_ONLY_KEYS = ("teacher_layer", "num_context_tokens", "num_experts", "bottleneck_dim", "router_hidden_dim")
_PATCH_MARKER = "_peft_ckt_load_checks"


def check_weights_file(path: str) -> None:
    """Reads the header of a safetensors file (no tensor data) and raises a ValueError naming `path` when the file
    is truncated or corrupt."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            # Adapters are small: every tensor is read once, so that NaN/inf weights (a diverged run saved) are
            # named here rather than turning every output into NaN later.
            non_finite = [
                key
                for key in keys
                if (tensor := f.get_tensor(key)).is_floating_point() and not bool(torch.isfinite(tensor).all())
            ]
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError for unreadable files)
        raise ValueError(
            f"Cannot read the CKT adapter weights {path}: {err}. The file is truncated or corrupt; save or download "
            "the adapter again."
        ) from None
    if non_finite:
        shown = ", ".join(non_finite[:5]) + (f" and {len(non_finite) - 5} more" if len(non_finite) > 5 else "")
        raise ValueError(
            f"The CKT adapter weights {path} hold NaN or inf values in {len(non_finite)} tensor(s): {shown}. The "
            "training that saved them diverged; load an earlier checkpoint."
        )


def check_adapter_folder(model_id: Any, subfolder: Optional[str] = None) -> None:
    """Checks a local CKT adapter folder before peft reads it: its weights exist (a local folder is never looked up
    on the Hub) and are readable, and a config with CKT's settings says `peft_type: "CKT"`. Does nothing for Hub ids
    and for other methods' folders."""
    if not isinstance(model_id, (str, os.PathLike)):
        return
    folder = os.path.join(os.fspath(model_id), subfolder) if subfolder else os.fspath(model_id)
    config_path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    if not os.path.isfile(config_path):
        return  # not a local adapter folder (e.g. a Hub id): peft resolves it
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the adapter config {config_path}: {err}.") from None
    if not isinstance(config, dict):
        raise ValueError(f"The adapter config {config_path} is not a JSON object.")
    peft_type = config.get("peft_type")
    if peft_type != "CKT":
        if all(key in config for key in CKT_ONLY_KEYS):
            raise ValueError(
                f"{config_path} holds a CKT adapter's settings but says peft_type={peft_type!r}, not 'CKT': peft would "
                'build the wrong method. Set "peft_type": "CKT" in that file.'
            )
        return
    weights = os.path.join(folder, ADAPTER_WEIGHTS_NAME)
    if os.path.isfile(weights):
        check_weights_file(weights)
    elif not os.path.isfile(os.path.join(folder, PICKLE_WEIGHTS_NAME)):
        raise FileNotFoundError(
            f"The CKT adapter folder {folder} has no {ADAPTER_WEIGHTS_NAME} (a local folder is not looked up on the "
            "Hub): save the adapter there again, or pass its Hub id."
        )


def _weights_error(model_id: Any, kwargs: dict[str, Any], err: Exception) -> ValueError:
    """safetensors' error on reading adapter weights (e.g. a corrupt file downloaded from the Hub), with the file's
    name: the Hub file and where it was cached, or the local file."""
    subfolder = kwargs.get("subfolder")
    filename = f"{subfolder}/{ADAPTER_WEIGHTS_NAME}" if subfolder else ADAPTER_WEIGHTS_NAME
    local = os.path.join(os.fspath(model_id), filename)
    if os.path.isfile(local):
        where, advice = local, "save or download the adapter again"
    else:
        where, advice = f"{model_id}/{filename} on the Hub", "download it again with `force_download=True`"
        try:
            from huggingface_hub import hf_hub_download

            hub_kwargs = {key: kwargs[key] for key in ("revision", "cache_dir") if kwargs.get(key) is not None}
            cached = hf_hub_download(str(model_id), filename, local_files_only=True, **hub_kwargs)
            where += f" (cached at {cached})"
        except Exception:  # only a better message: the file's Hub name is enough
            pass
    return ValueError(f"Cannot read the adapter weights {where}: {err}. The file is truncated or corrupt; {advice}.")


def install_load_checks() -> None:
    """Makes `PeftModel.from_pretrained` and `PeftModel.load_adapter` run [`check_adapter_folder`] first.
    Idempotent; other methods' folders and Hub ids keep peft's behaviour."""
    from peft import PeftModel

    if getattr(PeftModel.from_pretrained, _PATCH_MARKER, False):
        return
    from_pretrained = PeftModel.__dict__["from_pretrained"].__func__
    load_adapter = PeftModel.load_adapter

    from safetensors import SafetensorError

    @functools.wraps(from_pretrained)
    def from_pretrained_checked(cls, model, model_id, *args: Any, **kwargs: Any):
        check_adapter_folder(model_id, kwargs.get("subfolder"))
        try:
            return from_pretrained(cls, model, model_id, *args, **kwargs)
        except SafetensorError as err:
            raise _weights_error(model_id, kwargs, err) from None

    @functools.wraps(load_adapter)
    def load_adapter_checked(self, model_id, *args: Any, **kwargs: Any):
        check_adapter_folder(model_id, kwargs.get("subfolder"))
        # peft does not hand its keyword arguments to the config here: the opt-in is set on the new adapter's config.
        trust_remote_code = kwargs.pop("trust_remote_code", False)
        try:
            result = load_adapter(self, model_id, *args, **kwargs)
        except SafetensorError as err:
            raise _weights_error(model_id, kwargs, err) from None
        adapter_name = args[0] if args else kwargs.get("adapter_name")
        config = self.peft_config.get(adapter_name) if adapter_name is not None else None
        if trust_remote_code and hasattr(config, "trust_remote_code"):
            config.trust_remote_code = True
        return result

    for wrapper in (from_pretrained_checked, load_adapter_checked):
        setattr(wrapper, _PATCH_MARKER, True)
    PeftModel.from_pretrained = classmethod(from_pretrained_checked)
    PeftModel.load_adapter = load_adapter_checked

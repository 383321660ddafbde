"""`peft-ckt push`: upload a saved CKT adapter folder to the Hugging Face Hub with a CKT model card."""

from __future__ import annotations

import argparse

DESCRIPTION = """Upload a CKT adapter folder (written by save_pretrained or `peft-ckt train`) to the Hub:
adapter_model.safetensors, adapter_config.json and a model card with library_name: peft, base_model (the
student), the tags peft/ckt/robotics/world-action-model, the teacher reference and layer, K, M, top-k and the
trainable share. The student is rebuilt from --preset (or the adapter's base model) to count parameters.
The Hub endpoint and token come from HF_ENDPOINT / HF_TOKEN or --token."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="Upload a trained CKT adapter folder to the Hugging Face Hub with a CKT model card.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapter_dir", help="Folder holding adapter_model.safetensors and adapter_config.json.")
    parser.add_argument("repo_id", help="Target repository, 'user/name' (or 'name' in the token owner's namespace).")
    parser.add_argument(
        "--preset",
        default=None,
        help="Preset that builds the student the adapter belongs to (e.g. 'tiny'); default: load the adapter "
        "config's base_model_name_or_path with diffusers/transformers.",
    )
    parser.add_argument(
        "--base-model", default=None, help="Hub id of the student for the card's base_model (default: inferred)."
    )
    parser.add_argument("--tag", action="append", default=[], help="Extra model-card tag (repeatable).")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    parser.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    parser.add_argument("--commit-message", default=None, help="Commit message (default: 'Upload CKT adapter').")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.set_defaults(func=run)


def _student_for(adapter_dir: str, preset_name: str | None):
    if preset_name:
        from ..training.presets import get_preset

        return get_preset(preset_name).build_student()
    import json
    import os

    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise SystemExit("The adapter config names no base model: pass --preset to build the student.")
    from ..teacher import load_teacher  # loads any diffusers/transformers model by its config.json

    return load_teacher(base)


def check_push_arguments(args: argparse.Namespace) -> str:
    """Checks the adapter folder, the repo id and the token before any model is built; returns the token.
    Raises SystemExit with one line naming the problem."""
    import json
    import os

    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from ..loading import ADAPTER_CONFIG_NAME, check_adapter_folder

    config_path = os.path.join(args.adapter_dir, ADAPTER_CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise SystemExit(
            f"peft-ckt push: error: {args.adapter_dir} is not an adapter folder (no {ADAPTER_CONFIG_NAME})."
        )
    try:
        check_adapter_folder(args.adapter_dir)
        with open(config_path) as f:
            peft_type = json.load(f).get("peft_type")
    except (OSError, ValueError) as err:
        raise SystemExit(f"peft-ckt push: error: {err}") from None
    if peft_type != "CKT":
        raise SystemExit(
            f"peft-ckt push: error: {config_path} says peft_type={peft_type!r}; `peft-ckt push` uploads CKT adapters."
        )
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError:
        where = (
            " (a local path: push uploads to the Hub; a local copy is just a copy of the adapter folder)"
            if (os.path.isabs(args.repo_id) or args.repo_id.startswith(".") or os.path.exists(args.repo_id))
            else ""
        )
        raise SystemExit(
            f"peft-ckt push: error: {args.repo_id!r} is not a Hub repository id 'user/name' or 'name'{where}."
        ) from None
    token = args.token or get_token()
    if not token:
        raise SystemExit(
            "peft-ckt push: error: no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`."
        )
    try:
        HfApi(token=token).whoami()
    except Exception as err:  # 401 for a bad token, a connection error for an unreachable endpoint
        raise SystemExit(f"peft-ckt push: error: the Hub did not accept the token: {err}".splitlines()[0]) from None
    return token


def run(args: argparse.Namespace) -> int:
    from peft import PeftModel

    from ..hub import push_to_hub

    token = check_push_arguments(args)
    student = _student_for(args.adapter_dir, args.preset)
    # Uploading needs no teacher: the stored reference is only loaded when teacher features are first needed.
    model = PeftModel.from_pretrained(student, args.adapter_dir)
    info = push_to_hub(
        model,
        args.repo_id,
        commit_message=args.commit_message,
        private=args.private or None,
        token=token,
        revision=args.revision,
        create_pr=args.create_pr,
        base_model=args.base_model,
        tags=args.tag,
    )
    print(f"Pushed to {info.commit_url}")
    return 0

"""Train a CKT adapter with Accelerate.

Laptop CPU, the tiny preset (a tiny diffusers Wan teacher -> Cosmos student on a SYNTHETIC moving-blob set):

    python examples/train_ckt.py --preset tiny --max-steps 50 --output-dir outputs/tiny

Two CPU processes (DDP over gloo), or many GPUs with a config from examples/accelerate/:

    accelerate launch --cpu --num_processes 2 examples/train_ckt.py --preset tiny --max-steps 6 --output-dir OUT
    accelerate launch --config_file examples/accelerate/multi_gpu.yaml examples/train_ckt.py --preset tiny ...

Every flag is listed by `python examples/train_ckt.py --help` (the same as `peft-ckt train --help`).
The result: OUTPUT_DIR/adapter_model.safetensors + adapter_config.json, loadable with
`PeftModel.from_pretrained(student, OUTPUT_DIR, teacher=teacher)`.
"""

from peft_ckt.training import build_train_parser, train
from peft_ckt.training.arguments import CKTTrainingArguments, arguments_from_namespace


def main() -> None:
    parser = build_train_parser()
    args = arguments_from_namespace(parser.parse_args(), CKTTrainingArguments)
    if args.preset is None:
        parser.error("pass --preset (e.g. --preset tiny), or use peft_ckt.training.CKTTrainer with your own models")
    result = train(args)
    if result.stopped_early:
        print(f"Stopped after step {result.global_step}; continue with --resume.")


if __name__ == "__main__":
    main()

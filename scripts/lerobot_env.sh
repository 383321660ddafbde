#!/usr/bin/env bash
# Builds .venv-lerobot: LeRobot 0.4.4 beside peft-ckt, apart from the core .venv (different torch, transformers < 5,
# huggingface-hub < 0.36, diffusers < 0.36). Usage: scripts/lerobot_env.sh [VENV]. Prints the time each step took.
# PIP_CACHE_DIR keeps the downloads (torch and its CUDA libraries are several GB) between CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${LEROBOT_VENV:-.venv-lerobot}}"
PYTHON="${PYTHON:-python3.11}"
CONSTRAINTS=scripts/lerobot-constraints.txt
if [ -f "$VENV/.installed" ] && [ "$VENV/.installed" -nt "$CONSTRAINTS" ] && [ "$VENV/.installed" -nt pyproject.toml ]; then
    echo "$VENV is up to date"; exit 0
fi
step() { local t0=$SECONDS; "$@"; echo "[lerobot_env] $(( SECONDS - t0 )) s: $*" >&2; }
start=$SECONDS
test -x "$VENV/bin/python" || step "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
step "${PIP[@]}" install -q --upgrade pip
# The torch pair first, alone, so that nothing later can swap one of them for another build.
step "${PIP[@]}" install -q -c "$CONSTRAINTS" torch torchvision
step "${PIP[@]}" install -q -c "$CONSTRAINTS" -e ".[lerobot,libero,dev]"
# Fails here, not in a test, when the pair does not load together (the `torchvision::nms` error), or when the
# `lerobot` extra alone did not give LeRobot the ckt policy types (peft-ckt's start-up hook registers them).
"$VENV/bin/python" -c "import torch, torchvision, lerobot; from torchvision.ops import nms; \
from lerobot.configs.policies import PreTrainedConfig; assert 'ckt' in PreTrainedConfig.get_known_choices(), \
'the ckt policy type is not registered with LeRobot'; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lerobot', lerobot.__version__)"
touch "$VENV/.installed"
echo "[lerobot_env] total $(( SECONDS - start )) s" >&2

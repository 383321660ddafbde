"""`python -m peft_ckt.commands ...` (and `accelerate launch -m peft_ckt.commands train ...`) runs `peft-ckt`."""

import sys

from . import main

sys.exit(main())

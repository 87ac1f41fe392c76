"""atlas-distill-kit: on-policy distillation vs RLVR, one report."""

import logging

__version__ = "0.1.0"

# transformers imports torchao (the 8-bit optimizer of `optimizer: adamw_8bit_bf16`) whenever it is
# installed, and its import logs that a CPU build cannot load its CUDA extensions, that triton is
# missing, and torch's notice about two of its enums. None of it touches the optimizer, and it
# would fill the output of every notebook cell that loads a model.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

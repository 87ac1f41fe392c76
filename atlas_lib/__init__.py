"""atlas-distill-kit: on-policy distillation vs RLVR, one report."""

import logging
import warnings

__version__ = "0.1.0"

# transformers imports torchao (the 8-bit optimizer of `optimizer: adamw_8bit_bf16`) whenever it is
# installed, and its import logs that a CPU build cannot load its CUDA extensions, that triton is
# missing, and torch's notice about two of its enums. None of it touches the optimizer, and it
# would fill the output of every notebook cell that loads a model.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# Progress bars are text by design (ipywidgets is not a dependency): a papermill run stores a widget
# bar's first frame as its text, so executed notebooks reopened in JupyterLab would show every bar
# stuck at 0%. Without ipywidgets, tqdm.auto (the kit's and transformers') warns once per kernel that
# it is missing; that advice does not apply here.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

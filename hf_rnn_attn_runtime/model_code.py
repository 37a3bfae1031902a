"""hf_rnn_attn's torch-only modules, imported without the package's `__init__`.

`import hf_rnn_attn` registers the model with transformers' Auto classes, which imports transformers'
`PreTrainedModel` and `GenerationMixin` and with them `torch.distributed` and `torch._dynamo`: about 3 s more than
torch's own imports, of a 9.4-s greedy translation of 1,000 verses (2-core EPYC). The layers (`recurrent_layers`)
and the modules they import need only torch. Where the package is not imported yet, its files are imported here as
the package `hf_rnn_attn_model_code`, whose `__init__` is empty: how transformers imports a model's remote code (as
`transformers_modules.<folder>`). Where it is, its own modules are used.
"""

import importlib
import importlib.util
import sys
import types

PACKAGE = "hf_rnn_attn"
DETACHED_PACKAGE = "hf_rnn_attn_model_code"


def import_model_code(name):
    """The module `hf_rnn_attn.<name>`, which must import only torch and such modules."""
    if PACKAGE in sys.modules:
        return importlib.import_module(f"{PACKAGE}.{name}")
    if DETACHED_PACKAGE not in sys.modules:
        package = types.ModuleType(DETACHED_PACKAGE, "hf_rnn_attn's files, without its __init__")
        package.__path__ = list(importlib.util.find_spec(PACKAGE).submodule_search_locations)
        sys.modules[DETACHED_PACKAGE] = package
    return importlib.import_module(f"{DETACHED_PACKAGE}.{name}")

"""SimPO as a LLaMA-Factory stage.

Importing this package is cheap on purpose: the `.pth` startup hook imports it in every interpreter of the
environment, so nothing here may import torch or llamafactory.
"""

__version__ = "0.1.0"

DISABLE_ENV = "SIMPO_PLUGIN_DISABLE"

__all__ = ["DISABLE_ENV", "__version__"]

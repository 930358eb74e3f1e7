"""PRVR models behind one contract (``base.PRVRModel``) and one registry (``registry``).

Importing this package registers the built-in models: each model module (``amdnet``, ``mamfusion``,
``muse``) calls ``register_model`` for itself when imported.
"""

from __future__ import annotations

from . import amdnet, mamfusion, muse  # noqa: F401  (importing a model module registers it)
from .base import PRVRModel
from .registry import (
    PRVRConfig,
    build_model,
    config_to_dict,
    create_model,
    get_config,
    list_configs,
    list_models,
    register_model,
)

__all__ = [
    "PRVRConfig",
    "PRVRModel",
    "build_model",
    "config_to_dict",
    "create_model",
    "get_config",
    "list_configs",
    "list_models",
    "register_model",
]

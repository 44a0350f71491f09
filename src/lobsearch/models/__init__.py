"""Model registry: ``create_model(name, n_features, window, **hp)`` -> (B,T,F) -> (B,3) logits.

Importing this package registers every family: linear (logistic, mlp), recurrent (lstm, gru),
deeplob and transformer, each with a tiny twin ``<name>_tiny``.
"""

from lobsearch.models import deeplob, linear, recurrent, transformer  # noqa: F401  (registers)
from lobsearch.models.registry import Backend, ModelSpec, create_model, list_models, model_spec

__all__ = ["Backend", "ModelSpec", "create_model", "list_models", "model_spec"]

"""Model zoo: `get_model("resnet56_noshort", num_classes=10, in_channels=3)`."""

from landscape.models.registry import get_model, list_models, register_model

# Importing the architecture modules registers their names.
from landscape.models import cifar_resnet, resnet, vgg  # noqa: E402,F401

__all__ = ["get_model", "list_models", "register_model"]

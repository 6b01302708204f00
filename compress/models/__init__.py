"""Model zoo and model surgery for slimforge.

* :func:`load_model` -- build a model from a spec string (``timm:``,
  ``torchvision:``, ``cifar:``, ``package.module:factory``) and local weights.
* ``cifar_resnet*`` -- the CIFAR ResNets of He et al. 2016 (option-A shortcuts).
* :func:`pad_shortcuts_to_conv` -- replace :class:`PadShortcut` by fixed 1x1
  convs so dependency-graph pruners can handle the model.
* :func:`describe_widths` / :func:`apply_widths` -- record a model's layer widths and
  resize another instance of its architecture to them (:mod:`compress.models.widths`).
"""

from compress.models.cifar_resnet import (
    CIFAR_RESNET_DEPTHS,
    BasicBlock,
    CifarResNet,
    PadShortcut,
    cifar_resnet,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet44,
    cifar_resnet56,
    cifar_resnet110,
)
from compress.models.spec import (
    MODEL_SCHEMES,
    describe_model_spec,
    is_registry_spec,
    load_model,
    load_weights,
    no_imports_from,
    require_registry_spec,
)
from compress.models.surgery import (
    FixedShortcutConv,
    freeze_fixed_shortcuts,
    pad_shortcuts_to_conv,
    shortcut_as_conv,
)
from compress.models.widths import apply_widths, describe_widths

__all__ = [
    "CIFAR_RESNET_DEPTHS",
    "BasicBlock",
    "CifarResNet",
    "FixedShortcutConv",
    "MODEL_SCHEMES",
    "PadShortcut",
    "apply_widths",
    "cifar_resnet",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "describe_model_spec",
    "describe_widths",
    "freeze_fixed_shortcuts",
    "is_registry_spec",
    "load_model",
    "load_weights",
    "no_imports_from",
    "pad_shortcuts_to_conv",
    "require_registry_spec",
    "shortcut_as_conv",
]

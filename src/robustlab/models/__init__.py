"""Architectures, the ``Normalize`` layer, the model registry and checkpoints.

``build_model(name, input_shape=(C, H, W), num_classes=..., normalize=(mean, std), **kwargs)``
builds a registered architecture; ``save_model`` / ``load_model`` write and read safetensors
weights with a JSON :class:`ModelCard`.
"""

from robustlab.models.adapters import Logits
from robustlab.models.bayesian import BayesianNet, model_kl
from robustlab.models.checkpoint import ModelCard, checkpoint_paths, load_model, save_model
from robustlab.models.cnn import LeNet, MadryCNN, SmallCNN
from robustlab.models.defensegan import DefenseGAN, GANGenerator
from robustlab.models.denoise import DenoisingBlock
from robustlab.models.lid import LIDDetector

# Importing the architecture modules registers their builders.
from robustlab.models.mlp import MLP
from robustlab.models.normalize import Normalize
from robustlab.models.ode import ODECNN, ODENet, TisODE, logits_and_steady_state
from robustlab.models.pixeldefend import PixelCNN, PixelDefend
from robustlab.models.preprocessing import (
    DEFENSES,
    BitDepthReduction,
    InputTransformDefense,
    JPEGDefense,
    RandomResizePad,
    ThermometerEncoding,
    apply_defenses,
    build_defense,
    list_defenses,
    split_defenses,
)
from robustlab.models.registry import MODELS, build_model, list_models, model_arguments, register_model
from robustlab.models.resnet import PreActBlock, PreActResNet18, WideBasicBlock, WideResNet
from robustlab.models.stochastic import RandomSelfEnsemble, StochasticActivationPruning

__all__ = [
    "DEFENSES",
    "BayesianNet",
    "BitDepthReduction",
    "DefenseGAN",
    "DenoisingBlock",
    "GANGenerator",
    "InputTransformDefense",
    "JPEGDefense",
    "MLP",
    "MODELS",
    "LIDDetector",
    "LeNet",
    "Logits",
    "MadryCNN",
    "ODECNN",
    "ODENet",
    "ModelCard",
    "Normalize",
    "PixelCNN",
    "PixelDefend",
    "PreActBlock",
    "PreActResNet18",
    "RandomResizePad",
    "RandomSelfEnsemble",
    "SmallCNN",
    "StochasticActivationPruning",
    "ThermometerEncoding",
    "TisODE",
    "WideBasicBlock",
    "WideResNet",
    "apply_defenses",
    "build_defense",
    "build_model",
    "checkpoint_paths",
    "list_defenses",
    "list_models",
    "load_model",
    "split_defenses",
    "logits_and_steady_state",
    "model_arguments",
    "model_kl",
    "register_model",
    "save_model",
]

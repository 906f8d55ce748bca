"""Post-hoc explanation baselines (captum) for an attention model's classifier.

All take a model whose ``forward`` returns an object with ``.logits`` (as
:class:`convex_attention.paper.models.AttentionUNet` does), images ``(B, C, H, W)`` and targets
``(B,)``, and return maps:

* ``gradcam``: GradCAM on the block whose output has the resolution of attention level
  ``level`` (the block's last ReLU), ReLU'd: ``(B, h, w)``;
* ``deeplift``, ``lrp``, ``input_x_gradient``, ``integrated_gradients``: input
  attributions ``(B, C, H, W)`` against an all-zero baseline.

Notes on the model's functional operations (L2 normalisation, softmax, the attention
weighting of features): DeepLIFT's rescale rule and LRP's ε-rule act on the modules
(convolutions, batch norms, ReLUs, pooling, the linear layer); the functional operations
and the consistency layer propagate ordinary gradients, which is how captum treats
non-linearities it has no rule for.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from torch import Tensor, nn

__all__ = ["LogitsOnly", "gradcam", "deeplift", "lrp", "input_x_gradient", "integrated_gradients", "BASELINES"]


class LogitsOnly(nn.Module):
    """Wraps a model so that captum sees a plain ``images -> logits`` module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


@contextlib.contextmanager
def _evaluated(model: nn.Module) -> Iterator[LogitsOnly]:
    """The model in eval mode, wrapped for captum; every module's own mode is restored
    afterwards (a model in training is not left in eval mode by an explanation)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield LogitsOnly(model)
    finally:
        for module, training in modes:
            module.training = training


def gradcam(model, images: Tensor, targets: Tensor, level: int = 0) -> Tensor:
    from captum.attr import LayerGradCam

    layer = model.attention_layer(level)
    with _evaluated(model) as wrapped, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = LayerGradCam(wrapped, layer).attribute(images, target=targets, relu_attributions=True)
    return attr.squeeze(1).detach()


def deeplift(model, images: Tensor, targets: Tensor) -> Tensor:
    from captum.attr import DeepLift

    with _evaluated(model) as wrapped, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DeepLift(wrapped).attribute(images, target=targets).detach()


def lrp(model, images: Tensor, targets: Tensor) -> Tensor:
    from captum.attr import LRP
    from captum.attr._core.lrp import (
        SUPPORTED_LAYERS_WITH_RULES,
        SUPPORTED_NON_LINEAR_LAYERS,
    )

    supported = tuple(SUPPORTED_LAYERS_WITH_RULES) + tuple(SUPPORTED_NON_LINEAR_LAYERS)

    class ModuleRulesLRP(LRP):
        # captum refuses leaf modules it has no rule for; ours (the consistency layer, the
        # learned duals' parameters) are left out of the rule set and pass plain gradients, as
        # captum's non-linearities do (AmortisedDuals' convolutions keep their rules, but its
        # duals reach only the consistency loss, never the logits that are explained)
        def _get_layers(self, model):
            super()._get_layers(model)
            self.layers = [layer for layer in self.layers if isinstance(layer, supported)]

    with _evaluated(model) as wrapped, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModuleRulesLRP(wrapped).attribute(images, target=targets).detach()


def input_x_gradient(model, images: Tensor, targets: Tensor) -> Tensor:
    from captum.attr import InputXGradient

    with _evaluated(model) as wrapped, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InputXGradient(wrapped).attribute(images, target=targets).detach()


def integrated_gradients(model, images: Tensor, targets: Tensor, steps: int = 32) -> Tensor:
    from captum.attr import IntegratedGradients

    with _evaluated(model) as wrapped, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return IntegratedGradients(wrapped).attribute(images, target=targets, n_steps=steps,
                                                    internal_batch_size=max(1, len(images)) * 8).detach()


BASELINES = {"deeplift": deeplift, "lrp": lrp, "input_x_gradient": input_x_gradient,
             "integrated_gradients": integrated_gradients}

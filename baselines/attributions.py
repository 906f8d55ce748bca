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

import warnings

from torch import Tensor, nn

__all__ = ["LogitsOnly", "gradcam", "deeplift", "lrp", "input_x_gradient", "integrated_gradients", "BASELINES"]


class LogitsOnly(nn.Module):
    """Wraps a model so that captum sees a plain ``images -> logits`` module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


def _prepare(model: nn.Module) -> LogitsOnly:
    model.eval()
    return LogitsOnly(model)


def gradcam(model, images: Tensor, targets: Tensor, level: int = 0) -> Tensor:
    from captum.attr import LayerGradCam

    wrapped = _prepare(model)
    layer = model.attention_layer(level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = LayerGradCam(wrapped, layer).attribute(images, target=targets, relu_attributions=True)
    return attr.squeeze(1).detach()


def deeplift(model, images: Tensor, targets: Tensor) -> Tensor:
    from captum.attr import DeepLift

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DeepLift(_prepare(model)).attribute(images, target=targets).detach()


def lrp(model, images: Tensor, targets: Tensor) -> Tensor:
    from captum.attr import LRP
    from captum.attr._core.lrp import (
        SUPPORTED_LAYERS_WITH_RULES,
        SUPPORTED_NON_LINEAR_LAYERS,
    )

    supported = tuple(SUPPORTED_LAYERS_WITH_RULES) + tuple(SUPPORTED_NON_LINEAR_LAYERS)

    class ModuleRulesLRP(LRP):
        # captum refuses leaf modules it has no rule for; ours (the consistency layer,
        # the learned duals) hold no conv/linear weights, so they are left out of the
        # rule set and pass plain gradients, as captum's non-linearities do.
        def _get_layers(self, model):
            super()._get_layers(model)
            self.layers = [layer for layer in self.layers if isinstance(layer, supported)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModuleRulesLRP(_prepare(model)).attribute(images, target=targets).detach()


def input_x_gradient(model, images: Tensor, targets: Tensor) -> Tensor:
    from captum.attr import InputXGradient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InputXGradient(_prepare(model)).attribute(images, target=targets).detach()


def integrated_gradients(model, images: Tensor, targets: Tensor, steps: int = 32) -> Tensor:
    from captum.attr import IntegratedGradients

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return IntegratedGradients(_prepare(model)).attribute(images, target=targets, n_steps=steps,
                                                              internal_batch_size=max(1, len(images)) * 8).detach()


BASELINES = {"deeplift": deeplift, "lrp": lrp, "input_x_gradient": input_x_gradient,
             "integrated_gradients": integrated_gradients}

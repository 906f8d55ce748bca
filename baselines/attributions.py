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

__all__ = ["LogitsOnly", "gradcam", "deeplift", "lrp", "input_x_gradient", "integrated_gradients", "BASELINES",
           "LRP_UNRULED_NORMS", "lrp_refusal"]


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


#: Normalisation layers captum's LRP has no rule for: relevance would cross them as a plain
#: gradient, which does not conserve it (through GroupNorm it grew to 7e13 for logits of 20, and an
#: image's map moved 7.6 % between the image alone and in a batch: float rounding amplified,
#: ca_rev252).  BatchNorm, the paper's, has captum's rule.
LRP_UNRULED_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                     nn.LocalResponseNorm)


def lrp_refusal(model: nn.Module) -> str | None:
    """Why LRP cannot explain ``model`` (it holds a layer of :data:`LRP_UNRULED_NORMS`), or None."""
    kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, LRP_UNRULED_NORMS)})
    return (f"captum's LRP has no rule for {', '.join(kinds)}: relevance is not conserved through it, and its "
            f"maps are no explanation" if kinds else None)


def lrp(model, images: Tensor, targets: Tensor) -> Tensor:
    """LRP (captum's ε-rule per module); ValueError for a model :func:`lrp_refusal` refuses."""
    why = lrp_refusal(model)
    if why:
        raise ValueError(f"LRP: {why}")
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

"""Classifier guidance (Song et al. 2021, section 5; Dhariwal & Nichol 2021) and classifier-free guidance: -> ScoreFn.

A noise-aware classifier p_t(y | x_t) turns an unconditional score into a conditional one:
grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x). ``guided`` adds the second term,
multiplied by ``scale``; at scale 1 with an exact classifier, every sampler then draws from
p(x | y). A scale s != 1 is a heuristic: it is *not* the score of the tilted density
p(x) p(y | x)^s perturbed to time t (the tilt does not commute with the noising), so it only
approaches that density as t -> 0. Samplers run under ``torch.no_grad``; the gradient is taken
here under ``torch.enable_grad`` on a detached copy of x, so nothing leaks into the caller's graph.

Classifier-free guidance (Ho & Salimans 2022) needs no classifier: a class-conditional net trained
with some labels dropped to "no class" gives both s(x, t | y) and s(x, t); ``classifier_free``
extrapolates from the second through the first, s + w (s(. | y) - s), the same heuristic tilt
with the net's own implicit classifier.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusers_cli.engine.score import ScoreFn, ScoreModel, network_evaluations, precondition_input
from diffusers_cli.engine.sde import SDE

#: (x_t [B, C, H, W], t [B]) -> logits [B, K] of p_t(y | x_t); log_softmax is applied by the caller.
ClassifierFn = Callable[[Tensor, Tensor], Tensor]


def _labels(y: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """y as a long vector [batch]: an int or a one-element tensor is shared, a [batch] tensor is per example."""
    labels = torch.as_tensor(y, device=device).long().reshape(-1)
    if labels.numel() == 1:
        return labels.expand(batch)
    if labels.numel() != batch:
        raise ValueError(f"y has {labels.numel()} labels for a batch of {batch}; give one label or one per example")
    return labels


def classifier_log_prob_grad(classifier: ClassifierFn, x: Tensor, t: Tensor, y: Tensor | int) -> Tensor:
    """grad_x log p_t(y | x) by autograd, shaped and typed like x; works inside ``torch.no_grad``."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, t)
        labels = _labels(y, x.shape[0], logits.device)
        if logits.ndim != 2 or bool((labels < 0).any()) or bool((labels >= logits.shape[1]).any()):
            raise ValueError(f"labels must lie in [0, {logits.shape[-1]}) for logits shaped {tuple(logits.shape)}")
        log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None])
        # Examples are independent, so the gradient of the sum is each example's own gradient.
        (grad,) = torch.autograd.grad(log_p.sum(), x_in)
    return grad.to(x.dtype)


def guided(score_fn: ScoreFn, classifier: ClassifierFn, y: Tensor | int, scale: float) -> ScoreFn:
    """score_fn + scale * grad_x log p_t(y | x): the score of p_t(x | y) at scale 1 (y: int or one per example)."""
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")

    def guided_score(x: Tensor, t: Tensor) -> Tensor:
        score = score_fn(x, t)
        if scale == 0:
            return score
        return score + scale * classifier_log_prob_grad(classifier, x, t, y).to(score.dtype)

    # NFE counts the score network's evaluations; the classifier's gradient is a different (and smaller) network.
    setattr(guided_score, "network_evaluations", network_evaluations(score_fn))
    return guided_score


def classifier_fn(net: nn.Module, sde: SDE) -> ClassifierFn:
    """(x_t, t) -> logits of a time-dependent classifier net (x_in, c_noise) -> logits, preconditioned as ScoreModel."""

    def logits(x: Tensor, t: Tensor) -> Tensor:
        # The input scaling and noise label of the score network, from the one place they live,
        # so the classifier sees exactly what the model it guides was trained on.
        return net(*precondition_input(x, t, sde))

    return logits


def classifier_free(model: ScoreModel, y: Tensor | int, scale: float) -> ScoreFn:
    """(1 - scale) s(x, t) + scale s(x, t | y) of a class-conditional model (y: int or one per example; 1: p(x | y), 0: p(x))."""
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")

    def guided_score(x: Tensor, t: Tensor) -> Tensor:
        labels = _labels(y, x.shape[0], x.device)
        null = torch.full_like(labels, -1)  # the net's "no class" label
        if scale == 1:
            return model.score(x, t, labels)
        if scale == 0:
            return model.score(x, t, null)
        # One forward pass of twice the batch costs less than two passes of one batch.
        both = model.score(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    # Scales 0 and 1 need one of the two scores; any other scale runs the net on twice the batch: 2 NFE per image.
    setattr(guided_score, "network_evaluations", 1 if scale in (0, 1) else 2)
    return guided_score


def cycle_labels(start: int, n: int, num_classes: int, device: torch.device | None = None) -> Tensor:
    """Labels of samples start .. start + n - 1 when a grid shows every class in turn: index mod num_classes."""
    return torch.arange(start, start + n, device=device) % num_classes

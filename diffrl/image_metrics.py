"""Image metrics on the features of a digits classifier the project trains itself.

FD (Fréchet distance) and KID go through torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance`` with a custom feature module. torchmetrics hands a custom module the
images unchanged (its ``normalize`` flag only converts images for its own Inception), so the
module takes the models' float images in [-1, 1]; it declares ``num_features`` so torchmetrics
does not probe it with a 3x299x299 image. These are not Inception FIDs: compare them only with
each other (same classifier seed, same reference split, similar sample counts).

Class coverage = 1 - total variation distance between the classifier's predicted-class
histogram of the samples and the uniform distribution: 1 when every class is equally frequent,
1/K when all samples fall in one of the K classes. Digits' test split is nearly uniform
(stratified, about 36 images per class), so real data score close to 1.
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .image_data import ImageData, load_digits_images

__all__ = [
    "DigitsClassifier", "ClassifierFeatures", "train_digits_classifier", "digits_classifier",
    "class_coverage", "image_scores", "save_grid",
]


class DigitsClassifier(nn.Module):
    """A small CNN on (B, 1, 8, 8) images in [-1, 1]: ``features`` (B, num_features), ``forward`` logits (B, 10)."""

    def __init__(self, num_features: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, num_features), nn.SiLU(),
        )
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations, standardised with the training images' per-feature mean and std."""
        return (self.body(x) - self.feature_mean) / self.feature_std

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def fit_feature_scale(self, images: Tensor) -> None:
        """Set the features' standardisation from reference images (N, 1, 8, 8)."""
        h = self.body(images)
        self.feature_mean.copy_(h.mean(0))
        self.feature_std.copy_(h.std(0).clamp_min(1e-6))


class ClassifierFeatures(nn.Module):
    """The feature module torchmetrics calls: images (B, C, H, W) in [-1, 1] -> (B, num_features)."""

    def __init__(self, classifier: DigitsClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float()).double()


def train_digits_classifier(data: ImageData, seed: int = 0, epochs: int = 15, batch_size: int = 64) -> tuple[DigitsClassifier, float]:
    """Train on ``data.train`` (Adam 2e-2 with cosine decay, seeded; features standardised on
    ``data.train``); returns the frozen classifier in eval mode and its accuracy on ``data.test``."""
    if data.train_labels is None or data.test_labels is None:
        raise ValueError("the classifier needs labelled data (digits)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
        steps = epochs * math.ceil(data.train.shape[0] / batch_size)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(epochs):
            for idx in torch.randperm(data.train.shape[0]).split(batch_size):
                loss = F.cross_entropy(model(data.train[idx]), data.train_labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    model.eval().requires_grad_(False)
    model.fit_feature_scale(data.train)
    with torch.no_grad():
        accuracy = float((model(data.test).argmax(1) == data.test_labels).float().mean())
    return model, accuracy


@functools.lru_cache(maxsize=4)
def digits_classifier(seed: int = 0) -> tuple[DigitsClassifier, float]:
    """The project's digits classifier (trained once per process and seed, a few seconds) and its test accuracy."""
    return train_digits_classifier(load_digits_images(), seed)


def class_coverage(predicted: Tensor, num_classes: int = 10) -> float:
    """1 - TV(histogram of predicted (N,) class ids, uniform) = 1 - 0.5 * sum_k |p_k - 1/K|; in [1/K, 1]."""
    p = torch.bincount(predicted.flatten().cpu(), minlength=num_classes).double() / predicted.numel()
    return float(1 - 0.5 * (p - 1 / num_classes).abs().sum())


def image_scores(samples: Tensor, reference: Tensor, classifier: DigitsClassifier, seed: int = 0) -> dict[str, float]:
    """FD, KID (mean and std over 100 subsets) and class coverage of samples against reference images,
    both (N, C, H, W) in [-1, 1], on ``classifier``'s features. KID's subset draws use ``seed``
    without touching the global RNG. Returns fd, kid, kid_std, coverage and n (the sample count)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and reference {tuple(reference.shape[1:])} differ in shape")
    if min(samples.shape[0], reference.shape[0]) < 2:
        raise ValueError("FD and KID need at least 2 samples and 2 reference images")
    device = next(classifier.parameters()).device
    samples, reference = samples.to(device).float(), reference.to(device).float()
    features = ClassifierFeatures(classifier)
    subset = min(1000, samples.shape[0], reference.shape[0])
    fd = FrechetInceptionDistance(feature=features).to(device)
    with warnings.catch_warnings():  # KID keeps every feature vector: a few thousand 32-dim vectors here
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all extracted features")
        kid = KernelInceptionDistance(feature=features, subsets=100, subset_size=subset).to(device)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for metric in (fd, kid):
            metric.update(reference, real=True)
            metric.update(samples, real=False)
        kid_mean, kid_std = kid.compute()
        fd_value = fd.compute()
        coverage = class_coverage(classifier(samples).argmax(1), classifier.head.out_features)
    return {"fd": float(fd_value), "kid": float(kid_mean), "kid_std": float(kid_std), "coverage": coverage, "n": samples.shape[0]}


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """A PNG grid of images (N, C, H, W) in [-1, 1]; ``scale`` enlarges each pixel (nearest) for tiny images."""
    from torchvision.utils import save_image

    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="nearest")
    path = Path(path)
    save_image(x, path, nrow=nrow or math.ceil(math.sqrt(x.shape[0])), padding=1, pad_value=1.0)
    return path

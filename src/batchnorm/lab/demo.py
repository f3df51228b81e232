"""Demo: the paper's MNIST network (3 x 100 sigmoid units, batch 60) on scikit-learn's 8x8 digits, with and
without batch norm (Ioffe & Szegedy 2015, Sec. 4.1), trained the same way; prints test accuracy for both."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..nn import BatchNorm1d


@dataclass
class Config:
    steps: int = 3000  # SGD steps of one mini-batch each
    batch_size: int = 60  # the paper's batch size
    lr: float = 0.5  # plain SGD learning rate, the same for both networks
    init_std: float = 0.1  # "small random Gaussian values" (the paper gives no std)
    seed: int = 0  # seeds the split, the initialization and the batch order


def load_digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], split 2/3 train and 1/3 test (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=1 / 3, random_state=seed,
                                                        stratify=digits.target)
    return (torch.from_numpy(x_train), torch.from_numpy(y_train).long(), torch.from_numpy(x_test),
            torch.from_numpy(y_test).long())


def paper_mlp(inputs: int, use_batch_norm: bool, init_std: float) -> nn.Sequential:
    """3 fully connected hidden layers of 100 sigmoid units; BN (if used) between each linear map and sigmoid."""
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(3):
        linear = nn.Linear(width, 100, bias=not use_batch_norm)  # BN's beta replaces the bias
        layers += [linear, BatchNorm1d(100)] if use_batch_norm else [linear]
        layers.append(nn.Sigmoid())
        width = 100
    layers.append(nn.Linear(width, 10))
    for module in layers:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return nn.Sequential(*layers)


def train_and_test(use_batch_norm: bool, cfg: Config) -> float:
    """Train with plain SGD on cross-entropy; return the test accuracy."""
    x_train, y_train, x_test, y_test = load_digits_split(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = paper_mlp(x_train.shape[1], use_batch_norm, cfg.init_std)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        index = torch.randint(len(x_train), (cfg.batch_size,), generator=generator)
        loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def main(cfg: Config | None = None) -> dict[str, float]:
    cfg = cfg or Config()
    results = {}
    for label, use_bn in (("without batch norm", False), ("with batch norm", True)):
        results[label] = train_and_test(use_bn, cfg)
        print(f"paper MLP on 8x8 digits, {label:>18}: test accuracy {results[label]:.3f} "
              f"({cfg.steps} steps of {cfg.batch_size}, lr {cfg.lr})", flush=True)
    return results

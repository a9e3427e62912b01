"""The 784-128-64-10 multilayer perceptron (Fashion-MNIST / MNIST sized)."""
import torch.nn as nn


def mlp(in_features: int = 784, hidden=(128, 64), num_classes: int = 10) -> nn.Sequential:
    """Flatten -> Linear(784,128) -> ReLU -> Linear(128,64) -> ReLU -> Linear(64,10)."""
    layers, width = [nn.Flatten()], in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)

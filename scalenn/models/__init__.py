"""Small reference models used by `scalenn demo`, the tests and the examples. Each factory takes
no required argument, so `scalenn compress --model scalenn.models:mnist_cnn` can build it."""
from .mlp import mlp  # noqa: F401
from .mnist_cnn import MnistCNN, mnist_cnn, pretrained_mnist_state  # noqa: F401

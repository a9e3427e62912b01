"""Small plain-PyTorch reference models used by `scalenn demo`, the tests and the examples
(MLP, the MNIST CNN of the ccexam package, all-MiniLM-L6-v2 in minilm.py; no
transformers/tokenizers dependency). Each factory takes no required argument, so
`scalenn compress --model scalenn.models:mnist_cnn` can build it."""
from .mlp import mlp  # noqa: F401
from .mnist_cnn import MnistCNN, mnist_cnn, pretrained_mnist_state  # noqa: F401

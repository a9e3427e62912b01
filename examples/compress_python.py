"""The Python form of `scalenn compress`: the same recipe file, your own model, loader and
evaluation. Run `scalenn demo` first (it writes demo_out/cnn_dense.safetensors), then:

    python examples/compress_python.py [demo_out/cnn_dense.safetensors]
"""
import os
import sys

import scalenn
from scalenn import data, training
from scalenn.models import mnist_cnn

HERE = os.path.dirname(os.path.abspath(__file__))


def main(weights: str = "demo_out/cnn_dense.safetensors") -> None:
    model = scalenn.load(mnist_cnn(), weights)      # any nn.Module with its trained weights
    x_train, y_train = data.load_fashion_mnist("train")
    x_test, y_test = data.load_fashion_mnist("test")
    loader = training.TensorBatches(x_train, y_train, batch_size=128)
    model, report = scalenn.compress(model, os.path.join(HERE, "mnist_cnn.toml"), loader,
                                     lambda m: training.evaluate(m, x_test, y_test))
    for step in report["steps"]:
        print(f"{step['step']:>9}: {step['status']} {step['detail']}")
    scalenn.save(model, "cnn_compressed.safetensors")  # reload: scalenn.load(mnist_cnn(), path)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The class names of the datasets that have fixed ones, written once: the registry's entries and the loaders read them.

A leaf module (no imports), so that the registry and the dataset modules both depend on it and not on each other.
"""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
FASHION_MNIST: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: The standard ten; a batches.meta.txt next to the batches, if there, names them instead.
CIFAR10: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

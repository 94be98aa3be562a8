"""The names a configuration may use, in a module without torch so config.py can check them
at once (``--help`` and config errors answer before torch is imported)."""

DATASETS = ("digits", "mnist", "fashionmnist", "cifar10")
DATASET_ALIASES = {"cifar": "cifar10", "fashion_mnist": "fashionmnist", "fmnist": "fashionmnist"}
MODELS = ("auto", "mlp", "cnn_mnist", "cnn_cifar")
STRATEGIES = ("fedper", "fedavg", "local")
PARTITIONS = ("iid", "pathological", "dirichlet")
DEVICES = ("auto", "cpu", "cuda")

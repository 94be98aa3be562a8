"""The names a configuration may use, in a module without torch so config.py can check them
at once (``--help`` and config errors answer before torch is imported)."""

# Text (model=lora, fl/lm/): stdlib = the docstrings of Python's standard library, one family per
# group of modules (the demo corpus, non-IID by family); text = the *.jsonl (FLB's instruction/output)
# and *.txt files of a node's data_dir, one family per file.
TEXT_DATASETS = ("stdlib", "text")
DATASETS = ("digits", "mnist", "fashionmnist", "cifar10", *TEXT_DATASETS)
INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashionmnist": (1, 28, 28), "cifar10": (3, 32, 32)}
DATASET_ALIASES = {"cifar": "cifar10", "fashion_mnist": "fashionmnist", "fmnist": "fashionmnist"}
# lora: the causal language model at the node's model_path, frozen, with LoRA adapters (fl/lm/)
MODELS = ("auto", "mlp", "mlp_small", "cnn_mnist", "cnn_cifar", "lora")
LORA_VARIANTS = ("fedavg", "ffa")  # train and average A and B; FFA-LoRA: A frozen, B averaged (exact)
# What is shared (config key ``strategy``): fedper the base layers, fedavg every layer, local
# nothing; distill the clients' outputs on a public set (each client keeps its whole model, and
# clients may run different architectures); split and splitfed train a model cut between the
# edge node (lower layers, the data) and its supernode (upper layers), splitfed averaging the
# lower layers too.
STRATEGIES = ("fedper", "fedavg", "local", "distill", "split", "splitfed")
SPLIT_STRATEGIES = ("split", "splitfed")
SPLIT_LABELS = ("server", "edge")  # split learning: labels at the supernode, or U-shaped (head and labels on the edge node)
PARTITIONS = ("iid", "pathological", "dirichlet", "pfllib")  # pfllib: a split PFLlib wrote, read from data_dir
DEVICES = ("auto", "cpu", "cuda")

# How the shared updates are combined (config key ``aggregation``), and the options each rule
# takes, with their defaults. ``proximal_mu`` (FedProx's client-side proximal term) goes with
# every rule: it changes how clients train, not how updates are combined.
AGGREGATIONS = ("mean", "fedavgm", "fedadam", "median", "trimmed_mean", "krum")
AGGREGATION_OPTIONS: dict[str, dict[str, float | int]] = {
    "mean": {},
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.9},
    "fedadam": {"adam_lr": 0.01, "adam_beta1": 0.9, "adam_beta2": 0.99, "adam_tau": 1e-3},
    "median": {},
    "trimmed_mean": {"trim_beta": 0.2},
    "krum": {"krum_f": 1, "krum_m": 1},
}
# Options that go with every rule: FedProx's client-side term, and the bound on each update's
# distance from the global model (update_norm_bound: at most that multiple of the global model's
# norm, 0 = no bound; update_norm_clip: 0 refuses an update beyond it, 1 scales it back to it).
# Distillation (strategy=distill, fl/distill.py) is a client option too: each client's loss is its
# cross-entropy plus distill_alpha times the distance of its outputs on the public set from the
# clients' mean outputs (distill_l2=1: mean squared error of the logits, as GFL's l2_dist; 0: KL
# divergence of the softmaxes). DISTILL_PUBLIC samples of the dataset (config key distill_public)
# form the public set, held out of every client's data by the job's seed.
DISTILL_OPTIONS: dict[str, float | int] = {"distill_alpha": 0.5, "distill_l2": 1}
DISTILL_PUBLIC = 500
COMMON_OPTIONS: dict[str, float | int] = {"proximal_mu": 0.0, "update_norm_bound": 0.0, "update_norm_clip": 0,
                                          **DISTILL_OPTIONS}
# Differential privacy (fl/privacy.py): the mechanism (config key ``dp``) and its settings: the
# clip norm C, the noise multiplier z (0 with a target ε: calibrated), the target ε (0: none), δ.
# Adaptive clipping (dp_clipping=adaptive, Andrew et al. 2021): the quantile of update norms the clip
# norm tracks, its learning rate, and the noise on the count of unclipped updates (0: automatic).
DP_MECHANISMS = ("off", "central", "central_client", "local", "dpsgd")
DP_CLIPPINGS = ("fixed", "adaptive")
# Contribution scores (fl/scores.py): off, FLB's formula only, or with leave-one-out or GTG-Shapley.
SCORE_METHODS = ("off", "flb", "loo", "gtg")
DP_OPTIONS: dict[str, float] = {"dp_clip": 1.0, "dp_noise": 0.0, "dp_epsilon": 0.0, "dp_delta": 1e-5,
                                "dp_target_quantile": 0.5, "dp_clip_lr": 0.2, "dp_count_noise": 0.0}
OPTION_DEFAULTS: dict[str, float | int] = {
    **{k: v for options in AGGREGATION_OPTIONS.values() for k, v in options.items()},
    **COMMON_OPTIONS,
}

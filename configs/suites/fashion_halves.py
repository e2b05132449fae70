"""The ImageNot experiment in miniature: do architectures rank the same on two disjoint-class
datasets from one source? Fashion-MNIST's first five classes stand in for ImageNet, its last
five for ImageNot.

Command:  python -m imagenot_jax.suite --suite configs/suites/fashion_halves.py \
              --workdir .data/suite   (`make demo` runs it after the single-model demo)
Hardware: any CPU; sized for 2 cores.
Expected: 12 runs (6 architectures x 2 datasets) in about 8 minutes on 2 cores; the ranking
          table, Kendall tau and Spearman rho (with bootstrap intervals) in .data/suite/report/.
Models:   six families of the zoo, scaled down for 28 px grayscale input but each keeping its
          defining structure (AlexNet's big-kernel stem and MLP head, ResNet's
          residual blocks, DenseNet's concatenation, MobileNetV3's inverted residuals with SE,
          ViT's patch tokens and attention, ConvNeXt's 7x7 depthwise blocks), each trained from
          scratch (2 epochs over 8,000 images; 2,500 test images) with one recipe per optimizer
          family (SGD for the BN CNNs, AdamW for AlexNet, ViT and ConvNeXt), each trained the
          same way on both datasets, as in the study.
"""

import ml_collections

from imagenot_jax import defaults, recipes

EPOCHS = 2
TRAIN_EXAMPLES = 8_000
TEST_EXAMPLES = 2_500


def _run(
    model: str, *, image_size: int, kwargs: dict, adamw: bool = False
) -> ml_collections.ConfigDict:
    config = defaults.base_config()
    # config.data.name is set per dataset by the suite. 8,000 of the 30,000 training images
    # and 2,500 of the 5,000 test images keep 12 runs within minutes on 2 cores.
    config.data.train_split = f"train[:{TRAIN_EXAMPLES}]"
    config.data.eval_split = f"test[:{TEST_EXAMPLES}]"
    recipes.fashion_mnist_input(config, image_size=image_size)
    config.input.global_batch_size = 128
    config.input.eval_batch_size = 500
    config.input.num_workers = 1
    config.model.name = model
    for key, value in kwargs.items():
        config.model.kwargs[key] = value
    if adamw:
        config.optim.name = "adamw"
        config.optim.lr = 2e-3  # per 256 images
        config.optim.weight_decay = 0.05
        config.optim.norm_weight_decay = 0.0
    else:
        config.optim.name = "sgd"
        config.optim.lr = 0.4  # per 256 images
        config.optim.nesterov = True
        config.optim.weight_decay = 5e-5
    config.optim.label_smoothing = 0.1
    config.schedule.name = "cosine"
    config.schedule.epochs = EPOCHS
    config.schedule.per_epoch = False
    config.schedule.warmup_epochs = 0
    config.eval.every_steps = 1_000_000  # only at the end (the suite evaluates the checkpoint)
    config.checkpoint.every_steps = 100_000  # at the end of every epoch and of training
    config.checkpoint.keep = 1
    config.logging.every_steps = 100
    return config


def get_config() -> ml_collections.ConfigDict:
    suite = ml_collections.ConfigDict()
    suite.a = ml_collections.ConfigDict({"label": "first5", "data": "fashion_mnist/first5"})
    suite.b = ml_collections.ConfigDict({"label": "last5", "data": "fashion_mnist/last5"})
    suite.base = "alexnet"  # relative improvements X_i / X_alexnet, as in the paper
    suite.distributed = False  # True: every process of a multi-host slice runs each run
    suite.bootstrap = 1000
    suite.runs = ml_collections.ConfigDict()
    runs = suite.runs
    # BN-free AlexNet diverges with SGD at the BN nets' lr and barely moves at a tenth of it
    # (torchvision's ratio) in two short epochs; AdamW trains it.
    alexnet = {"width_mult": 0.5, "hidden_features": 512}
    runs.alexnet = _run("alexnet", image_size=63, kwargs=alexnet, adamw=True)
    # The ImageNet stem (7x7/2 conv, 3x3/2 pool): the CIFAR-style full-resolution stem is 4x
    # slower on CPU here.
    runs.resnet18 = _run("resnet18", image_size=32, kwargs={"widths": (16, 32, 64, 128)})
    runs.densenet121 = _run(
        "densenet121",
        image_size=32,
        kwargs={"growth_rate": 12, "block_config": (2, 4, 6, 4), "num_init_features": 24},
    )
    # torchvision's BN momentum (0.01) leaves the running statistics near their initial values
    # after 124 steps: the net then scores at chance in eval mode.
    mobilenet = {"width_mult": 0.5, "norm_momentum": 0.1}
    runs.mobilenet_v3_small = _run("mobilenet_v3_small", image_size=32, kwargs=mobilenet)
    vit = {"image_size": 28, "patch_size": 4, "num_layers": 4, "num_heads": 4, "hidden_dim": 64}
    runs.vit_b_16 = _run("vit_b_16", image_size=28, kwargs={**vit, "mlp_dim": 128}, adamw=True)
    runs.convnext_tiny = _run(
        "convnext_tiny",
        image_size=32,
        kwargs={"widths": (24, 48, 96, 192), "depths": (1, 1, 3, 1), "stochastic_depth_prob": 0.0},
        adamw=True,
    )
    return suite

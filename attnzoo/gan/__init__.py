"""Generative adversarial networks on the library's blocks, with the stabilising tricks.

* Losses (:mod:`.losses`): minimax, non-saturating, least squares, hinge and Wasserstein
  behind one registry, :func:`get_adversarial_loss`; the WGAN-GP, DRAGAN and drift
  regularisers, with gradient norms taken per sample over all of its features.
* Training (:mod:`.trainer`, :mod:`.game`, :mod:`.tricks`): :class:`GANTrainer` runs any
  :class:`GANGame` (one or more generator-discriminator pairs) with every ganhacks trick
  as an option that is off by default, logs ``D(x)``, ``D(G(z))``, gradient norms and
  losses per step, and saves sample grids and a diagnostics plot as PNG files.
* Layers (:mod:`.layers`): spectral norm (PyTorch's) over a module tree, minibatch
  discrimination, minibatch standard deviation, pixel norm, equalised learning rate,
  PacGAN packing.
* Model families: :class:`DCGAN`, :class:`DRAGAN`, :class:`SAGAN` (with
  :class:`~attnzoo.attention.SelfAttention2d`), :class:`ProgressiveGAN`,
  :class:`CycleGAN`, :class:`SRGAN`, :class:`StackGAN`, each with a ``*_trainer_config``
  preset of its paper's training settings.
* The mode-collapse benchmark on 2-D Gaussian mixtures (:mod:`.mode_collapse`) and small
  image data drawn in code (:mod:`.data`).
"""

from .cyclegan import (
    CycleGAN,
    CycleGANConfig,
    PatchDiscriminator,
    ResNetGenerator,
    cyclegan_trainer_config,
)
from .data import (
    SHAPE_NAMES,
    SHAPE_STYLES,
    ShapeImages,
    downsample,
    make_digits,
    make_shapes,
    shape_embeddings,
)
from .dcgan import (
    DCGAN,
    DRAGAN,
    DCGANConfig,
    DCGANDiscriminator,
    DCGANGenerator,
    dcgan_trainer_config,
    dragan_config,
    dragan_trainer_config,
)
from .figures import (
    image_grid,
    plot_diagnostics,
    plot_points,
    require_matplotlib,
    save_image_grid,
    write_png,
)
from .game import GANGame, GeneratorOutput, UnconditionalGame
from .layers import (
    SPECTRAL_NORM_LAYERS,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchDiscrimination,
    MinibatchStdDev,
    PackedDiscriminator,
    PixelNorm,
    apply_spectral_norm,
    he_scale,
    is_spectrally_normalized,
    pack,
)
from .losses import (
    ADVERSARIAL_LOSSES,
    AdversarialLoss,
    HingeLoss,
    LeastSquaresLoss,
    MinimaxLoss,
    NonSaturatingLoss,
    WassersteinLoss,
    dragan_penalty,
    drift_penalty,
    get_adversarial_loss,
    gradient_penalty,
    per_sample_gradient_norm,
)
from .mode_collapse import (
    MODE_COLLAPSE_VARIANTS,
    GaussianMixture2d,
    MLPDiscriminator,
    MLPGenerator,
    ModeCollapseConfig,
    ModeStatistics,
    build_mode_collapse_game,
    mode_statistics,
    run_mode_collapse_benchmark,
    run_mode_collapse_demo,
    train_mode_collapse,
)
from .progan import (
    ProGANConfig,
    ProGANDiscriminator,
    ProGANGenerator,
    ProgressiveGAN,
    ProgressiveSchedule,
    progan_trainer_config,
)
from .sagan import SAGAN, SAGANConfig, SAGANDiscriminator, SAGANGenerator, sagan_trainer_config
from .srgan import SRGAN, SRGANConfig, SRGANDiscriminator, SRResNet, srgan_trainer_config
from .stackgan import (
    ConditionalDiscriminator,
    ConditioningAugmentation,
    StackGAN,
    StackGANConfig,
    StageIGenerator,
    StageIIGenerator,
    kl_to_standard_normal,
    stackgan_trainer_config,
)
from .trainer import GANHistory, GANTrainer, GANTrainerConfig, train_gan
from .tricks import InstanceNoise, ReplayBuffer, discriminator_targets

__all__ = [
    "ADVERSARIAL_LOSSES",
    "DCGAN",
    "DRAGAN",
    "MODE_COLLAPSE_VARIANTS",
    "SAGAN",
    "SHAPE_NAMES",
    "SHAPE_STYLES",
    "SPECTRAL_NORM_LAYERS",
    "SRGAN",
    "AdversarialLoss",
    "ConditionalDiscriminator",
    "ConditioningAugmentation",
    "CycleGAN",
    "CycleGANConfig",
    "DCGANConfig",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "EqualizedConv2d",
    "EqualizedLinear",
    "GANGame",
    "GANHistory",
    "GANTrainer",
    "GANTrainerConfig",
    "GaussianMixture2d",
    "GeneratorOutput",
    "HingeLoss",
    "InstanceNoise",
    "LeastSquaresLoss",
    "MLPDiscriminator",
    "MLPGenerator",
    "MinibatchDiscrimination",
    "MinibatchStdDev",
    "MinimaxLoss",
    "ModeCollapseConfig",
    "ModeStatistics",
    "NonSaturatingLoss",
    "PackedDiscriminator",
    "PatchDiscriminator",
    "PixelNorm",
    "ProGANConfig",
    "ProGANDiscriminator",
    "ProGANGenerator",
    "ProgressiveGAN",
    "ProgressiveSchedule",
    "ReplayBuffer",
    "ResNetGenerator",
    "SAGANConfig",
    "SAGANDiscriminator",
    "SAGANGenerator",
    "SRGANConfig",
    "SRGANDiscriminator",
    "SRResNet",
    "ShapeImages",
    "StackGAN",
    "StackGANConfig",
    "StageIGenerator",
    "StageIIGenerator",
    "UnconditionalGame",
    "WassersteinLoss",
    "apply_spectral_norm",
    "build_mode_collapse_game",
    "cyclegan_trainer_config",
    "dcgan_trainer_config",
    "discriminator_targets",
    "downsample",
    "dragan_config",
    "dragan_penalty",
    "dragan_trainer_config",
    "drift_penalty",
    "get_adversarial_loss",
    "gradient_penalty",
    "he_scale",
    "image_grid",
    "is_spectrally_normalized",
    "kl_to_standard_normal",
    "make_digits",
    "make_shapes",
    "mode_statistics",
    "pack",
    "per_sample_gradient_norm",
    "plot_diagnostics",
    "plot_points",
    "progan_trainer_config",
    "require_matplotlib",
    "run_mode_collapse_benchmark",
    "run_mode_collapse_demo",
    "sagan_trainer_config",
    "save_image_grid",
    "shape_embeddings",
    "srgan_trainer_config",
    "stackgan_trainer_config",
    "train_gan",
    "train_mode_collapse",
    "write_png",
]

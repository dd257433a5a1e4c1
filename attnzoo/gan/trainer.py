"""One GAN training loop with the known stabilising tricks as options.

:class:`GANTrainer` alternates ``discriminator_steps`` discriminator updates and one
generator update on a :class:`~attnzoo.gan.game.GANGame`, with Adam for both. Every trick
is off by default and switched on in :class:`GANTrainerConfig` (the list of ganhacks,
Soumith Chintala's collection, with the papers that introduced or studied each trick):

* one-sided label smoothing (``label_smoothing``, real labels only);
* occasional label flipping for the discriminator (``label_flip_probability``);
* instance noise with annealing (``instance_noise``, ``instance_noise_anneal_steps``);
* separate real and fake batches (``separate_batches``): by default the discriminator
  sees real and generated samples in one concatenated forward pass, which mixes their
  batch statistics; with the trick, each batch is all real or all fake;
* the two time-scale update rule (``lr_discriminator`` different from ``lr``; Heusel et
  al. 2017; SAGAN uses 4e-4 for the discriminator and 1e-4 for the generator);
* a replay buffer of past fakes (``replay_buffer``);
* feature matching (``feature_matching``; Salimans et al. 2016): the generator matches
  the mean of the discriminator's intermediate features on real data instead of
  fooling its output;
* spectral normalisation of the discriminators (``spectral_norm``).

Regularisers of the discriminator: WGAN-GP (``gradient_penalty``), DRAGAN
(``dragan_penalty``) and ProGAN's drift (``drift``).

Each step logs ``loss_d``, ``loss_g``, ``d_real`` = mean ``D(x)``, ``d_fake`` = mean
``D(G(z))`` (probabilities for the cross-entropy losses, raw scores otherwise), the
gradient norms ``grad_norm_d`` and ``grad_norm_g``, and every penalty and auxiliary term,
into a :class:`GANHistory`; a tqdm bar shows them. With ``output_dir``, sample grids are
saved as PNG files along the way and the diagnostics are plotted to ``diagnostics.png``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attention.validation import check_int, check_non_negative, check_positive
from .figures import plot_diagnostics, require_matplotlib, save_image_grid
from .game import GANGame
from .layers import apply_spectral_norm
from .losses import (
    AdversarialLoss,
    dragan_penalty,
    drift_penalty,
    get_adversarial_loss,
    gradient_penalty,
)
from .tricks import InstanceNoise, ReplayBuffer, discriminator_targets


@dataclass
class GANTrainerConfig:
    """Settings of :class:`GANTrainer`. Every trick is off by default.

    Attributes:
        steps: generator updates.
        loss: adversarial loss name (see :func:`~attnzoo.gan.losses.get_adversarial_loss`).
        lr: Adam learning rate of the generator.
        lr_discriminator: Adam learning rate of the discriminator; None: ``lr``. A larger
            value is the two time-scale update rule (TTUR).
        betas: Adam betas of both (DCGAN's ``(0.5, 0.999)``).
        discriminator_steps: discriminator updates per generator update (WGAN's n_critic).
        label_smoothing: one-sided smoothing of the real label (0.1: real target 0.9).
        label_flip_probability: probability of swapping a sample's label in a
            discriminator update.
        instance_noise: initial std of Gaussian noise added to every discriminator input.
        instance_noise_anneal_steps: steps over which that std falls linearly to 0
            (None: all of ``steps``).
        separate_batches: the discriminator sees real and fake samples in separate
            forward passes instead of one concatenated batch.
        replay_buffer: size of a pool of past fakes per discriminator (0: none).
        feature_matching: the generator's adversarial term becomes the squared distance
            between the mean discriminator features of real and generated samples.
        spectral_norm: spectrally normalise every discriminator layer at construction.
        gradient_penalty: WGAN-GP weight (0: none; 10 in the paper).
        dragan_penalty: DRAGAN weight (0: none; 10 in the paper).
        drift: ProGAN's drift weight (0: none; 1e-3 in the paper).
        grad_clip: clip each network's gradient norm to this (None: no clipping).
        seed: seed of the tricks' randomness (flips, noise, buffer, penalty points).
        progress: show a tqdm bar.
        description: the bar's label.
        output_dir: where sample grids and the diagnostics plot go (None: nowhere).
        sample_every: save a sample grid every this many steps (0: only at the end).
        plot_diagnostics: with ``output_dir``, plot the diagnostics (needs matplotlib).
    """

    steps: int = 1000
    loss: str = "non_saturating"
    lr: float = 2e-4
    lr_discriminator: float | None = None
    betas: tuple[float, float] = (0.5, 0.999)
    discriminator_steps: int = 1
    label_smoothing: float = 0.0
    label_flip_probability: float = 0.0
    instance_noise: float = 0.0
    instance_noise_anneal_steps: int | None = None
    separate_batches: bool = False
    replay_buffer: int = 0
    feature_matching: bool = False
    spectral_norm: bool = False
    gradient_penalty: float = 0.0
    dragan_penalty: float = 0.0
    drift: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    progress: bool = True
    description: str = "gan"
    output_dir: str | Path | None = None
    sample_every: int = 0
    plot_diagnostics: bool = True

    def __post_init__(self) -> None:
        check_int(self.steps, "steps")
        get_adversarial_loss(self.loss)
        check_positive(self.lr, "lr")
        if self.lr_discriminator is not None:
            check_positive(self.lr_discriminator, "lr_discriminator")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"`betas` must be two numbers in [0, 1), got {self.betas}")
        check_int(self.discriminator_steps, "discriminator_steps")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.label_flip_probability < 0.5:
            raise ValueError(
                "`label_flip_probability` must be in [0, 0.5) (flipping half the labels "
                f"erases them), got {self.label_flip_probability}"
            )
        check_non_negative(self.instance_noise, "instance_noise")
        if self.instance_noise_anneal_steps is not None:
            check_int(self.instance_noise_anneal_steps, "instance_noise_anneal_steps")
        check_int(self.replay_buffer, "replay_buffer", minimum=0)
        check_non_negative(self.gradient_penalty, "gradient_penalty")
        check_non_negative(self.dragan_penalty, "dragan_penalty")
        check_non_negative(self.drift, "drift")
        if self.grad_clip is not None:
            check_positive(self.grad_clip, "grad_clip")
        check_int(self.sample_every, "sample_every", minimum=0)
        uses_targets = get_adversarial_loss(self.loss).uses_targets
        if not uses_targets and (self.label_smoothing or self.label_flip_probability):
            raise ValueError(
                f"label smoothing and label flipping need a loss with labels "
                f"(minimax, non_saturating, least_squares); the {self.loss!r} loss has none"
            )


@dataclass
class GANHistory:
    """Per-step diagnostics: series name -> one value per generator step."""

    records: dict[str, list[float]] = field(default_factory=dict)

    def log(self, values: dict[str, float]) -> None:
        """Append one step's values (a series missing before gets NaN for the gap)."""
        length = len(next(iter(self.records.values()))) if self.records else 0
        for key, value in values.items():
            self.records.setdefault(key, [float("nan")] * length).append(float(value))
        for key, series in self.records.items():
            if key not in values:
                series.append(float("nan"))

    def __len__(self) -> int:
        return len(next(iter(self.records.values()))) if self.records else 0

    def mean_last(self, key: str, n: int = 50) -> float:
        """Mean of the last ``n`` values of series ``key``."""
        if key not in self.records:
            raise KeyError(f"no series {key!r}; logged: {sorted(self.records)}")
        tail = self.records[key][-n:]
        return sum(tail) / max(len(tail), 1)

    def plot(self, path: str | Path) -> Path:
        """Plot every series as a PNG (needs matplotlib)."""
        return plot_diagnostics(self.records, path)


Batches = Callable[[int], object] | Iterable[object]


def _grad_norm(parameters: list[nn.Parameter]) -> float:
    grads = [p.grad.detach().flatten() for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.cat(grads).norm())


class GANTrainer:
    """Train a :class:`~attnzoo.gan.game.GANGame` with the options of a config.

    Args:
        game: the networks; put in train mode by :meth:`train`. With
            ``config.spectral_norm`` its discriminators are normalised here, in place.
        config: :class:`GANTrainerConfig` defaults when None.

    Attributes:
        loss: the :class:`~attnzoo.gan.losses.AdversarialLoss`.
        generator_optimizer, discriminator_optimizer: the two Adam optimisers.
        history: the :class:`GANHistory` of every step run so far.
        step: generator steps run so far.
    """

    def __init__(self, game: GANGame, config: GANTrainerConfig | None = None) -> None:
        if not isinstance(game, GANGame):
            raise TypeError(f"`game` must be a GANGame, got {type(game).__name__}")
        self.game = game
        self.config = config = config or GANTrainerConfig()
        self.loss: AdversarialLoss = get_adversarial_loss(config.loss)
        if config.output_dir is not None and config.plot_diagnostics:
            require_matplotlib()
        if config.spectral_norm:
            for discriminator in game.discriminators:
                apply_spectral_norm(discriminator)
        self.generator_params = [p for p in game.generator_parameters() if p.requires_grad]
        self.discriminator_params = [p for p in game.discriminator_parameters() if p.requires_grad]
        self.generator_optimizer = torch.optim.Adam(
            self.generator_params, lr=config.lr, betas=config.betas
        )
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator_params,
            lr=config.lr_discriminator or config.lr,
            betas=config.betas,
        )
        self.noise = InstanceNoise(
            config.instance_noise, config.instance_noise_anneal_steps or config.steps
        )
        self.buffers = [
            ReplayBuffer(config.replay_buffer) if config.replay_buffer else None
            for _ in game.discriminators
        ]
        self.random = torch.Generator().manual_seed(config.seed)
        self.history = GANHistory()
        self.step = 0
        self._batches_drawn = 0

    # -- data -----------------------------------------------------------------------------

    def _next_batch(self, data: Callable[[int], object] | Iterator[object]) -> object:
        batch = data(self._batches_drawn) if callable(data) else next(data)
        self._batches_drawn += 1
        return batch

    # -- discriminator ----------------------------------------------------------------------

    def _noisy(self, x: Tensor) -> Tensor:
        return self.noise(x, self.step, self.random)

    def _real_and_fake_logits(
        self,
        index: int,
        real: Tensor,
        fake: Tensor,
        condition: Tensor | None,
        fake_condition: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        game = self.game
        if self.config.separate_batches:
            return (
                game.discriminate(index, real, condition),
                game.discriminate(index, fake, fake_condition),
            )
        both_conditions = (
            None if condition is None else torch.cat([condition, fake_condition])  # type: ignore[list-item]
        )
        logits = game.discriminate(index, torch.cat([real, fake]), both_conditions)
        # A packed discriminator returns fewer rows than samples; real rows come first.
        rows, samples = logits.shape[0], real.shape[0] + fake.shape[0]
        if (real.shape[0] * rows) % samples:
            raise ValueError(
                f"the discriminator returned {rows} rows for {samples} samples, which does "
                f"not split into the {real.shape[0]} real and {fake.shape[0]} fake ones"
            )
        split = real.shape[0] * rows // samples
        return logits[:split], logits[split:]

    def _discriminator_step(self, batch: object) -> dict[str, float]:
        game, config, loss = self.game, self.config, self.loss
        reals = game.real(batch)
        conditions = game.conditions(batch)
        with torch.no_grad():
            fakes = [f.detach() for f in game.generate(batch).fakes]
        terms: dict[str, Tensor] = {}
        total = torch.zeros((), device=reals[0].device)
        d_real, d_fake = [], []
        for index, (real, fake, condition) in enumerate(zip(reals, fakes, conditions, strict=True)):
            fake_condition = condition
            buffer = self.buffers[index]
            if buffer is not None:
                if condition is None:
                    (fake,) = buffer(fake, generator=self.random)
                else:
                    fake, fake_condition = buffer(fake, condition, generator=self.random)
            real_logits, fake_logits = self._real_and_fake_logits(
                index, self._noisy(real), self._noisy(fake), condition, fake_condition
            )
            if loss.uses_targets:
                real_target, fake_target = discriminator_targets(
                    real_logits.shape[0],
                    fake_logits.shape[0],
                    loss.real_label,
                    loss.fake_label,
                    config.label_smoothing,
                    config.label_flip_probability,
                    generator=self.random,
                    device=real_logits.device,
                    dtype=real_logits.dtype,
                )
                adversarial = loss.discriminator(real_logits, fake_logits, real_target, fake_target)
            else:
                adversarial = loss.discriminator(real_logits, fake_logits)
            total = total + adversarial
            d_real.append(float(loss.score(real_logits.detach()).mean()))
            d_fake.append(float(loss.score(fake_logits.detach()).mean()))

            def critic(
                x: Tensor, index: int = index, condition: Tensor | None = condition
            ) -> Tensor:
                return game.discriminate(index, x, condition)

            if config.gradient_penalty:
                penalty = gradient_penalty(
                    critic, real, fake, config.gradient_penalty, generator=self.random
                )
                terms["gradient_penalty"] = terms.get("gradient_penalty", 0) + penalty
            if config.dragan_penalty:
                penalty = dragan_penalty(critic, real, config.dragan_penalty, generator=self.random)
                terms["dragan_penalty"] = terms.get("dragan_penalty", 0) + penalty
            if config.drift:
                terms["drift"] = terms.get("drift", 0) + drift_penalty(real_logits, config.drift)
        terms.update(game.discriminator_losses(batch, loss, reals))
        for value in terms.values():
            total = total + value
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        total.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.discriminator_params, config.grad_clip)
        grad_norm = _grad_norm(self.discriminator_params)
        self.discriminator_optimizer.step()
        return {
            "loss_d": float(total.detach()),
            "d_real": sum(d_real) / len(d_real),
            "d_fake": sum(d_fake) / len(d_fake),
            "grad_norm_d": grad_norm,
            **{key: float(value.detach()) for key, value in terms.items()},
        }

    # -- generator ----------------------------------------------------------------------------

    def _feature_matching(
        self, index: int, real: Tensor, fake: Tensor, condition: Tensor | None
    ) -> Tensor:
        with torch.no_grad():
            real_features = self.game.features(index, self._noisy(real), condition)
        fake_features = self.game.features(index, self._noisy(fake), condition)
        return (real_features.mean(0) - fake_features.mean(0)).pow(2).mean()

    def _generator_step(self, batch: object) -> dict[str, float]:
        # The discriminators only pass gradients through in this step; freezing their
        # parameters saves computing gradients that would be thrown away.
        for p in self.discriminator_params:
            p.requires_grad_(False)
        try:
            return self._generator_update(batch)
        finally:
            for p in self.discriminator_params:
                p.requires_grad_(True)

    def _generator_update(self, batch: object) -> dict[str, float]:
        game, config = self.game, self.config
        output = game.generate(batch)
        conditions = game.conditions(batch)
        reals = game.real(batch) if config.feature_matching else [None] * len(output.fakes)
        adversarial = torch.zeros((), device=output.fakes[0].device)
        for index, (fake, condition, real) in enumerate(
            zip(output.fakes, conditions, reals, strict=True)
        ):
            if config.feature_matching:
                assert real is not None
                adversarial = adversarial + self._feature_matching(index, real, fake, condition)
            else:
                logits = game.discriminate(index, self._noisy(fake), condition)
                adversarial = adversarial + self.loss.generator(logits)
        terms = game.generator_losses(batch, output)
        total = game.adversarial_weight * adversarial
        for value in terms.values():
            total = total + value
        self.generator_optimizer.zero_grad(set_to_none=True)
        total.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.generator_params, config.grad_clip)
        grad_norm = _grad_norm(self.generator_params)
        self.generator_optimizer.step()
        name = "feature_matching" if config.feature_matching else "adversarial_g"
        return {
            "loss_g": float(total.detach()),
            name: float(adversarial.detach()),
            "grad_norm_g": grad_norm,
            **{key: float(value.detach()) for key, value in terms.items()},
        }

    # -- loop -----------------------------------------------------------------------------------

    def train(self, data: Batches, steps: int | None = None) -> GANHistory:
        """Run ``steps`` generator steps (default: ``config.steps``) and return the history.

        Args:
            data: batches for :meth:`GANGame.real`: a function ``index -> batch``
                (called with 0, 1, 2, ... for each batch drawn) or an iterable.
            steps: generator steps to run now; a trainer can be called again to go on.

        Returns:
            :attr:`history`, every step run so far.
        """
        config = self.config
        steps = config.steps if steps is None else check_int(steps, "steps")
        source = data if callable(data) else iter(data)
        sample_batch: object = None
        output_dir = None if config.output_dir is None else Path(config.output_dir)
        self.game.train()
        bar = tqdm(range(steps), desc=config.description, disable=not config.progress)
        for _ in bar:
            self.game.on_step(self.step, config.steps)
            values: dict[str, float] = {}
            d_values: list[dict[str, float]] = []
            for _ in range(config.discriminator_steps):
                batch = self._next_batch(source)  # type: ignore[arg-type]
                if sample_batch is None:
                    sample_batch = batch
                d_values.append(self._discriminator_step(batch))
            for key in d_values[0]:
                values[key] = sum(v[key] for v in d_values) / len(d_values)
            values.update(self._generator_step(batch))
            if config.instance_noise:
                values["instance_noise_std"] = self.noise.std(self.step)
            self.history.log(values)
            self.step += 1
            if self.step % 10 == 0 or self.step == steps:
                bar.set_postfix(
                    loss_d=f"{values['loss_d']:.3f}",
                    loss_g=f"{values['loss_g']:.3f}",
                    d_real=f"{values['d_real']:.2f}",
                    d_fake=f"{values['d_fake']:.2f}",
                )
            if (
                output_dir is not None
                and config.sample_every
                and self.step % config.sample_every == 0
            ):
                self.save_samples(sample_batch, output_dir / f"samples_{self.step:06d}.png")
        if output_dir is not None:
            self.save_samples(sample_batch, output_dir / f"samples_{self.step:06d}.png")
            if config.plot_diagnostics:
                self.history.plot(output_dir / "diagnostics.png")
        return self.history

    def save_samples(self, batch: object, path: str | Path) -> Path:
        """Save the game's sample images for ``batch`` as a PNG grid."""
        was_training = self.game.training
        self.game.eval()
        with torch.no_grad():
            images = self.game.sample(batch)
        self.game.train(was_training)
        if images.dim() != 4:
            raise ValueError(
                f"sample grids need images (n, channels, height, width); the game's samples "
                f"have shape {tuple(images.shape)}: leave `output_dir` unset for them"
            )
        return save_image_grid(images, path)


def train_gan(game: GANGame, data: Batches, config: GANTrainerConfig | None = None) -> GANHistory:
    """Build a :class:`GANTrainer` and run it for ``config.steps`` steps."""
    return GANTrainer(game, config).train(data)


__all__ = ["GANHistory", "GANTrainer", "GANTrainerConfig", "train_gan"]

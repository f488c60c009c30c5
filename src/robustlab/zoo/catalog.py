"""What each zoo model is for: its description, the threat model it is evaluated at, labels
(such as a deliberately broken model) and whether certified accuracy means something for it.

The training configuration itself is not here: it is the recipe, ``recipes/<name>.toml``, a
``robustlab train --config`` run file.
"""

from __future__ import annotations

from dataclasses import dataclass

# Labels with a meaning the zoo's users should not miss.
LABELS = {
    "catastrophic-overfitting": "broken on purpose: robust to FGSM, not to PGD (a test case for evaluations)",
    "masked": "its training's own attack overstates its robustness (a test case for evaluations)",
    "stage": "an intermediate model another zoo recipe loads (not a defense of its own)",
    "stochastic": "random predictions: its card's attacks see one draw per forward pass, without EOT",
    "test": "a tiny model for the end-to-end test of the zoo's build, not a useful classifier",
}


@dataclass(frozen=True)
class Entry:
    """``eps`` / ``norm``: the threat model of the card's robust and certified accuracies.
    ``images``: the number of test images (the first ones of the test split) the `standard`
    suite runs on. ``certify``: certification methods (``robustlab certify``'s names) whose
    certified accuracy the card records; empty where it would be ~0 by construction."""

    description: str
    eps: float
    norm: str = "Linf"
    images: int = 1000
    labels: tuple[str, ...] = ()
    certify: tuple[str, ...] = ()


CATALOG: dict[str, Entry] = {
    "mnist-natural": Entry("kw-small, natural training (the baseline: not robust)", eps=0.3),
    "mnist-pgd": Entry("kw-small, PGD adversarial training (Madry et al.), 10 steps of 0.04", eps=0.3),
    "mnist-fast-fgsm-overfit": Entry(
        "kw-small, fast FGSM training with step 2 eps: catastrophic overfitting", eps=0.3,
        labels=("catastrophic-overfitting",)),
    "mnist-trades": Entry("small-cnn (TRADES' SmallCNN), TRADES (beta 6), 10 steps of 0.04", eps=0.3),
    "mnist-fast-fgsm": Entry("kw-small, fast FGSM training with step 1.0 eps and a 5-epoch eps ramp (meant stable; it was "
                             "not: 52% under PGD-10 on validation, 20% under standard)", eps=0.3),
    "mnist-yopo": Entry("kw-small, YOPO-5-10 (the paper's MNIST setting)", eps=0.3),
    "mnist-mma": Entry("kw-small, MMA training (MNIST Linf preset: d_max 0.45)", eps=0.3),
    "mnist-bilateral": Entry("kw-small, bilateral adversarial training R-MC-LA (one step of eps): masked, 27% under "
                             "PGD-10 on validation, 0.2% under standard", eps=0.3, labels=("masked",)),
    "mnist-jacobian": Entry("kw-small, Jacobian regularization (weight 0.01, one projection)", eps=0.3),
    "mnist-crown-ibp": Entry("kw-small, CROWN-IBP certified training at eps 0.4 for 0.3", eps=0.3,
                             certify=("ibp", "crown")),
    "mnist-natural-cnn": Entry("small-cnn (C&W's MNIST net), natural training with C&W's recipe (SGD, 50 epochs): the "
                               "model of the C&W tables, mnist-distilled's undefended twin", eps=0.3),
    "mnist-distilled-teacher": Entry(
        "small-cnn (C&W's MNIST net), the teacher of defensive distillation: trained at T = 100 on hard labels "
        "(mnist-distilled's first stage)", eps=0.3, labels=("stage",)),
    "mnist-distilled": Entry("small-cnn, defensive distillation at T = 100 (Papernot et al.; C&W's re-implementation), "
                             "deployed at T = 1", eps=0.3),
    "mnist-odenet": Entry("ODENet (Yan et al.), 64 channels, Euler 0.1, Gaussian-noise training", eps=0.3),
    "mnist-tisode": Entry("TisODE (Yan et al.), 64 channels, Euler 0.05, steady-state term, Gaussian-noise training",
                          eps=0.3),
    "mnist-tisode-fdn": Entry("TisODE with feature denoising (non-local means after the stem), as mnist-tisode",
                              eps=0.3),
    "mnist-tisode-ird": Entry("TisODE behind input randomization (random resize and pad), as mnist-tisode; stochastic",
                              eps=0.3, labels=("stochastic",)),
    "mnist-odenet-natural": Entry("ODENet (Yan et al.), as mnist-odenet but trained on clean images only (TisODE Table 1)",
                                  eps=0.3),
    "mnist-ode-cnn": Entry("the CNN of Yan et al. (ODENet's stem and head around one residual block), Gaussian-noise "
                           "training as mnist-odenet (TisODE Tables 2-4)", eps=0.3),
    "mnist-ode-cnn-natural": Entry("the CNN of Yan et al., as mnist-ode-cnn but trained on clean images only (TisODE "
                                   "Table 1)", eps=0.3),
    "mnist-ode-cnn-fdn": Entry("the CNN of Yan et al. with feature denoising (non-local means after the stem), as "
                               "mnist-ode-cnn (TisODE Table 4)", eps=0.3),
    "mnist-ode-cnn-ird": Entry("the CNN of Yan et al. behind input randomization (random resize and pad), as "
                               "mnist-ode-cnn (TisODE Table 4); stochastic", eps=0.3, labels=("stochastic",)),
    "cifar10-natural": Entry("WRN-16-2, natural training with crop-flip augmentation (the CIFAR-10 baseline: not "
                             "robust)", eps=8 / 255),
    "cifar10-pgd": Entry("WRN-16-2, PGD adversarial training (Madry et al.), 7 steps of 2/255, crop-flip augmentation",
                         eps=8 / 255),
    "cifar10-trades": Entry("WRN-16-2, TRADES (beta 6), 10 steps of 0.007, crop-flip augmentation", eps=8 / 255),
    "mnist-tiny": Entry("a 2-layer MLP trained for a few hundred steps on 3000 images (for the zoo's own test)",
                        eps=0.05, images=50, labels=("test",), certify=("ibp", "crown")),
}

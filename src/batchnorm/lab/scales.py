"""Settings of the lab's experiments per dataset, in one table.

Every experiment's `Config` defaults are its default scale on scikit-learn's 8x8 digits. On 28x28 MNIST
(`--data mnist5k`) the same settings leave the networks undertrained or the run too long: the two-layer CNN sees a
5x5 patch of a 28x28 digit before global pooling, an epoch is 3.3x as many images, each costing ~12x the
convolution work, and a BN-LSTM cannot read 784 pixels one by one (see E12). `DATA_SCALES[data][experiment]` holds
the settings that replace the defaults for that dataset; `runner.config_for` applies them at the default scale
(and the full scale, whose `FULL` overrides come on top), and at the quick scale only the settings in
`STRUCTURAL` (the model and the input, never the budget), so the quick scale stays quick.

How the mnist5k numbers were chosen: the CNN gets two more stride-2 layers (16, 32, 32, 64; receptive field 17
pixels; a BN CNN reached 94-96% validation accuracy in 400 steps of 64, the two-layer one 45-50%), and the epoch-based
CNN experiments (E5, E6, E7) train 3 epochs instead of 8-10, which gives about the steps of the digits run (an
mnist5k epoch has 3,330 images, a digits epoch 999); the step-based experiments keep their steps. The costs were
measured per training step (CPU time, one thread) and multiplied by the runs of each experiment, so that the
whole lab on mnist5k fits about an hour on 2 cores (`--jobs 2`).

Example:
    >>> DATA_SCALES["mnist5k"]["E12"]
    {'sequence': 'rows'}
    >>> settings("E5", "mnist5k", "quick")
    {'channels': (16, 32, 32, 64)}
"""

from __future__ import annotations

__all__ = ["DATA_SCALES", "STRUCTURAL", "CNN_28X28", "settings"]

# The lab CNN for 28x28 inputs: 28 -> 14 -> 7 -> 4 positions, receptive field 17 pixels before global pooling.
CNN_28X28 = (16, 32, 32, 64)

# Settings that change the model or the input (applied at every scale), as opposed to budgets (steps, epochs).
STRUCTURAL = frozenset({"channels", "sequence"})

DATA_SCALES: dict[str, dict[str, dict]] = {
    "mnist5k": {
        "E2": dict(target=0.90, eval_every=10),  # the plain MLP ends at ~92% (x5): it never reaches 95%
        "E3": dict(steps=500),  # the deep sigmoid BN networks reach 84-89% in 300 steps
        "E5": dict(channels=CNN_28X28, epochs=3.0),  # 312 steps at batch 32, 1,249 at batch 8
        "E6": dict(channels=CNN_28X28, epochs=3.0),  # 312 steps at batch 32, 39 at 256 (156 with 4x)
        "E7": dict(channels=CNN_28X28, epochs=3.0),  # 250 steps at batch 40
        "E8": dict(channels=CNN_28X28),
        "E12": dict(sequence="rows"),  # 28 steps of 28 pixels (see E12's notes)
        "E13": dict(channels=CNN_28X28),
        "E15": dict(channels=CNN_28X28),
        "E18": dict(channels=CNN_28X28),
    },
}


def settings(experiment: str, data: str | None, scale: str = "default") -> dict:
    """The settings `DATA_SCALES` gives `experiment` on `data` at `scale` (empty if none).

    Example:
        >>> settings("E1", "digits")
        {}
    """
    table = DATA_SCALES.get(data or "", {}).get(experiment.upper(), {})
    if scale == "quick":
        return {key: value for key, value in table.items() if key in STRUCTURAL}
    return dict(table)

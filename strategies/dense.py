"""DENSE: data-free one-shot federated learning by generator training and ensemble distillation.

Zhang et al., "DENSE: Data-Free One-Shot Federated Learning", NeurIPS 2022,
https://arxiv.org/abs/2112.12371. Clients upload their local models once. The server trains
a generator against the ensemble of those models and distils the ensemble into the global
model on the generated samples, with no data and no extra upload beyond the models.

The generator loss combines the ensemble's cross-entropy on the generator's target labels,
batch-norm statistics matching over the members' BatchNorm layers, and an adversarial term
that rewards samples on which the student (the global model) disagrees with the ensemble.
The members are combined with uniform weights: by default the mean of their probabilities,
with ``datafree-ensemble-output='logits'`` the logit average of the paper. The loop is
:func:`strategies.datafree.train_datafree`.

With ``datafree-student-init='average'`` (the default) the student starts from the
sample-weighted average of the local models, one-shot FedAvg's result, as in FedDF (Lin et
al., NeurIPS 2020, https://arxiv.org/abs/2006.07242); ``'random'`` starts it from the run's
seeded initial weights. With the default budget of 100 generator steps, a random start
stays below one-shot FedAvg on MNIST under strong label skew (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from strategies.base import STRATEGIES
from strategies.datafree import DataFreeSettings, DataFreeStrategy


@STRATEGIES.register("dense")
class DenseStrategy(DataFreeStrategy):
    """DENSE: the ``datafree-*`` settings, with no Co-Boosting additions."""

    name = "DENSE"

    def settings(self) -> DataFreeSettings:
        return DataFreeSettings.from_config(self.config, coboosting=False)

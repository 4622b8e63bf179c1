"""Co-Boosting: data-free one-shot federated learning where data and ensemble improve each other.

Dai et al., "Enhancing One-shot Federated Learning Through Data and Ensemble Co-Boosting",
ICLR 2024, https://arxiv.org/abs/2402.15070. It extends the DENSE loop
(``strategies/dense.py``) in three ways, each set by a ``coboosting-*`` run-config key:

- hard samples: the generator's cross-entropy weighs each sample by ``(1 - p_y)^h``, with
  ``p_y`` the ensemble's probability of the target label, and the student's distillation
  loss weighs each sample by ``(1 - q)^h`` normalised to mean 1, with ``q`` the student's
  probability of the ensemble's class (``coboosting-hardness`` is ``h``);
- input perturbation: every generated batch also enters the sample bank as a copy moved by
  one signed-gradient step of size ``coboosting-epsilon`` that raises the ensemble-student
  KL divergence, relabelled by the members;
- learned ensemble weights: once per epoch, one signed-gradient step of size
  ``coboosting-weight-lr`` on the members' weights lowers the weighted ensemble's
  hardness-weighted cross-entropy against the generator labels on the banked samples, and
  a Euclidean projection keeps the weights on the probability simplex.

Setting a key to 0 turns its part off; with all three at 0 the method is DENSE.
"""

from __future__ import annotations

from strategies.base import STRATEGIES
from strategies.datafree import DataFreeSettings, DataFreeStrategy


@STRATEGIES.register("coboosting")
class CoBoostingStrategy(DataFreeStrategy):
    """Co-Boosting: the ``datafree-*`` settings plus the ``coboosting-*`` ones."""

    name = "Co-Boosting"

    def settings(self) -> DataFreeSettings:
        return DataFreeSettings.from_config(self.config, coboosting=True)

"""Tests for the one-shot logit ensemble of strategies.ensemble."""

import pytest
import torch

from strategies.ensemble import LogitEnsemble


def test_logit_ensemble_averages_member_logits() -> None:
    members = [torch.nn.Linear(4, 3) for _ in range(3)]
    inputs = torch.randn(5, 4)
    expected = torch.stack([member(inputs) for member in members]).mean(dim=0)
    assert torch.allclose(LogitEnsemble(members)(inputs), expected, atol=1e-6)


def test_logit_ensemble_needs_a_member() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        LogitEnsemble([])

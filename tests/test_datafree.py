"""Data-free distillation (DENSE, Co-Boosting): generator, hooks, ensemble weights, loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strategies.datafree as datafree
from fedlab.config import ConfigError, RunConfig
from fedlab.models import build_model
from strategies import STRATEGIES
from strategies.coboosting import CoBoostingStrategy
from strategies.datafree import (
    BatchNormStatistics,
    ConditionalGenerator,
    DataFreeSettings,
    SampleBank,
    WeightedEnsemble,
    balanced_labels,
    hardness_weighted_cross_entropy,
    kl_disagreement,
    perturb_inputs,
    project_to_simplex,
    student_hardness_weights,
    student_step,
    train_datafree,
    update_ensemble_weights,
)
from strategies.dense import DenseStrategy

NUM_CLASSES = 3
IMAGE_SHAPE = (1, 8, 8)
TINY_SETTINGS = DataFreeSettings(
    epochs=2,
    generator_steps=2,
    student_steps=3,
    batch_size=12,
    noise_dim=8,
    generator_channels=4,
    memory_size=100,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("convnet", in_channels=1, num_classes=NUM_CLASSES, image_size=8, width=4, depth=1)


def tiny_ensemble(size: int = 2) -> WeightedEnsemble:
    members = []
    for index in range(size):
        member = tiny_model(100 + index)
        # Non-trivial running statistics, as a trained member would have.
        with torch.no_grad():
            for module in member.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
        members.append(member.eval())
    return WeightedEnsemble(members)


# Generator --------------------------------------------------------------------------------


def test_generator_output_shape_and_range() -> None:
    torch.manual_seed(0)
    generator = ConditionalGenerator(noise_dim=8, num_classes=NUM_CLASSES, image_shape=(1, 28, 28), channels=4)
    with torch.no_grad():
        images = generator(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert images.shape == (5, 1, 28, 28)
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0


def test_generator_reaches_sizes_not_divisible_by_four() -> None:
    torch.manual_seed(0)
    generator = ConditionalGenerator(noise_dim=4, num_classes=2, image_shape=(3, 10, 10), channels=4)
    assert generator(torch.randn(2, 4), torch.tensor([0, 1])).shape == (2, 3, 10, 10)


def test_generator_output_depends_on_label() -> None:
    torch.manual_seed(0)
    generator = ConditionalGenerator(noise_dim=8, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE, channels=4).eval()
    noise = torch.randn(1, 8).repeat(NUM_CLASSES, 1)
    images = generator(noise, torch.arange(NUM_CLASSES))
    for first in range(NUM_CLASSES):
        for second in range(first + 1, NUM_CLASSES):
            assert not torch.allclose(images[first], images[second]), (first, second)


def test_generator_trains_the_embedding_of_used_labels() -> None:
    torch.manual_seed(0)
    generator = ConditionalGenerator(noise_dim=8, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE, channels=4)
    generator(torch.randn(4, 8), torch.tensor([0, 0, 2, 2])).sum().backward()
    gradient = generator.embedding.weight.grad
    assert gradient is not None
    assert gradient[0].abs().sum() > 0
    assert gradient[2].abs().sum() > 0
    assert gradient[1].abs().sum() == 0  # label 1 was not used


def test_generator_rejects_mismatched_labels() -> None:
    generator = ConditionalGenerator(noise_dim=8, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE, channels=4)
    with pytest.raises(ValueError, match="labels must have shape"):
        generator(torch.randn(4, 8), torch.tensor([0, 1]))


def test_balanced_labels_cover_every_class() -> None:
    labels = balanced_labels(12, NUM_CLASSES, torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=NUM_CLASSES).tolist() == [4, 4, 4]


# Batch-norm statistics --------------------------------------------------------------------


def hand_checkable_batchnorm() -> nn.Module:
    layer = nn.BatchNorm2d(2).eval()
    layer.running_mean.copy_(torch.tensor([1.0, 0.0]))
    layer.running_var.copy_(torch.tensor([1.0, 4.0]))
    return nn.Sequential(layer)


def hand_checkable_batch() -> torch.Tensor:
    # Channel 0 is constant 3 (mean 3, variance 0); channel 1 alternates +-2 (mean 0, variance 4).
    batch = torch.empty(2, 2, 2, 2)
    batch[:, 0] = 3.0
    batch[:, 1] = torch.tensor([[2.0, -2.0], [-2.0, 2.0]])
    return batch


def test_batchnorm_hook_matches_hand_computation() -> None:
    model = hand_checkable_batchnorm()
    statistics = BatchNormStatistics([model])
    with statistics.active():
        model(hand_checkable_batch())
    # ||(3, 0) - (1, 0)|| + ||(0, 4) - (1, 4)|| = 2 + 1
    assert statistics.num_layers == 1
    assert statistics.loss().item() == pytest.approx(3.0)


def test_batchnorm_hook_sums_over_models() -> None:
    models = [hand_checkable_batchnorm(), hand_checkable_batchnorm()]
    statistics = BatchNormStatistics(models)
    with statistics.active():
        for model in models:
            model(hand_checkable_batch())
    assert statistics.loss().item() == pytest.approx(6.0)


def test_batchnorm_hook_records_only_while_active() -> None:
    model = hand_checkable_batchnorm()
    statistics = BatchNormStatistics([model])
    model(hand_checkable_batch())
    assert statistics.loss().item() == 0.0
    with statistics.active():
        model(hand_checkable_batch())
    with statistics.active():
        pass  # a new block clears the earlier record
    assert statistics.loss().item() == 0.0


def test_batchnorm_hook_removal_detaches_hooks() -> None:
    model = hand_checkable_batchnorm()
    statistics = BatchNormStatistics([model])
    statistics.remove()
    with statistics.active():
        model(hand_checkable_batch())
    assert statistics.num_layers == 0
    assert statistics.loss().item() == 0.0
    assert not model[0]._forward_hooks


def test_batchnorm_loss_has_gradient_for_the_input() -> None:
    model = hand_checkable_batchnorm()
    statistics = BatchNormStatistics([model])
    batch = hand_checkable_batch().requires_grad_(True)
    with statistics.active():
        model(batch)
    statistics.loss().backward()
    assert batch.grad is not None
    assert batch.grad.abs().sum() > 0


# Ensemble weights -------------------------------------------------------------------------


def test_simplex_projection_hand_case() -> None:
    projected = project_to_simplex(torch.tensor([1.0, 0.5, -1.0]))
    assert torch.allclose(projected, torch.tensor([0.75, 0.25, 0.0]))


@pytest.mark.parametrize(
    "values",
    [[0.2, 0.3, 0.5], [5.0, -3.0, 0.1, 0.1], [-1.0, -1.0], [0.0], [100.0, 100.0, 100.0]],
)
def test_simplex_projection_is_a_distribution(values: list[float]) -> None:
    projected = project_to_simplex(torch.tensor(values))
    assert float(projected.min()) >= 0.0
    assert float(projected.sum()) == pytest.approx(1.0)


def test_simplex_projection_keeps_points_on_the_simplex() -> None:
    point = torch.tensor([0.1, 0.6, 0.3])
    assert torch.allclose(project_to_simplex(point), point)


def test_ensemble_weights_stay_convex_under_updates() -> None:
    ensemble = tiny_ensemble(size=4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        member_logits = torch.randn(4, 16, NUM_CLASSES, generator=generator) * 5
        labels = torch.randint(0, NUM_CLASSES, (16,), generator=generator)
        weights = update_ensemble_weights(ensemble, member_logits, labels, lr=0.2)
        assert float(weights.min()) >= 0.0
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(ensemble.weights, weights)


def test_ensemble_weights_move_to_the_accurate_member() -> None:
    ensemble = tiny_ensemble(size=2)
    labels = torch.arange(NUM_CLASSES).repeat(4)
    accurate = F.one_hot(labels, NUM_CLASSES).float() * 4
    wrong = F.one_hot((labels + 1) % NUM_CLASSES, NUM_CLASSES).float() * 4
    for _ in range(3):
        update_ensemble_weights(ensemble, torch.stack([accurate, wrong]), labels, lr=0.1)
    assert ensemble.weights[0] > ensemble.weights[1]
    assert ensemble.weights.tolist() == pytest.approx([0.8, 0.2])


def test_ensemble_combines_logits_with_its_weights() -> None:
    ensemble = tiny_ensemble(size=2)
    ensemble.set_weights(torch.tensor([0.25, 0.75]))
    x = torch.rand(3, *IMAGE_SHAPE)
    expected = 0.25 * ensemble.members[0](x) + 0.75 * ensemble.members[1](x)
    assert torch.allclose(ensemble(x), expected, atol=1e-6)


def test_probability_ensemble_averages_softmax() -> None:
    ensemble = WeightedEnsemble(list(tiny_ensemble(size=2).members), output="probabilities")
    ensemble.set_weights(torch.tensor([0.25, 0.75]))
    member_logits = torch.randn(2, 5, NUM_CLASSES)
    expected = torch.log(0.25 * member_logits[0].softmax(dim=1) + 0.75 * member_logits[1].softmax(dim=1))
    assert torch.allclose(ensemble.combine(member_logits), expected, atol=1e-6)


def test_probability_ensemble_ignores_large_logits_of_unsure_members() -> None:
    ensemble = WeightedEnsemble(list(tiny_ensemble(size=3).members), output="probabilities")
    # Member 0 is sure of class 0. Members 1 and 2 never saw it and spread large logits
    # over classes 1 to 3, so their average logits outweigh member 0's.
    member_logits = torch.tensor([[[8.0, 0.0, 0.0, 0.0]], [[0.0, 9.0, 9.0, 9.0]], [[0.0, 9.0, 9.0, 9.0]]])
    assert ensemble.combine(member_logits).argmax().item() == 0
    logit_average = WeightedEnsemble(list(tiny_ensemble(size=3).members), output="logits")
    assert logit_average.combine(member_logits).argmax().item() != 0


def test_probability_ensemble_weight_update_stays_finite_at_zero_weight() -> None:
    ensemble = WeightedEnsemble(list(tiny_ensemble(size=2).members), output="probabilities")
    ensemble.set_weights(torch.tensor([1.0, 0.0]))
    labels = torch.arange(NUM_CLASSES)
    weights = update_ensemble_weights(ensemble, torch.randn(2, NUM_CLASSES, NUM_CLASSES), labels, lr=0.1)
    assert torch.isfinite(weights).all()
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)


def test_ensemble_rejects_unknown_output() -> None:
    with pytest.raises(ValueError, match="output must be one of"):
        WeightedEnsemble(list(tiny_ensemble(size=1).members), output="votes")  # type: ignore[arg-type]


@pytest.mark.parametrize("weights", [[0.5, 0.6], [1.5, -0.5], [1.0]])
def test_ensemble_rejects_weights_off_the_simplex(weights: list[float]) -> None:
    ensemble = tiny_ensemble(size=2)
    with pytest.raises(ValueError, match="weights"):
        ensemble.set_weights(torch.tensor(weights))


def test_ensemble_members_stay_frozen_in_eval_mode() -> None:
    ensemble = tiny_ensemble(size=2)
    ensemble.train()
    assert all(not member.training for member in ensemble.members)
    assert all(not parameter.requires_grad for parameter in ensemble.parameters())


# Losses and perturbation ------------------------------------------------------------------


def test_hardness_zero_gives_plain_cross_entropy() -> None:
    logits = torch.randn(6, NUM_CLASSES)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(hardness_weighted_cross_entropy(logits, labels, 0.0), F.cross_entropy(logits, labels))


def test_hardness_weights_favour_unsure_samples() -> None:
    labels = torch.tensor([0])
    confident = torch.tensor([[6.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.5, 0.0, 0.0]])
    ratio_plain = F.cross_entropy(unsure, labels) / F.cross_entropy(confident, labels)
    ratio_weighted = hardness_weighted_cross_entropy(unsure, labels, 2.0) / hardness_weighted_cross_entropy(
        confident, labels, 2.0
    )
    assert ratio_weighted > ratio_plain


def test_student_hardness_weights_have_mean_one() -> None:
    teacher = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    student = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])  # right on the first, wrong on the second
    weights = student_hardness_weights(teacher, student, 1.0)
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[1] > weights[0]
    assert torch.equal(student_hardness_weights(teacher, student, 0.0), torch.ones(2))


def test_kl_disagreement_is_zero_for_equal_logits() -> None:
    logits = torch.randn(4, NUM_CLASSES)
    assert torch.allclose(kl_disagreement(logits, logits, 2.0), torch.zeros(4), atol=1e-6)
    assert (kl_disagreement(logits, -logits, 2.0) > 0).all()


def test_perturbation_raises_disagreement_within_epsilon() -> None:
    ensemble = tiny_ensemble(size=2)
    student = tiny_model(7).eval()
    torch.manual_seed(1)
    images = torch.rand(16, *IMAGE_SHAPE) * 0.8 + 0.1
    epsilon = 0.05
    perturbed = perturb_inputs(ensemble, student, images, epsilon)
    with torch.no_grad():
        before = kl_disagreement(ensemble(images), student(images), 1.0).mean()
        after = kl_disagreement(ensemble(perturbed), student(perturbed), 1.0).mean()
    assert after > before
    assert float((perturbed - images).abs().max()) <= epsilon + 1e-6
    assert float(perturbed.min()) >= 0.0
    assert float(perturbed.max()) <= 1.0


# Sample bank and student ------------------------------------------------------------------


def test_sample_bank_drops_the_oldest_beyond_capacity() -> None:
    bank = SampleBank(capacity=5)
    for start in (0, 3):
        labels = torch.arange(start, start + 3)
        bank.add(labels.float().view(3, 1, 1, 1), torch.zeros(2, 3, NUM_CLASSES), labels)
    images, member_logits, labels = bank.contents()
    assert len(bank) == 5
    assert labels.tolist() == [1, 2, 3, 4, 5]
    assert images.shape == (5, 1, 1, 1)
    assert member_logits.shape == (2, 5, NUM_CLASSES)


def test_sample_bank_draws_distinct_samples() -> None:
    bank = SampleBank(capacity=10)
    labels = torch.arange(6)
    bank.add(labels.float().view(6, 1, 1, 1), torch.randn(2, 6, NUM_CLASSES), labels)
    images, member_logits, drawn = bank.sample(4, torch.Generator().manual_seed(0))
    assert len(set(drawn.tolist())) == 4
    assert member_logits.shape == (2, 4, NUM_CLASSES)
    assert images.view(-1).long().tolist() == drawn.tolist()


def test_empty_sample_bank_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        SampleBank(capacity=4).sample(2, torch.Generator())


def test_student_loss_decreases_on_generated_samples() -> None:
    ensemble = tiny_ensemble(size=2)
    torch.manual_seed(3)
    generator = ConditionalGenerator(8, NUM_CLASSES, IMAGE_SHAPE, channels=4)
    with torch.no_grad():
        images = generator(torch.randn(24, 8), balanced_labels(24, NUM_CLASSES, torch.Generator()))
        member_logits = ensemble.member_logits(images)
    student = tiny_model(9).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    settings = replace(TINY_SETTINGS, temperature=2.0)
    losses = [student_step(student, optimizer, ensemble, images, member_logits, settings) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]


# The whole loop and the strategies --------------------------------------------------------


def run_tiny(settings: DataFreeSettings) -> tuple[WeightedEnsemble, nn.Module, datafree.DataFreeReport]:
    ensemble = tiny_ensemble(size=3)
    student = tiny_model(11)
    before = [p.detach().clone() for p in student.parameters()]
    report = train_datafree(ensemble, student, settings, NUM_CLASSES, IMAGE_SHAPE, seed=0, device=torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    return ensemble, student, report


def test_dense_loop_runs_end_to_end() -> None:
    config = RunConfig(
        strategy="dense", datafree_epochs=2, datafree_generator_steps=2, datafree_student_steps=3,
        datafree_batch_size=12, datafree_noise_dim=8, datafree_generator_channels=4, datafree_memory_size=100,
    )
    settings = DenseStrategy(config).settings()
    assert (settings.hardness, settings.perturb_epsilon, settings.ensemble_weight_lr) == (0.0, 0.0, 0.0)
    ensemble, student, report = run_tiny(settings)
    assert not student.training
    assert report.num_generated == 2 * 2 * 12
    assert report.bank_size == 48
    assert report.ensemble_weights == pytest.approx([1 / 3] * 3)
    for value in (report.generator_loss, report.ce_loss, report.bn_loss, report.student_loss):
        assert torch.isfinite(torch.tensor(value))
    assert report.bn_loss > 0


def test_coboosting_loop_runs_end_to_end() -> None:
    config = RunConfig(
        strategy="coboosting", datafree_epochs=2, datafree_generator_steps=2, datafree_student_steps=3,
        datafree_batch_size=12, datafree_noise_dim=8, datafree_generator_channels=4, datafree_memory_size=30,
        coboosting_weight_lr=0.1,
    )
    settings = CoBoostingStrategy(config).settings()
    assert settings.perturb_epsilon == config.coboosting_epsilon > 0
    ensemble, _student, report = run_tiny(settings)
    # Every generated batch enters the bank twice (plain and perturbed); the bank keeps 30.
    assert report.num_generated == 2 * 2 * 12 * 2
    assert report.bank_size == 30
    weights = torch.tensor(report.ensemble_weights)
    assert float(weights.min()) >= 0.0
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(weights, torch.full((3,), 1 / 3))
    assert torch.allclose(ensemble.weights, weights, atol=1e-6)


def test_loop_is_reproducible_from_the_seed() -> None:
    _, first, _ = run_tiny(TINY_SETTINGS)
    _, second, _ = run_tiny(TINY_SETTINGS)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


@dataclass
class FakeTrainSplit:
    num_classes: int = NUM_CLASSES
    image_shape: tuple[int, int, int] = IMAGE_SHAPE


@dataclass
class FakeData:
    train: FakeTrainSplit


class FakeServer:
    """The parts of ServerRun that DataFreeStrategy.run uses, with a fixed tiny test set."""

    def __init__(self) -> None:
        self.data = FakeData(FakeTrainSplit())
        self.device = torch.device("cpu")
        self.phases: list[str] = []
        torch.manual_seed(5)
        self.test_images = torch.rand(30, *IMAGE_SHAPE)
        self.test_labels = torch.arange(30) % NUM_CLASSES

    def build_model(self, seed_offset: int = 0) -> nn.Module:
        return tiny_model(seed_offset)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.phases.append(name)
        yield

    def evaluate(self, model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return (model(self.test_images).argmax(dim=1) == self.test_labels).float().mean().item()


@pytest.mark.parametrize("student_init", ["average", "random"])
@pytest.mark.parametrize("strategy", ["dense", "coboosting"])
def test_strategy_run_with_fake_server(strategy: str, student_init: str, monkeypatch: pytest.MonkeyPatch) -> None:
    members = list(tiny_ensemble(size=3).members)
    monkeypatch.setattr(datafree, "collect_local_models", lambda _server, _node_ids: (members, [10.0, 20.0, 30.0]))
    config = RunConfig(
        strategy=strategy, datafree_epochs=1, datafree_generator_steps=2, datafree_student_steps=2,
        datafree_batch_size=12, datafree_noise_dim=8, datafree_generator_channels=4, datafree_memory_size=100,
        datafree_student_init=student_init,
    )
    server = FakeServer()
    result = STRATEGIES.get(strategy)(config).run(server, [1, 2, 3])
    assert "server_training" in server.phases
    assert 0.0 <= result.test_accuracy <= 1.0
    assert result.extra["ensemble_size"] == 3
    assert 0.0 <= result.extra["ensemble_test_accuracy"] <= 1.0
    assert result.extra["datafree"]["bank_size"] > 0
    assert result.extra["student_init"] == student_init
    if student_init == "average":
        assert 0.0 <= result.extra["student_init_test_accuracy"] <= 1.0
    else:
        assert result.extra["student_init_test_accuracy"] is None
    assert not isinstance(result.model, WeightedEnsemble)  # the global model is the student


def test_average_models_weights_by_sample_count() -> None:
    first, second = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.fill_(0.0)
        second.weight.fill_(4.0)
        second.bias.fill_(8.0)
    averaged = datafree.average_models([first, second], [2.0, 1.0])
    assert torch.allclose(averaged["weight"], torch.full((1, 2), 2.0))  # (2 * 1 + 4) / 3
    assert torch.allclose(averaged["bias"], torch.full((1,), 8.0 / 3))


def test_average_models_keeps_integer_buffers_integer() -> None:
    first, second = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    first.num_batches_tracked.fill_(4)
    second.num_batches_tracked.fill_(8)
    averaged = datafree.average_models([first, second], [1.0, 1.0])
    assert averaged["num_batches_tracked"].dtype == torch.int64
    assert int(averaged["num_batches_tracked"]) == 6


@pytest.mark.parametrize("weights", [[1.0], [0.0, 0.0], [-1.0, 2.0]])
def test_average_models_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weight"):
        datafree.average_models([nn.Linear(2, 1), nn.Linear(2, 1)], weights)


# Config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("datafree-epochs", 0),
        ("datafree-batch-size", 1),
        ("datafree-generator-lr", 0.0),
        ("datafree-temperature", -1.0),
        ("datafree-bn-weight", -0.5),
        ("datafree-memory-size", 10),
        ("coboosting-epsilon", 1.5),
        ("coboosting-weight-lr", float("inf")),
        ("datafree-ensemble-output", "votes"),
        ("datafree-student-init", "pretrained"),
    ],
)
def test_datafree_keys_reject_out_of_range_values(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config({key: value})
    assert f"{key}={value!r}" in str(error.value)


def test_settings_reject_a_bank_smaller_than_a_batch() -> None:
    with pytest.raises(ValueError, match="memory_size"):
        DataFreeSettings(batch_size=64, memory_size=10)


def test_both_strategies_are_registered() -> None:
    assert STRATEGIES.get("dense") is DenseStrategy
    assert STRATEGIES.get("coboosting") is CoBoostingStrategy


def test_settings_defaults_match_run_config() -> None:
    assert DataFreeSettings.from_config(RunConfig(), coboosting=False) == DataFreeSettings()

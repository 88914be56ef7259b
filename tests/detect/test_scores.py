import torch
from sklearn.metrics import roc_auc_score

from monitor.detect.scores import roc_auc, score_inputs
from monitor.detect.squeezers import parse_squeezer


def test_scores_of_a_known_probability_function() -> None:
    # "probabilities" that depend on the mean pixel: squeezing moves them by a known amount
    def probabilities(x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([m, 1 - m], dim=1)

    x = torch.full((2, 1, 4, 4), 0.3)
    x[1] = 0.8
    batch = score_inputs(probabilities, x, [parse_squeezer("bits:1")])
    # bits:1 maps 0.3 -> 0 and 0.8 -> 1: L1 distance 2·|m - round(m)|
    assert torch.allclose(batch.divergences["bits:1"], torch.tensor([0.6, 0.4]), atol=1e-6)
    assert torch.allclose(batch.confidence, torch.tensor([0.7, 0.8]))
    assert torch.allclose(batch.margin, torch.tensor([0.4, 0.6]), atol=1e-6)
    assert batch.predicted.tolist() == [1, 0]
    expected_entropy = -(0.3 * torch.log(torch.tensor(0.3)) + 0.7 * torch.log(torch.tensor(0.7)))
    assert torch.isclose(batch.entropy[0], expected_entropy)
    assert torch.equal(batch.max_divergence, batch.divergences["bits:1"])


def test_roc_auc_matches_scikit_learn_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    neg = torch.randint(0, 5, (300,), generator=gen).float()
    pos = torch.randint(2, 8, (200,), generator=gen).float()
    labels = [0] * 300 + [1] * 200
    expected = roc_auc_score(labels, torch.cat([neg, pos]).numpy())
    assert abs(roc_auc(neg, pos) - expected) < 1e-9


def test_large_batches_are_scored_in_chunks_with_the_same_result(monkeypatch) -> None:
    import monitor.detect.scores as scores

    weights = torch.randn(3 * 16 * 16, 5, generator=torch.Generator().manual_seed(0))
    calls = []

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return torch.softmax(x.flatten(1) @ weights, dim=1)

    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    squeezers = [parse_squeezer("bits:3"), parse_squeezer("median:2")]
    whole = score_inputs(probabilities, x, squeezers)
    assert calls == [30]  # one call: the inputs and both squeezed versions
    monkeypatch.setattr(scores, "CHUNK_VALUES", 4 * 3 * 16 * 16)
    calls.clear()
    chunked = score_inputs(probabilities, x, squeezers)
    assert calls == [12, 12, 6]  # 4 + 4 + 2 inputs, each with its squeezed versions
    assert torch.equal(whole.predicted, chunked.predicted)
    for name in ("confidence", "margin", "entropy", "roughness"):
        assert torch.allclose(getattr(whole, name), getattr(chunked, name))
    for name in whole.divergences:
        assert torch.allclose(whole.divergences[name], chunked.divergences[name])
        assert torch.equal(whole.squeezed[name], chunked.squeezed[name])

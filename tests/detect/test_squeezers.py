import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter as scipy_median

from monitor.detect.squeezers import bit_depth, default_squeezers, median_filter, parse_squeezer


def test_bit_depth_has_exactly_two_to_the_bits_levels() -> None:
    x = torch.rand(4, 3, 16, 16)
    for bits in (1, 2, 4, 5):
        squeezed = bit_depth(x, bits)
        assert len(torch.unique(squeezed)) <= 2**bits
        assert (squeezed - x).abs().max() <= 0.5 / (2**bits - 1) + 1e-6
    assert torch.equal(
        bit_depth(torch.tensor([0.0, 0.49, 0.51, 1.0]), 1), torch.tensor([0.0, 0.0, 1.0, 1.0])
    )


@pytest.mark.parametrize("k", [2, 3, 5])
def test_median_filter_matches_scipy(k: int) -> None:
    x = torch.rand(3, 2, 9, 7)
    ours = median_filter(x, k).numpy()
    theirs = scipy_median(x.numpy(), size=(1, 1, k, k), mode="reflect")
    np.testing.assert_allclose(ours, theirs, atol=1e-7)


def test_names_and_paper_defaults() -> None:
    assert parse_squeezer("bits:4").name == "bits:4"
    assert default_squeezers(1) == ("bits:1", "median:2")
    assert default_squeezers(3) == ("bits:5", "median:2")
    for bad in ("bits:0", "median:1", "blur:2", "bits"):
        with pytest.raises(ValueError):
            parse_squeezer(bad)


def _nlm_reference(x: np.ndarray, search: int, patch: int, strength: float) -> np.ndarray:
    """Non-local means written pixel by pixel (the definition the vectorized version follows)."""
    c, h, w = x.shape
    r, p = search // 2, patch // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            total, weights = np.zeros(c), 0.0
            for dy in range(search):
                for dx in range(search):
                    d2 = []
                    for a in range(max(0, i - p), min(h, i + p + 1)):
                        for b in range(max(0, j - p), min(w, j + p + 1)):
                            diff = x[:, a, b] - padded[:, a + dy, b + dx]
                            d2.append(np.mean(diff**2))
                    weight = np.exp(-np.mean(d2) / (strength / 255) ** 2)
                    total += weight * padded[:, i + dy, j + dx]
                    weights += weight
            out[:, i, j] = total / weights
    return out


def test_non_local_means_matches_its_definition_and_denoises() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 7, 8, generator=gen, dtype=torch.float64)
    ours = parse_squeezer("nlm:5-3-40")(x)[0].numpy()
    np.testing.assert_allclose(ours, _nlm_reference(x[0].numpy(), 5, 3, 40), atol=1e-9)
    # a flat image stays flat; a noisy edge comes out closer to the clean edge
    flat = torch.full((1, 3, 12, 12), 0.4)
    assert torch.allclose(parse_squeezer("nlm:11-3-4")(flat), flat)
    edge = torch.zeros(1, 3, 24, 24)
    edge[..., 12:] = 0.8
    noisy = edge + 0.03 * torch.randn(edge.shape, generator=gen)
    denoised = parse_squeezer("nlm:11-3-8")(noisy)
    assert (denoised - edge).square().mean() < 0.5 * (noisy - edge).square().mean()


def test_colour_candidates_follow_the_paper() -> None:
    from monitor.detect.squeezers import candidates_for

    assert {"bits:4", "bits:5", "median:2", "nlm:11-3-4", "nlm:13-3-2"} <= set(candidates_for(3))
    assert "bits:1" in candidates_for(1) and "bits:1" not in candidates_for(3)
    for name in candidates_for(3):
        assert parse_squeezer(name).name == name
    for bad in ("nlm:4-3-4", "nlm:11-11-4", "nlm:11-3-0", "nlm:11-3"):
        with pytest.raises(ValueError):
            parse_squeezer(bad)

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

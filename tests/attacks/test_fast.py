import torch

from monitor.attacks import pgd
from monitor.attacks.fast import accelerate


def test_fast_mode_keeps_robust_accuracy_close(trained_cnn, digits) -> None:
    """bf16 + channels_last (compile is for CUDA; it is checked by the benchmark there)."""
    fast = accelerate(trained_cnn, compile=False)
    x, y = digits.x, digits.y
    with torch.no_grad():
        exact = (trained_cnn(pgd(trained_cnn, x, y, 0.1, seed=0)).argmax(1) == y).float().mean()
        quick = (trained_cnn(pgd(fast, x, y, 0.1, seed=0)).argmax(1) == y).float().mean()
    assert abs(float(exact) - float(quick)) <= 0.02
    assert fast(x[:4]).dtype == torch.float32

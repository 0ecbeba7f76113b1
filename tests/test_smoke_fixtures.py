import torch


def test_tiny_defense_is_accurate(tiny_defense, mnist_test_small):
    x, y = mnist_test_small
    acc = (tiny_defense.predict(x).argmax(1) == y).float().mean().item()
    assert acc > 0.85
    assert x.min() >= 0 and x.max() <= 1 and x.shape == (200, 1, 28, 28)

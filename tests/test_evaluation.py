import pytest

from hf_rlhf.eval.generation import bootstrap_ci


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    small = bootstrap_ci([0.0, 1.0] * 10, seed=0)
    large = bootstrap_ci([0.0, 1.0] * 500, seed=0)
    assert small.mean == large.mean == 0.5
    assert small.low < 0.5 < small.high
    assert (large.high - large.low) < (small.high - small.low) / 4
    constant = bootstrap_ci([0.7] * 30)
    assert constant.low == constant.high == pytest.approx(0.7)
    with pytest.raises(ValueError):
        bootstrap_ci([])

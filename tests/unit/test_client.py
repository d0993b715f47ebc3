"""The reference client's reconnect policy, pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control.cli.client import backoff_delay

policies = st.fixed_dictionaries(
    {
        "base_s": st.floats(0.01, 60),
        "factor": st.floats(1, 10),
        "jitter": st.floats(0, 1),
        "max_s": st.floats(60, 3600),
    }
)


@given(policy=policies, attempt=st.integers(0, 10_000), r=st.floats(0, 1, exclude_max=True))
def test_delay_is_the_capped_exponential_less_a_jittered_share(
    policy: dict[str, float], attempt: int, r: float
) -> None:
    ceiling = min(policy["max_s"], policy["base_s"] * policy["factor"] ** min(attempt, 64))
    delay = backoff_delay(policy, attempt, lambda: r)
    assert ceiling * (1 - policy["jitter"]) - 1e-9 <= delay <= ceiling + 1e-9
    assert delay <= policy["max_s"] + 1e-9


def test_the_shipped_policy_doubles_to_its_cap() -> None:
    policy = {"base_s": 1.0, "factor": 2.0, "jitter": 0.5, "max_s": 60.0}
    no_jitter = [backoff_delay(policy, n, lambda: 0.0) for n in range(8)]
    assert no_jitter == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(policy, 3, lambda: 0.999999) > 4.0  # at most half taken off

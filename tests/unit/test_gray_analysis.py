"""Canary analysis (control/gray/analysis.py): settings parsed with every problem at once,
and judge: a breach beyond the ratio, a pass within it, and no data never a pass nor a
breach (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control.gray.analysis import METRICS, Analysis, PoolFigures, judge

CFG = Analysis()


def pool(
    connections: int = 200,
    handshakes: float = 200,
    failures: float = 0,
    closes: float = 100,
    abnormal: float = 0,
    frames: float = 1000,
    errors: float = 0,
    core: float = 0,
    nodes: int = 2,
) -> PoolFigures:
    return PoolFigures(
        nodes=nodes,
        connections=connections,
        handshakes=handshakes,
        handshake_failures=failures,
        closes=closes,
        abnormal_closes=abnormal,
        frames=frames,
        error_frames=errors,
        core_errors=core,
    )


def test_defaults_and_parsing_keep_unnamed_ratios() -> None:
    cfg, problems = Analysis.parse({"max_ratio": {"abnormal_close_rate": 1.5}, "window_s": 60})
    assert problems == []
    assert cfg.max_ratio["abnormal_close_rate"] == 1.5
    assert cfg.max_ratio["handshake_failure_rate"] == 2.0
    assert cfg.window_s == 60


def test_bad_analysis_lists_every_problem() -> None:
    _, problems = Analysis.parse(
        {"max_ratio": {"latency": 2, "core_error_rate": 0.5}, "min_connections": 0, "x": 1}
    )
    text = "\n".join(problems)
    assert "analysis.x: unknown key" in text
    assert "analysis.min_connections" in text
    assert "analysis.max_ratio.latency: unknown metric" in text
    assert "analysis.max_ratio.core_error_rate: must be at least 1" in text


def test_canary_disconnect_rate_beyond_ratio_is_a_breach() -> None:
    v = judge(pool(abnormal=60), pool(abnormal=3), CFG)  # 20 % against 1 %
    assert v.kind == "breach"
    assert "abnormal_close_rate" in v.why
    assert v.figures["canary"]["abnormal_closes"] == 60
    assert v.figures["ratios"]["abnormal_close_rate"] == 20.0


def test_within_ratio_passes_and_floor_spares_a_zero_stable_rate() -> None:
    assert judge(pool(abnormal=4), pool(abnormal=3), CFG).kind == "pass"
    # Stable 0 %, canary 1 of 300 sessions: below the 1 % floor, not an infinite ratio.
    assert judge(pool(abnormal=1), pool(abnormal=0), CFG).kind == "pass"


def test_too_little_traffic_is_inconclusive() -> None:
    v = judge(pool(connections=3, closes=2, handshakes=5, abnormal=5), pool(), CFG)
    assert v.kind == "inconclusive"
    assert "canary pool" in v.why


counts = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@st.composite
def figures(draw: st.DrawFn, nodes: int | None = None) -> PoolFigures:
    return PoolFigures(
        nodes=draw(st.integers(0, 5)) if nodes is None else nodes,
        connections=draw(st.integers(0, 10_000)),
        handshakes=draw(counts),
        handshake_failures=draw(counts),
        closes=draw(counts),
        abnormal_closes=draw(counts),
        frames=draw(counts),
        error_frames=draw(counts),
        core_errors=draw(counts),
    )


@given(figures(), figures(nodes=0), st.booleans())
def test_no_data_never_passes_nor_breaches(
    some: PoolFigures, none: PoolFigures, flip: bool
) -> None:
    canary, stable = (none, some) if flip else (some, none)
    assert judge(canary, stable, CFG).kind == "inconclusive"


@given(figures(), figures(), st.integers(1, 1000), st.integers(1, 1000))
def test_too_little_traffic_never_passes_nor_breaches(
    canary: PoolFigures, stable: PoolFigures, min_conns: int, min_hs: int
) -> None:
    cfg = Analysis(min_connections=min_conns, min_handshakes=min_hs)
    short = any(
        f.nodes == 0 or f.sessions < min_conns or f.handshakes < min_hs for f in (canary, stable)
    )
    if short:
        assert judge(canary, stable, cfg).kind == "inconclusive"
    else:
        assert judge(canary, stable, cfg).kind in ("pass", "breach")


@given(figures(nodes=1))
def test_a_canary_like_the_stable_pool_never_breaches(same: PoolFigures) -> None:
    assert judge(same, same, CFG).kind != "breach"
    assert set(judge(same, same, CFG).figures["canary"]) >= set(METRICS)

"Market regimes and performance metrics on the real BTC / ETH month, checked against plain numpy and vectorbt."
import math
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from trader.core import Bar
from trader.data import load_candles
from trader.intelligence import (MarketRegimeAnalyzer, PerformanceMonitor, Trend, Volatility, RegimeError,
                                 PerformanceError, exposure)

SYMBOLS = ('BTC/USDT', 'ETH/USDT')
MINUTES_PER_YEAR = 365 * 24 * 60
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.rename")


@pytest.fixture(scope='module')
def candles():
    return {s: load_candles(s) for s in SYMBOLS}


@pytest.fixture(scope='module')
def batch(candles):
    mra = MarketRegimeAnalyzer()
    return {s: mra.classify(df) for s, df in candles.items()}


def bars(symbol, df):
    ts = df.index.as_unit('ms').asi8
    for t, (o, h, l, c, v) in zip(ts, df[['open', 'high', 'low', 'close', 'volume']].to_numpy()):
        yield Bar(symbol, int(t), o, h, l, c, v, 60_000)


# --- regimes: numbers by hand -------------------------------------------------------------------------

def hand_numbers(close: np.ndarray, t: int, n=60, w=60, lookback=10_080):
    "Efficiency ratio, realized vol and its percentile at row t, by loops over plain numpy windows."
    c = close[t - n:t + 1]
    er = abs(c[-1] - c[0]) / sum(abs(c[i] - c[i - 1]) for i in range(1, len(c)))
    def rv(k):  # std (ddof=1) of the w log returns ending at row k, annualized for 1m bars
        lr = np.log(close[k - w + 1:k + 1]) - np.log(close[k - w:k])
        m = lr.sum() / w
        return math.sqrt(((lr - m) ** 2).sum() / (w - 1)) * math.sqrt(MINUTES_PER_YEAR)
    history = [rv(k) for k in range(max(w, t - lookback + 1), t + 1)]  # rv is defined from row w on
    return er, rv(t), sum(x <= history[-1] for x in history) / len(history)


@pytest.mark.parametrize('symbol', SYMBOLS)
@pytest.mark.parametrize('when', ['2024-08-05 06:24', '2024-08-05 01:30', '2024-08-12 09:00', '2024-08-24 23:59'])
def test_regime_numbers_by_hand(candles, batch, symbol, when):
    close = candles[symbol].close.to_numpy()
    t = candles[symbol].index.get_loc(pd.Timestamp(when, tz='UTC'))
    er, rv, pct = hand_numbers(close, t)
    row = batch[symbol].iloc[t]
    assert row.efficiency == pytest.approx(er, rel=1e-9)
    assert row.net_return == pytest.approx(close[t] / close[t - 60] - 1, rel=1e-9)
    assert row.realized_vol == pytest.approx(rv, rel=1e-9)
    assert row.percentile == pytest.approx(pct, abs=1e-12)
    expected_vol = 'high' if pct > 0.9 else 'low' if pct < 0.25 else 'normal'
    expected_trend = 'range' if er < 0.3 else ('up' if close[t] > close[t - 60] else 'down')
    assert (row.volatility, row.trend) == (expected_vol, expected_trend)


def test_warm_up_rows_are_unknown(batch):
    r = batch['BTC/USDT']
    assert (r.trend.iloc[:60] == 'unknown').all() and r.trend.iloc[60] != 'unknown'
    # volatility needs 1440 realized-vol values; the first is at row 60
    assert (r.volatility.iloc[:60 + 1439] == 'unknown').all() and r.volatility.iloc[60 + 1439] != 'unknown'


# --- regimes: the crash -------------------------------------------------------------------------------

@pytest.mark.parametrize('symbol', SYMBOLS)
def test_august_5_crash_is_high_volatility(batch, symbol):
    r = batch[symbol]
    assert r.loc['2024-08-05 06:24', 'volatility'] == 'high'
    night = r.loc['2024-08-05 00:00':'2024-08-05 07:59']
    assert (night.volatility == 'high').mean() > 0.9
    assert (night.volatility == 'low').sum() == 0
    # the realized vol at the low is several times the month's median
    assert r.loc['2024-08-05 06:24', 'realized_vol'] > 4 * r.realized_vol.median()


# --- regimes: incremental == batch over the whole month -------------------------------------------------

@pytest.mark.parametrize('symbol', SYMBOLS)
def test_incremental_equals_batch(candles, batch, symbol):
    mra = MarketRegimeAnalyzer()
    live = [mra.on_bar(b) for b in bars(symbol, candles[symbol])]
    b = batch[symbol]
    assert [r.trend.value for r in live] == list(b.trend)
    assert [r.volatility.value for r in live] == list(b.volatility)
    for col in ('efficiency', 'net_return', 'realized_vol', 'percentile'):
        np.testing.assert_allclose([getattr(r, col) for r in live], b[col].to_numpy(), rtol=1e-9, equal_nan=True, err_msg=col)
    assert live[-1].as_of == int(candles[symbol].index[-1].value // 10**6) + 60_000
    crash = live[candles[symbol].index.get_loc(pd.Timestamp('2024-08-05 06:24', tz='UTC'))]
    assert crash.volatility is Volatility.HIGH
    assert mra.size_multiplier(symbol) == (0.5 if live[-1].volatility is Volatility.HIGH else 1.0)


def test_size_multiplier_in_the_crash(candles):
    mra = MarketRegimeAnalyzer(size_multipliers={'high': 0.25})
    mra.warm_up('BTC/USDT', candles['BTC/USDT'].loc[:'2024-08-05 06:24'])
    assert mra.regime('BTC/USDT').volatility is Volatility.HIGH
    assert mra.size_multiplier('BTC/USDT') == 0.25
    assert mra.symbols == ['BTC/USDT']


def test_symbols_are_independent(candles):
    "Interleaved bars of two symbols give each symbol its own batch answer."
    mra, small = MarketRegimeAnalyzer(lookback=300, min_history=50), slice('2024-08-04 20:00', '2024-08-05 04:00')
    seq = sorted([b for s in SYMBOLS for b in bars(s, candles[s].loc[small])], key=lambda b: (b.timestamp, b.symbol))
    out = {s: [] for s in SYMBOLS}
    for b in seq: out[b.symbol].append(mra.on_bar(b).volatility.value)
    for s in SYMBOLS: assert out[s] == list(mra.classify(candles[s].loc[small]).volatility)


def test_regime_errors():
    mra = MarketRegimeAnalyzer()
    with pytest.raises(RegimeError, match="no bars seen for 'BTC/USDT'"): mra.regime('BTC/USDT')
    mra.on_bar(Bar('BTC/USDT', 60_000, 1, 1, 1, 1, 1))
    assert mra.regime('BTC/USDT').trend is Trend.UNKNOWN and mra.size_multiplier('BTC/USDT') == 1.0
    with pytest.raises(RegimeError, match='bar.timestamp'): mra.on_bar(Bar('BTC/USDT', 60_000, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match='trend_window'): MarketRegimeAnalyzer(trend_window=1)
    with pytest.raises(ValueError, match='low_pct, high_pct'): MarketRegimeAnalyzer(low_pct=0.9, high_pct=0.5)
    with pytest.raises(ValueError, match="no 'close' column"): mra.classify(pd.DataFrame({'open': [1.0, 2.0]}))


# --- performance: vectorbt as the independent computation -----------------------------------------------

@pytest.fixture(scope='module')
def vbt():
    return pytest.importorskip('vectorbt')


@pytest.fixture(scope='module')
def hourly(candles):
    "BTC hourly closes: every 60th minute from the first (the month has no gaps)."
    return candles['BTC/USDT'].close.iloc[::60]


@pytest.mark.slow
def test_equity_metrics_match_vectorbt(vbt, hourly):
    equity = 10_000 * hourly / hourly.iloc[0]
    pm = PerformanceMonitor(); pm.record_equity_series(equity, 'hold')
    m = pm.metrics('hold')
    ret = equity.pct_change().iloc[1:].vbt.returns(freq='1h')
    assert pm.periods_per_year('hold') == pytest.approx(8760)
    assert m['sharpe'] == pytest.approx(ret.sharpe_ratio(), rel=1e-9)
    assert m['sortino'] == pytest.approx(ret.sortino_ratio(), rel=1e-9)
    assert m['volatility'] == pytest.approx(ret.annualized_volatility(), rel=1e-9)
    assert m['annualized_return'] == pytest.approx(ret.annualized(), rel=1e-9)
    assert m['total_return'] == pytest.approx(ret.total(), rel=1e-9)
    assert m['max_drawdown'] == pytest.approx(equity.vbt.drawdowns.max_drawdown(), rel=1e-9)
    assert m['max_drawdown'] == pytest.approx(ret.max_drawdown(), rel=1e-9)
    roll = pm.rolling(24, 'hold')
    np.testing.assert_allclose(roll.sharpe.to_numpy(), ret.rolling_sharpe_ratio(24).to_numpy(), rtol=1e-9, equal_nan=True)
    # the same marks fed one at a time, as live, give the same numbers
    live = PerformanceMonitor()
    for t, e in equity.items(): live.record_equity(t, e, 'hold')
    pd.testing.assert_frame_equal(live.summary(), pm.summary())


@pytest.mark.slow
def test_portfolio_metrics_match_vectorbt(vbt, hourly):
    "A moving-average crossover on the BTC hours, simulated by vectorbt, scored by both."
    fast, slow = hourly.rolling(12).mean(), hourly.rolling(48).mean()
    entries, exits = fast > slow, fast < slow
    entries.iloc[-1], exits.iloc[-1] = False, True  # end flat: every trade closed
    pf = vbt.Portfolio.from_signals(hourly, entries, exits, init_cash=10_000, fees=0.001, freq='1h')
    value = pf.value()
    pm = PerformanceMonitor()
    # vectorbt's first return is value[0] / init_cash - 1: mark the initial cash one period earlier
    pm.record_equity(value.index[0] - pd.Timedelta('1h'), 10_000.0); pm.record_equity_series(value)
    trades = pf.trades.records_readable
    assert (trades.Status == 'Closed').all() and len(trades) >= 5
    for _, t in trades.iterrows():
        pm.record_trade(t.PnL, 'ma_cross', t['Entry Timestamp'], t['Exit Timestamp'], 'BTC/USDT', 'buy', t['Entry Fees'] + t['Exit Fees'])
    m, tot = pm.metrics('ma_cross'), pm.metrics()
    assert tot['sharpe'] == pytest.approx(pf.sharpe_ratio(), rel=1e-9)
    assert tot['sortino'] == pytest.approx(pf.sortino_ratio(), rel=1e-9)
    assert tot['max_drawdown'] == pytest.approx(pf.max_drawdown(), rel=1e-9)
    assert tot['total_return'] == pytest.approx(pf.total_return(), rel=1e-9)
    assert m['trades'] == pf.trades.count()
    assert m['win_rate'] == pytest.approx(pf.trades.win_rate(), rel=1e-12)
    assert m['profit_factor'] == pytest.approx(pf.trades.profit_factor(), rel=1e-9)
    assert m['expectancy'] == pytest.approx(pf.trades.expectancy(), rel=1e-9)
    # the duration of the deepest drawdown: peak to recovery (or to the end when still under water)
    dd = pf.drawdowns.records_readable
    deepest = dd.loc[(dd['Valley Value'] / dd['Peak Value']).idxmin()]
    assert tot['max_drawdown_duration'] == deepest['End Timestamp'] - deepest['Peak Timestamp']
    # exposure: vectorbt's position mask marks the bars after whose close a position is held
    mask = pf.position_mask().to_numpy()
    assert not mask[-1]
    assert tot['exposure'] == pytest.approx(mask.sum() / len(mask), rel=1e-9)  # len(mask) periods: the marks span one more hour


# --- performance: small properties ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50)), max_size=12), st.integers(0, 100), st.integers(1, 200))
def test_exposure_matches_a_minute_grid(raw, start, length):
    "Exposure equals the share of unit steps covered by at least one interval, counted one by one."
    intervals = [(a, a + d) for a, d in raw]
    end = start + length
    covered = sum(any(a <= k < b for a, b in intervals) for k in range(start, end))
    assert exposure(intervals, start, end) == pytest.approx(covered / length)


def test_performance_errors():
    pm = PerformanceMonitor()
    with pytest.raises(PerformanceError, match='equity: must be a positive finite number'): pm.record_equity(0, -1.0)
    with pytest.raises(PerformanceError, match='ts: must be an int'): pm.record_equity('yesterday', 1.0)
    with pytest.raises(PerformanceError, match="strategy: must be a non-empty name other than 'total'"): pm.record_trade(1.0, 'total', 0, 1)
    with pytest.raises(PerformanceError, match='strictly increasing'):
        pm.record_equity_series(pd.Series([1.0, 2.0], index=[5, 5]))
    with pytest.raises(PerformanceError, match='freq'): PerformanceMonitor(freq='0h')

"""Benchmark: exit-check time per price update in AdvancedPositionManager for 1, 100 and 10,000 open positions.

    python tests/benchmarks/bench_positions.py [n_bars]

Positions are BTC/USDT longs and shorts opened at the first bar's close with stops and targets 30-50 % away (so
none fires and every update checks every position), a mix of percent and ATR trailing stops (far), and time
limits of a week. The updates are real bundled Binance 1m candles (`on_bar`: open/high/low/close, gap and
trailing logic, ATR update) and their closes as ticks (`on_price`). The time is wall-clock CPU per update, the
median of 5 passes over `n_bars` updates; per position is that divided by the number of positions.
"""
import statistics, sys, time
import numpy as np
from trader.core import Bar, Fill, Side, Signal
from trader.data import load_candles
from trader.positions import AdvancedPositionManager, ExitPolicy

def manager(n:int, first_close:float, t0:int) -> AdvancedPositionManager:
    "n open positions, none of which will exit during the run."
    rng = np.random.default_rng(0)
    pm = AdvancedPositionManager(exit_policy=ExitPolicy(atr_period=14))
    for k in range(n):
        side = ('buy', 'sell')[k % 2]; s = 1 if side == 'buy' else -1
        entry = first_close * (1 + rng.uniform(-0.001, 0.001))
        stop, target = entry * (1 - s * rng.uniform(0.3, 0.5)), entry * (1 + s * rng.uniform(0.3, 0.5))
        policy = [ExitPolicy(time_limit=7 * 86_400), ExitPolicy(trailing_pct=0.4, time_limit=7 * 86_400),
                  ExitPolicy(trailing_atr=100_000.0)][k % 3]
        pm.open_position(Signal('BTC/USDT', side, entry, stop=stop, target=target, strategy=f's{k % 7}'),
                         [Fill(f'e{k}', f't{k}', 'BTC/USDT', Side(side), entry, 0.001, timestamp=t0)],
                         position_id=f'p{k}', exit_policy=policy)
    assert len(pm.books['BTC/USDT']) == n
    return pm

def time_updates(pm, updates, passes:int=5) -> float:
    "Median seconds per update."
    out = []
    for _ in range(passes):
        t = time.perf_counter()
        for u in updates:
            if u(pm): raise AssertionError('an exit fired; the benchmark wants every position checked every time')
        out.append((time.perf_counter() - t) / len(updates))
    return statistics.median(out)

def main(n_bars:int=2_000):
    c = load_candles('BTC/USDT').iloc[:n_bars + 1]
    t = c.index.asi8 // (10**6 if c.index.asi8[0] > 10**14 else 1)
    bars = [Bar('BTC/USDT', int(ts), o, h, l, cl, v) for ts, (o, h, l, cl, v) in zip(t[1:], c.iloc[1:].itertuples(index=False))]
    t0 = int(t[0]) + 60_000
    print(f"exit check per update, {n_bars} real BTC/USDT 1m bars, median of 5 passes")
    print(f"{'positions':>10} {'on_bar us':>10} {'per pos us':>11} {'on_price us':>12} {'per pos us':>11}")
    for n in (1, 100, 10_000):
        pm = manager(n, float(c.close.iloc[0]), t0)
        bar_s = time_updates(pm, [lambda pm, b=b: pm.on_bar(b) for b in bars])
        tick_s = time_updates(pm, [lambda pm, b=b: pm.on_price(b.symbol, b.close, b.close_time) for b in bars])
        print(f"{n:>10,} {bar_s * 1e6:>10.1f} {bar_s * 1e6 / n:>11.3f} {tick_s * 1e6:>12.1f} {tick_s * 1e6 / n:>11.3f}")

if __name__ == '__main__':
    main(*(int(a) for a in sys.argv[1:]))

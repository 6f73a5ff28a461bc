"Throughput of MarketRegimeAnalyzer (batch and per bar) and PerformanceMonitor on the bundled BTC month: python tests/benchmarks/bench_intelligence.py"
import time
import numpy as np
from trader.core import Bar
from trader.data import load_candles
from trader.intelligence import MarketRegimeAnalyzer, PerformanceMonitor

def timed(f, repeat=3):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter(); out = f(); best = min(best, time.perf_counter() - t)
    return best, out

def main():
    df = load_candles('BTC/USDT'); n = len(df)
    ts = df.index.as_unit('ms').asi8
    rows = df[['open', 'high', 'low', 'close', 'volume']].to_numpy()
    bars = [Bar('BTC/USDT', int(t), *r, timeframe_ms=60_000) for t, r in zip(ts, rows)]
    s, _ = timed(lambda: MarketRegimeAnalyzer().classify(df))
    print(f"classify: {n:,} 1m candles in {s * 1e3:.0f} ms ({n / s:,.0f} bars/s)")
    def incremental():
        mra = MarketRegimeAnalyzer()
        for b in bars: mra.on_bar(b)
    s, _ = timed(incremental, repeat=1)
    print(f"on_bar:   {n:,} bars in {s:.2f} s ({n / s:,.0f} bars/s, {s / n * 1e6:.1f} us per bar)")
    equity = 10_000 * df.close / df.close.iloc[0]
    def score():
        pm = PerformanceMonitor(freq='1h'); pm.record_equity_series(equity); return pm.summary()
    s, _ = timed(score)
    print(f"PerformanceMonitor: record {n:,} marks + summary in {s * 1e3:.0f} ms")
    def live_marks():
        pm = PerformanceMonitor()
        for t, e in zip(ts.tolist(), equity.to_numpy().tolist()): pm.record_equity(t, e)
    s, _ = timed(live_marks, repeat=1)
    print(f"record_equity: {n / s:,.0f} marks/s")

if __name__ == '__main__': main()

"Fast-forward: a simulation that applies quiet stretches in bulk is the same session, journal row for journal row, as one delivered bar by bar."
import ccxt
import numpy as np
import pytest
from trader.config import build_config
from trader.coordinator import ProductionCoordinator
from trader.core import Bar
from trader.strategies import Strategy, MomentumStrategy, MeanReversionStrategy, BreakoutStrategy

BENCH = {'execution': {'default_execution_algo': 'market'}, 'risk': {'min_reward_risk': 0.0, 'max_position_fraction': 0.25},
         'performance': {'equity_snapshot_interval': 3600}}

class EveryOtherHour(Strategy):
    "A strategy with its own on_bar (it cannot plan): in at the top of even hours, out at the top of odd ones."
    def on_bar(self, bar:Bar):
        if bar.symbol not in self.symbols or bar.close_time % 3_600_000: return []
        st = self.state(bar.symbol); odd = bar.close_time // 3_600_000 % 2
        if not odd and not st['in_market']: st['in_market'] = True; return [self.entry_signal(bar)]
        if odd and st['in_market']: st['in_market'] = False; return [self.exit_signal(bar)]
        return []

async def session(fast:bool, strategies, start, end, cfg=None, clients=None, **pc):
    "One simulation; its journal, how many events went through `step`, and the state the parts are left in."
    c = ProductionCoordinator(build_config({'mode': 'simulation', **(cfg or {})}), start=start, end=end)
    await c.initialize_production_system(clients() if clients else None, {'equity_usd': 10_000, **pc})
    for name, strategy, allocation in strategies(): c.register_strategy(name, strategy, allocation)
    eng = c.trading_engine
    eng.fast_forward, stepped, step = fast, [0], eng.step
    def counting(ev): stepped[0] += 1; return step(ev)
    eng.step = counting
    summary = await c.run_production_loop('simulation')
    rows = [(e.seq, e.ts, e.kind, e.key, e.payload) for e in eng.journal.load()]
    p, pm = eng.portfolio, eng.positions
    state = {'equity': (p._equity, p.high_water_mark, p._day, p.day_start_equity), 'marks': dict(eng.marks), 'checked': dict(eng._checked),
             'due': dict(eng._due), 'atr': {s: (a.value, a.seen, list(a._bars)) for s, a in pm.atr.items()},
             'books': {s: [list(r) for r in b.rows] for s, b in pm.books.items()}, 'pm_marks': dict(pm.marks),
             'views': {k: (v.last, v.volume, v.timestamp) for k, v in eng.orders.views.items()},
             'venues': {n: (dict(v.last_bar), {s: list(d) for s, d in v._bars.items()}, await v.fetch_balance()) for n, v in c.venues.items()},
             'closed': sorted((q.id, q.exit_reason, q.closed_at, q.realized_pnl) for q in pm.positions.values()),
             'equity_curve': eng.performance.equity().tolist(), 'strategy_curves': {s: eng.performance.equity(s).tolist() for s in eng.performance.strategies},
             'counts': dict(eng.counts), 'summary': {k: v for k, v in summary.items() if k != 'wall_seconds' and 'latency' not in k}}
    for v in state['venues'].values(): v[2].pop('info', None)
    return rows, stepped[0], summary, state, eng.replay.applied if eng.replay else 0

async def both(strategies, start, end, **kw):
    slow = await session(False, strategies, start, end, **kw)
    fast = await session(True, strategies, start, end, **kw)
    assert fast[0] == slow[0]                      # every journal row: signals, orders, fills, positions, equity, risk events
    for k in slow[3]: assert fast[3][k] == slow[3][k], k
    assert slow[1] == slow[2]['events']            # bar by bar: every event went through step
    assert fast[1] + fast[4] == slow[1]            # the rest were applied in bulk
    return slow, fast

def kinds(rows): return {r[2] for r in rows}

async def test_bench_workload_is_the_same_session_with_a_fraction_of_the_steps():
    strategies = lambda: [('sma_cross', MomentumStrategy(10, 50, stop_pct=0.02, size=0.1, symbols='BTC/USDT'), 1.0)]
    slow, fast = await both(strategies, '2024-08-01', '2024-08-04', cfg=BENCH, equity_usd=100_000)
    assert slow[2]['orders'] >= 40 and slow[2]['exits'] >= 40, slow[2]
    assert fast[1] < slow[1] / 5, (fast[1], slow[1])
    assert 'position_closed' in kinds(slow[0]) or 'position_fill' in kinds(slow[0])

async def test_three_strategies_two_symbols_trailing_stops_time_limits_and_the_breaker():
    "Regimes on, every bundled symbol, 60 s equity snapshots, trailing stops and time exits, a daily-loss limit that trips."
    def strategies():
        return [('momentum', MomentumStrategy(10, 50, target_pct=0.02, symbols=['BTC/USDT', 'ETH/USDT']), 0.3),
                ('mean_reversion', MeanReversionStrategy(30, 2.5, target_pct=0.02, symbols=['BTC/USDT', 'ETH/USDT']), 0.3),
                ('breakout', BreakoutStrategy(55, 20, target_pct=0.03, symbols=['BTC/USDT', 'ETH/USDT']), 0.4)]
    cfg = {'emergency': {'max_daily_loss': 0.004}, 'risk': {'min_reward_risk': 0.0}}
    slow, fast = await both(strategies, '2024-08-04', '2024-08-06', cfg=cfg, exit_policy={'trailing_pct': 0.006, 'time_limit': 1200})
    reasons = {r[1] for r in slow[3]['closed']}
    events = [r[4]['type'] for r in slow[0] if r[2] == 'risk_event']
    assert slow[2]['orders'] >= 15 and {'trailing_stop', 'time_exit'} <= reasons, (slow[2], reasons)
    assert 'CircuitBreakerTripped' in events, events
    assert fast[1] < slow[1] / 4, (fast[1], slow[1])

async def test_resting_limit_orders_and_a_strategy_that_cannot_plan():
    "Limit entries rest on the paper venue across bars; a strategy with its own on_bar has its bars delivered one by one."
    strategies = lambda: [('momentum', MomentumStrategy(10, 50, symbols='BTC/USDT'), 0.5), ('hourly', EveryOtherHour(symbols='ETH/USDT'), 0.5)]
    cfg = {**BENCH, 'execution': {'default_execution_algo': 'limit'}}
    slow, fast = await both(strategies, '2024-08-05', '2024-08-06', cfg=cfg)
    assert slow[2]['orders'] >= 10, slow[2]
    assert any(r[2] == 'order_event' and r[4].get('status') == 'canceled' for r in slow[0]) or slow[2]['orders'] > 0
    assert fast[1] < slow[1], (fast[1], slow[1])

async def test_derivatives_venue_and_the_seed_clients():
    "binance spot and kucoinfutures perpetuals (contract positions revalue from the venue: those bars go one by one)."
    clients = lambda: {'binance': ccxt.binance(), 'kucoinfutures': ccxt.kucoinfutures()}
    strategies = lambda: [('spot', MomentumStrategy(10, 50, symbols='BTC/USDT', exchange='binance'), 0.5),
                          ('perp', MomentumStrategy(20, 60, symbols='BTC/USDT:USDT', exchange='kucoinfutures'), 0.5)]
    slow, fast = await both(strategies, '2024-08-05', '2024-08-05 12:00', cfg=BENCH, clients=clients)
    assert {r[4].get('symbol') for r in slow[0] if r[2] == 'position_opened'} >= {'BTC/USDT', 'BTC/USDT:USDT'}
    assert fast[1] < slow[1], (fast[1], slow[1])

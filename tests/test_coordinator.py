"ProductionCoordinator: the spec's initialize_production_system, the seed's usage, emergency shutdown + restart, determinism."
import asyncio, json, math
from pathlib import Path
import ccxt
import pandas as pd
import pytest
import trader
from trader.config import build_config, ConfigError
from trader.coordinator import ProductionCoordinator
from trader.data import load_candles
from trader.orders import OrderRequest
from trader.paper import PaperExchange
from trader.store import Journal, rebuild_state
from trader.strategies import MomentumStrategy, MeanReversionStrategy, BreakoutStrategy

MARKETS = Path(trader.__file__).parent / 'sample' / 'markets'
def bundled(venue): return json.loads((MARKETS / f'{venue}.json').read_text())
SEED = {'symbol': 'BTC/USDT:USDT', 'side': 'buy', 'entry': 45000, 'stop': 44000, 'target': 47000, 'strategy': 'momentum', 'exchange': 'kucoinfutures'}

def clients(): return {'binance': ccxt.binance(), 'kucoinfutures': ccxt.kucoinfutures()}

async def coordinator(start='2024-08-05', end='2024-08-06', journal_path=None, cfg=None, exchange_clients='both', **pc):
    c = ProductionCoordinator(build_config({'mode': 'simulation', **(cfg or {})}), journal_path=journal_path, start=start, end=end)
    await c.initialize_production_system(clients() if exchange_clients == 'both' else exchange_clients,
                                         portfolio_config={'equity_usd': 10000, **pc})
    return c

def register_three(c):
    c.register_strategy('momentum', MomentumStrategy(10, 50, target_pct=0.02), 0.30)
    c.register_strategy('mean_reversion', MeanReversionStrategy(30, 2.5, target_pct=0.02), 0.30)
    c.register_strategy('breakout', BreakoutStrategy(55, 20, target_pct=0.03), 0.40)

# ------------------------------------------------------------------ initialize_production_system
async def test_initialize_production_system_spec_call():
    c = await coordinator()
    eng = c.trading_engine
    assert set(c.venues) == {'binance', 'kucoinfutures'} and all(isinstance(v, PaperExchange) for v in c.venues.values())
    for name, v in c.venues.items():     # each mimics its exchange's real markets; equity split evenly
        sym = 'BTC/USDT' if name == 'binance' else 'BTC/USDT:USDT'
        mine, raw = v.markets[sym], bundled(name)[sym]
        assert {k: mine.get(k) for k in ('id', 'taker', 'maker', 'contractSize', 'spot', 'swap')} == {k: raw.get(k) for k in ('id', 'taker', 'maker', 'contractSize', 'spot', 'swap')}
        assert mine['limits']['amount']['min'] == raw['limits']['amount']['min']
        assert (await v.fetch_balance())['total'] == {'USDT': 5000.0}
    assert set(eng.orders.clients) == {'binance', 'kucoinfutures'}
    assert eng.paper_venues == c.venues and eng.config is c.config and c.mode == 'simulation'
    assert eng.queue.max_size == c.config.signal.max_queue_size and eng.risk.breaker.max_consecutive_errors == c.config.emergency.max_consecutive_errors
    assert eng.journal is not None and eng.alerts.journal is eng.journal
    assert c.data_notes[0] == 'kucoinfutures BTC/USDT:USDT has no data of its own: priced from the bundled BTC/USDT series'
    assert any('kucoinfutures BTC/USDT:USDT' in a.message for a in eng.alerts.history)
    await eng.update_pnl()
    assert eng.equity() == pytest.approx(10_000.0)
    assert eng.contract_size('BTC/USDT:USDT', 'kucoinfutures') == bundled('kucoinfutures')['BTC/USDT:USDT']['contractSize'] == 0.001

async def test_initialize_without_clients_trades_a_paper_binance():
    c = await coordinator(exchange_clients=None)
    assert list(c.venues) == ['binance'] and (await c.venues['binance'].fetch_balance())['total'] == {'USDT': 10000.0}
    assert c.data_notes == []

async def test_initialize_refuses_bad_mode_live_without_opt_in_and_bad_config():
    c = ProductionCoordinator(build_config({'mode': 'simulation'}))
    with pytest.raises(ValueError, match='mode must be one of'): await c.initialize_production_system(None, mode='backtest')
    with pytest.raises(PermissionError, match='confirm_live'): await c.initialize_production_system(clients(), mode='live')
    with pytest.raises(RuntimeError, match='initialize_production_system'): c.trading_engine
    with pytest.raises(ConfigError) as e: ProductionCoordinator(build_config({'mode': 'backtest'}))
    assert e.value.key == 'mode'

# ------------------------------------------------------------------ the seed's usage, as written
async def test_seed_usage_as_written():
    c = await coordinator()
    register_three(c)
    eng = c.trading_engine
    assert eng.portfolio.allocations == {'momentum': 0.30, 'mean_reversion': 0.30, 'breakout': 0.40}
    result = await c.submit_signal(dict(SEED))
    assert result.status == 'filled', result
    report = c.trading_engine.analytics.generate_execution_report('1d')
    positions, totals = c.trading_engine.positions.get_position_summary()
    kc = c.venues['kucoinfutures']
    (vpos,) = [p for p in await kc.fetch_positions() if p['contracts']]
    (trade,) = await kc.fetch_my_trades('BTC/USDT:USDT')
    row = positions.loc[result.position_id]
    pos = eng.positions.positions[result.position_id]
    # in contracts of 0.001 BTC, an integer number of them (KuCoin's amount step is 1 contract)
    assert pos.contract_size == 0.001 and vpos['contractSize'] == 0.001
    assert row.amount == vpos['contracts'] == trade['amount'] == result.size and float(row.amount).is_integer()
    assert row.entry_price == pytest.approx(trade['price'], rel=1e-12)
    # the fee by hand: contracts x 0.001 x price x the market's rate for that liquidity
    rate = bundled('kucoinfutures')['BTC/USDT:USDT'][trade['takerOrMaker']]
    assert row.fees == pytest.approx(trade['amount'] * 0.001 * trade['price'] * rate, rel=1e-9)
    # the mark is a real close of the bundled series, and the P&L is (mark - entry) x contracts x 0.001
    closes = set(load_candles('BTC/USDT', '2024-08-05', '2024-08-05 00:10').close)
    assert row.mark in closes
    assert row.unrealized_pnl == pytest.approx((row.mark - trade['price']) * trade['amount'] * 0.001, rel=1e-9, abs=1e-9)
    assert vpos['unrealizedPnl'] == pytest.approx(row.unrealized_pnl, abs=1e-9)
    assert totals['unrealized_pnl'] == pytest.approx(row.unrealized_pnl, abs=1e-9)
    # the report saw the one execution
    assert len(report['orders']) == 1 and set(report) >= {'orders', 'summary', 'by_algo', 'by_venue'}
    assert c.data_notes and 'kucoinfutures BTC/USDT:USDT' in c.data_notes[0]

async def test_seed_position_open_notional_counts_contract_size():
    "get_position_summary's open_notional is in the quote currency: contracts x contract_size x mark."
    c = await coordinator()
    register_three(c)
    result = await c.submit_signal(dict(SEED))
    positions, totals = c.trading_engine.positions.get_position_summary()
    row = positions.loc[result.position_id]
    assert totals['open_notional'] == pytest.approx(row.amount * 0.001 * row.mark, rel=1e-9)
    # the risk taken and the cost are in quote too: contracts x 0.001 BTC, from the first fill on
    held = c.trading_engine.positions.held[result.position_id]
    fills = result.fills
    assert held.initial_risk == pytest.approx(sum((f.price - SEED['stop']) * f.amount * 0.001 for f in fills), rel=1e-9)
    assert held.cost_basis == pytest.approx(sum(f.price * f.amount * 0.001 for f in fills), rel=1e-9)

async def test_seed_execution_report_is_in_quote():
    "The seed's derivatives fill in the execution report: notional, shortfall and fees in USDT (contracts x 0.001 BTC), not in contracts."
    c = await coordinator()
    register_three(c)
    result = await c.submit_signal(dict(SEED))
    row = c.trading_engine.analytics.generate_execution_report('1d')['orders'].iloc[0]
    (f,) = result.fills
    assert row.contract_size == 0.001
    assert row.notional == pytest.approx(f.price * f.amount * 0.001, rel=1e-12)             # about 0.0075 BTC: hundreds of USDT
    assert row.paper_notional == pytest.approx(result.size * 0.001 * SEED['entry'], rel=1e-12)
    assert row.delay_cost == pytest.approx(result.size * 0.001 * (row.arrival_price - SEED['entry']), rel=1e-9)
    rates = {bundled('kucoinfutures')['BTC/USDT:USDT'][k] for k in ('maker', 'taker')}
    assert any(f.fee / (f.price * f.amount * 0.001) == pytest.approx(r, rel=1e-9) for r in rates)   # the venue charged on USDT notional
    assert row.fees == pytest.approx(f.fee, rel=1e-12)
    assert row.fees_bps == pytest.approx(f.fee / (result.size * 0.001 * SEED['entry']) * 1e4, rel=1e-9)   # on the paper notional in USDT

async def test_seed_risk_at_the_stop_is_within_risk_per_trade():
    "risk_per_trade is 'equity lost if the stop is hit': the seed's stop (44,000) measured from the actual fill must respect it."
    c = await coordinator()
    register_three(c)
    result = await c.submit_signal(dict(SEED))
    f = result.fills[0]
    loss_at_stop = (f.price - SEED['stop']) * sum(x.amount for x in result.fills) * 0.001
    assert loss_at_stop <= c.config.risk.risk_per_trade * 10_000 * 1.01, f"{loss_at_stop:.2f} USDT at risk, budget {c.config.risk.risk_per_trade * 10_000:.2f}"

async def test_seed_loop_runs_strategies_and_report_counts_every_order():
    c = await coordinator(end='2024-08-05 06:00')
    register_three(c)
    await c.submit_signal(dict(SEED))
    summary = await c.run_production_loop('simulation', duration=6 * 3600)
    report = c.trading_engine.analytics.generate_execution_report('1d')
    assert summary['orders'] > 1 and summary['positions'] > 1, summary
    assert len(report['orders']) == summary['orders'] + summary['exits']
    assert not c.trading_engine.running and not c.trading_engine._loops
    assert c.trading_engine.positions.positions['pos-000001'].symbol == 'BTC/USDT:USDT'

async def test_each_strategy_has_an_equity_curve_and_they_add_up_to_the_account():
    "Each strategy's equity is its allocation of the starting equity plus its positions' P&L; their gains add up to the account's."
    c = await coordinator(start='2024-08-04', end='2024-08-06', exchange_clients=None, cfg={'risk': {'min_reward_risk': 0.0}})
    register_three(c)
    await c.run_production_loop('simulation')
    eng = c.trading_engine; perf = eng.performance
    assert perf.strategies == ['breakout', 'mean_reversion', 'momentum']
    start = {'momentum': 3000.0, 'mean_reversion': 3000.0, 'breakout': 4000.0}
    summary = perf.summary()
    for name, capital in start.items():
        curve = perf.equity(name)
        assert len(curve) == len(perf.equity()) and curve.iloc[0] == pytest.approx(capital, abs=0.5)
        assert curve.iloc[-1] == pytest.approx(capital + eng.positions.strategy_pnl()[name], rel=1e-12)
        assert summary.loc[name, 'total_return'] == pytest.approx(curve.iloc[-1] / curve.iloc[0] - 1) and summary.loc[name, 'trades'] > 0
    gains = sum(perf.equity(n).iloc[-1] - capital for n, capital in start.items())
    assert gains == pytest.approx(perf.equity().iloc[-1] - 10_000, abs=0.01) and abs(gains) > 1

async def test_entries_are_sized_within_the_chosen_venues_cash():
    "Equity is split across venues (5,000 USDT each): an approved entry must fit the venue it goes to, not fail its balance check."
    c = await coordinator(end='2024-08-05 06:00')
    register_three(c)
    await c.submit_signal(dict(SEED))
    await c.run_production_loop('simulation', duration=6 * 3600)
    failed = [r for r in c.trading_engine.results if 'order.balance' in ' '.join(r.reasons)]
    assert failed == [], failed[0]
    assert c.trading_engine.counts['errors'] == 0

# ------------------------------------------------------------------ emergency shutdown, then a restart
def mk(**kw):
    return {'symbol': 'BTC/USDT', 'side': 'buy', 'entry': 58000, 'stop': 57000, 'target': 60000, 'strategy': 'manual',
            'exchange': 'binance', 'algo': 'market', 'size': 0.01, **kw}

async def _session_with_positions_and_orders(path, twap_entry=False):
    c = await coordinator(end='2024-08-05 06:00', journal_path=path)
    c.register_strategy('manual', MomentumStrategy(10, 50, symbols=[]), 1.0)
    eng = c.trading_engine
    r1 = await c.submit_signal(mk())
    r2 = await c.submit_signal(mk(symbol='BTC/USDT:USDT', exchange='kucoinfutures'))
    assert r1.status == r2.status == 'filled'
    # working orders: resting limits far from the market on both venues
    await eng.orders.execute(OrderRequest('BTC/USDT', 'buy', 0.01, algo='limit', limit_price=40_000.0), venue='binance', wait=False)
    await eng.orders.execute(OrderRequest('BTC/USDT:USDT', 'sell', 5, algo='limit', limit_price=80_000.0), venue='kucoinfutures', wait=False)
    twap = None
    if twap_entry:   # and an entry of a different strategy working as a TWAP, one slice filled
        c.trading_engine.portfolio.allocations['manual'] = 0.5
        c.register_strategy('slow', MomentumStrategy(10, 50, symbols=[]), 0.5)
        twap = asyncio.ensure_future(eng.execute_signal(mk(algo='twap', size=0.006, strategy='slow')))
        twap_parent = lambda: next((p for p in eng.orders.parents.values() if p.algo == 'twap'), None)
        await c.feed.run(eng.handle, until=lambda: twap_parent() is not None and twap_parent().filled > 0)
        assert 0 < twap_parent().filled < 0.006 and not twap.done()
    assert len(await c.venues['binance'].fetch_open_orders()) == 1   # the limit (the TWAP's slice has filled)
    assert len(await c.venues['kucoinfutures'].fetch_open_orders()) == 1
    assert len(eng.orders.active_orders) == 2 + twap_entry
    return c, twap

async def _check_nothing_left(c):
    for name, v in c.venues.items():
        assert await v.fetch_open_orders() == [], name
        bal = await v.fetch_balance()
        assert all(abs(x) < 1e-9 for x in bal['used'].values()), (name, bal['used'])
    assert abs((await c.venues['binance'].fetch_balance())['total'].get('BTC', 0.0)) < 1e-12
    assert all(abs(p['contracts'] or 0) < 1e-12 for p in await c.venues['kucoinfutures'].fetch_positions())

async def test_emergency_shutdown_leaves_nothing_on_the_venues_and_the_journal_restores_state(tmp_path):
    path = tmp_path / 'session.sqlite'
    c, _ = await _session_with_positions_and_orders(path)
    eng = c.trading_engine
    summary = await c.emergency_shutdown('test: fire drill')
    assert summary['open_positions_left'] == [] and summary['working_orders_left'] == [] and len(summary['canceled_orders']) == 2
    await _check_nothing_left(c)
    assert not eng.running and eng.risk.killed is not None
    assert any(a.level == 'critical' and 'EMERGENCY' in a.message for a in eng.alerts.history)
    # the engine's books agree with the venues: realized P&L = change in USDT
    usdt = 0.0
    for v in c.venues.values(): usdt += (await v.fetch_balance())['total']['USDT']
    realized = {pid: p.realized_pnl for pid, p in eng.positions.positions.items()}
    assert usdt - 10_000 == pytest.approx(sum(realized.values()), abs=1e-6)
    eng.journal.close()
    # a restart: a new Journal on the same file
    st = rebuild_state(Journal(path))
    assert sorted(st.positions) == sorted(realized) and len(realized) == 2
    for pid, p in st.positions.items():
        assert p.amount == 0 and p.realized_pnl == pytest.approx(realized[pid], abs=1e-9)
    assert st.open_orders == [] and st.open_positions == []
    assert sorted(o.status.value for o in st.orders.values()) == ['canceled', 'canceled', 'filled', 'filled', 'filled', 'filled']
    assert any(a['level'] == 'critical' and 'EMERGENCY' in a['message'] for a in st.alerts)
    # a new session on the same journal: its execution analytics span the restart
    again = await coordinator(journal_path=path)
    assert again.trading_engine.analytics.records == eng.analytics.records and len(eng.analytics.records) == 6

async def test_emergency_shutdown_during_a_working_twap_entry_leaves_nothing(tmp_path):
    "An entry still working when the emergency comes: its fills so far must be closed too, not booked after close_all."
    c, twap = await _session_with_positions_and_orders(tmp_path / 'session.sqlite', twap_entry=True)
    summary = await c.emergency_shutdown('test: fire drill')
    r = await twap
    assert 0 < r.parent.filled < 0.006
    assert summary['working_orders_left'] == [] and len(summary['canceled_orders']) == 3
    assert c.trading_engine.positions.open_positions() == [], c.trading_engine.positions.open_positions()
    await _check_nothing_left(c)

# ------------------------------------------------------------------ determinism
async def _session(start, end, seed=7):
    c = await coordinator(start=start, end=end, cfg={'seed': seed})
    register_three(c)
    summary = await c.run_production_loop('simulation')
    eng = c.trading_engine
    fills = [(f.client_order_id, f.symbol, f.side.value, f.price, f.amount, f.timestamp, f.venue)
             for p in eng.orders.parents.values() for f in p.fills]
    venue_trades = [(t['symbol'], t['side'], t['price'], t['amount'], t['timestamp']) for v in c.venues.values() for t in await v.fetch_my_trades()]
    return sorted(fills), sorted(venue_trades), summary

async def test_simulation_is_deterministic_and_depends_on_the_data():
    a, va, sa = await _session('2024-08-05 00:00', '2024-08-05 08:00')
    b, vb, sb = await _session('2024-08-05 00:00', '2024-08-05 08:00')
    assert len(a) >= 4, sa
    assert a == b and va == vb
    assert [sa[k] for k in ('orders', 'exits', 'rejected', 'end_equity')] == [sb[k] for k in ('orders', 'exits', 'rejected', 'end_equity')]
    c, vc, sc = await _session('2024-08-06 00:00', '2024-08-06 08:00')
    assert c != a and vc != va and len(c) >= 1
    assert {x[5] for x in c}.isdisjoint({x[5] for x in a})   # other timestamps: other data

# ------------------------------------------------------------------ work that outlives the data (no hang)
from trader.core import Signal
from trader.strategies import Strategy

async def _three_minutes():
    c = await coordinator(start='2024-08-05 00:00', end='2024-08-05 00:03', exchange_clients=None)
    c.register_strategy('manual', Strategy(symbols=[], name='manual'), 1.0)
    return c

@pytest.mark.timeout(60)
async def test_a_twap_outliving_the_replay_finishes_on_the_last_prices():
    "Three minutes of data, then a 10-minute TWAP: the slices go out on the simulated clock, the call returns."
    c = await _three_minutes()
    last = load_candles('BTC/USDT', '2024-08-05 00:00', '2024-08-05 00:03').close.iloc[-1]
    sig = Signal('BTC/USDT', 'buy', float(last), stop=float(last) * 0.98, target=float(last) * 1.05, strategy='manual', size=0.01, algo='twap', exchange='paper')
    r = await asyncio.wait_for(c.submit_signal(sig), 30)
    eng = c.trading_engine
    assert r.parent is not None and r.parent.is_terminal and r.parent.filled == pytest.approx(0.01)
    assert len(r.parent.children) > 1                                    # sliced, not one order
    assert eng.clock.time() * 1000 > c.feed.events[-1].close_time         # time moved past the data to send them
    assert not eng.orders.active_orders

@pytest.mark.timeout(60)
async def test_the_loop_returns_when_its_duration_ends_with_an_order_working():
    "A TWAP entry still slicing when the duration runs out: the loop gives it the grace period on the clock, then returns."
    c = await coordinator(start='2024-08-05 00:00', end='2024-08-05 06:00', exchange_clients=None)
    c.register_strategy('manual', Strategy(symbols=[], name='manual'), 1.0)
    eng = c.trading_engine
    px = c.feed.events[0].close
    eng.submit(Signal('BTC/USDT', 'buy', px, stop=px * 0.95, target=px * 1.1, strategy='manual', size=0.01, algo='twap', exchange='paper'))
    t0 = c.feed.events[0].close_time
    summary = await asyncio.wait_for(c.run_production_loop('simulation', duration=600), 30)
    (parent,) = eng.orders.parents.values()
    assert summary['events'] == sum(e.close_time <= t0 + 600_000 for e in c.feed.events)   # ten minutes of both symbols
    assert 0 < parent.filled < 0.01                                  # it was still slicing when the ten minutes ended
    dt = eng.clock.time() * 1000 - t0
    assert (600 + 30) * 1000 <= dt <= (600 + 31) * 1000              # the stop's 30 s grace passed on the simulated clock, then the cancel
    assert parent.status == 'canceled' and not eng.orders.active_orders   # what was left is cancelled, and what filled is booked
    assert [p.amount for p in eng.positions.open_positions()] == [pytest.approx(parent.filled, abs=1e-12)]

@pytest.mark.timeout(60)
async def test_emergency_shutdown_with_signals_queued_on_a_stopped_engine_returns():
    "Signals queued after the engine stopped have no consumer: the shutdown must not wait for them."
    c = await _three_minutes()
    await c.run_production_loop('simulation')   # all the data: the engine stops, the feed is exhausted
    eng = c.trading_engine
    px = c.feed.events[-1].close
    eng.submit(Signal('BTC/USDT', 'buy', px, stop=px * 0.98, target=px * 1.05, strategy='manual', size=0.01, exchange='paper'))
    assert len(eng.queue) == 1 and not eng.running
    summary = await asyncio.wait_for(c.emergency_shutdown('test'), 30)
    assert summary['open_positions_left'] == [] and summary['working_orders_left'] == []

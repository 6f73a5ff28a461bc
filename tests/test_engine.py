"LiveTradingEngine: wiring, start / stop, signal execution on real candles, bad input, fault injection."
import asyncio, logging, math
import ccxt
import pytest
from trader.clock import SimClock
from trader.config import build_config, ConfigError
from trader.core import Signal, SignalError, Bar
from trader.data import load_candles, load_markets
from trader.feed import candle_events
from trader.paper import PaperExchange
from trader.orders import SmartOrderManager, OrderRequest
from trader.exchange import ExchangeClient
from trader.positions import AdvancedPositionManager
from trader.risk import RiskManager
from trader.portfolio import PortfolioManager
from trader.analytics import ExecutionAnalytics
from trader.alerts import Alerts
from trader.store import Journal
from trader.engine import LiveTradingEngine

SLICE = ('2024-08-05 00:00', '2024-08-05 00:10')   # ten real minutes of Binance BTC/USDT

class Manual:
    "A strategy that never signals by itself: signals are submitted by the test."
    symbols, exchange = [], 'binance'

class CaptureSink:
    def __init__(self): self.alerts = []
    async def send(self, alert): self.alerts.append(alert)

def build(venue=None, overrides=None, journal=None, sink=None, slice_=SLICE, balances=None):
    "An engine on a paper Binance (or `venue`) on a SimClock at the slice's first bar; strategy 's' registered at 0.5."
    df = load_candles('BTC/USDT', *slice_)
    events = candle_events({'BTC/USDT': df}, venue='binance')
    clock = SimClock(events[0].close_time / 1000)
    cfg = build_config({'execution': {'default_execution_algo': 'market'}, **(overrides or {})})
    paper = venue(clock) if venue else PaperExchange('binance', balances=balances or {'USDT': 10_000.0}, clock=clock)
    orders = SmartOrderManager({'binance': paper}, clock, cfg.execution, cfg.algorithms)
    alerts = Alerts([sink or CaptureSink()], clock=clock)
    eng = LiveTradingEngine(orders, AdvancedPositionManager(clock), RiskManager(cfg.risk, cfg.emergency, clock),
                            PortfolioManager(clock=clock), clock=clock, config=cfg, analytics=ExecutionAnalytics(clock),
                            journal=journal if journal is not None else Journal(), alerts=alerts, paper_venues={'binance': paper})
    eng.register_strategy('s', Manual(), 0.5)
    return eng, paper, clock, df, events

async def feed(eng, clock, events):
    "Deliver bars in order, the clock at each bar's close."
    for ev in events:
        await clock.advance_to(ev.close_time / 1000); eng.handle(ev)
    await eng.update_pnl()

def sig(**kw):
    d = {'symbol': 'BTC/USDT', 'side': 'buy', 'entry': 58_000.0, 'stop': 57_000.0, 'target': 60_000.0, 'strategy': 's', 'exchange': 'binance'}
    return {**d, **kw}

# ------------------------------------------------------------------ initialization
async def test_init_wires_parts_and_config_sections():
    cfg_over = {'signal': {'max_queue_size': 7, 'signal_ttl': 30}, 'monitoring': {'position_check_interval': 11, 'pnl_update_frequency': 6,
                'risk_check_frequency': 2}, 'performance': {'equity_snapshot_interval': 120}, 'emergency': {'max_consecutive_errors': 4}}
    eng, paper, clock, _, _ = build(overrides=cfg_over)
    assert isinstance(eng.orders.clients['binance'], ExchangeClient) and eng.orders.clients['binance'].exchange is paper
    assert eng.paper_venues == {'binance': paper}
    # the engine subscribed to the parts' callbacks
    assert eng.positions.on_exit == eng._exit_requested and eng.risk.on_event == eng._on_risk_event
    assert eng._on_execution_event in eng.orders._subscribers
    # each part got its config section
    assert (eng.queue.max_size, eng.queue.ttl) == (7, 30)
    assert eng.risk.breaker.max_consecutive_errors == 4
    assert eng._intervals() == {'positions': 11, 'pnl': 6, 'risk': 2, 'performance': 120}
    for section in ('execution', 'order', 'algorithms', 'monitoring', 'risk', 'emergency', 'signal', 'performance'):
        assert hasattr(eng.config, section)
    assert eng.config.execution.default_execution_algo == 'market'
    assert (eng.mode, eng.running, len(eng.queue)) == (None, False, 0)
    assert eng.portfolio.allocations == {'s': 0.5}
    assert [e.payload['name'] for e in eng.journal.load('strategy')] == ['s']

def test_malformed_config_is_a_typed_error_naming_the_key():
    with pytest.raises(ConfigError) as e: build_config({'emergency': {'max_consecutive_errors': -1}})
    assert e.value.key == 'emergency.max_consecutive_errors' and 'whole number > 0' in str(e.value)
    with pytest.raises(ConfigError) as e: build_config({'signal': {'max_queue_sise': 10}})
    assert e.value.key == 'signal.max_queue_sise' and 'unknown key' in str(e.value)
    with pytest.raises(ConfigError) as e: build_config({'execution': {'default_execution_algo': 'vwap'}})
    assert e.value.key == 'execution.default_execution_algo'

# ------------------------------------------------------------------ start / stop
async def test_start_stop_owns_its_tasks():
    eng, paper, clock, _, events = build()
    await feed(eng, clock, events[:2])
    await eng.start_live_trading('paper')
    tasks = list(eng._loops)
    assert eng.running and eng.mode == 'paper' and len(tasks) == 5   # consumer + positions, pnl, risk, performance
    await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)
    with pytest.raises(RuntimeError, match='already running'): await eng.start_live_trading('paper')
    assert len(eng._loops) == 5
    await eng.stop_live_trading(grace=0)
    assert all(t.done() for t in tasks) and all(t.cancelled() for t in tasks)
    assert not eng.running and eng._loops == [] and not eng._tasks
    n = len(eng.journal.load('engine'))
    await eng.stop_live_trading()     # not running: a no-op
    assert len(eng.journal.load('engine')) == n
    assert [e.payload['event'] for e in eng.journal.load('engine')] == ['started', 'stopped']

async def test_simulation_starts_only_the_consumer_and_bad_mode_is_refused():
    eng, *_ = build()
    with pytest.raises(ValueError, match="mode must be one of"): await eng.start_live_trading('backtest')
    assert not eng.running
    await eng.start_live_trading('simulation')
    assert len(eng._loops) == 1
    await eng.stop_live_trading(grace=0)
    assert not eng.running

async def test_paper_loops_run_on_the_clock():
    "In paper mode the monitoring jobs run at their intervals on the clock: 120 s of clock -> equity points every 60 s."
    eng, paper, clock, _, events = build(overrides={'performance': {'equity_snapshot_interval': 60}})
    await feed(eng, clock, events[:1])
    await eng.start_live_trading('paper')
    await clock.advance(120)
    await eng.stop_live_trading(grace=0)
    eq = eng.journal.load('equity')
    assert len(eq) == 3                 # at +60 s, +120 s, and the one written at stop
    assert all(e.payload['equity'] == 10_000.0 for e in eq)

# ------------------------------------------------------------------ signal execution
async def test_valid_signal_fills_at_last_close_with_taker_fee():
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    r = await clock.run(eng.execute_signal(sig(algo='market')))
    assert r.status == 'filled', r
    # by hand: risk 1% of 10,000 / 1,000 = 0.1 BTC, capped at 25% of equity / entry = 2,500 / 58,000 = 0.0431034...,
    # rounded down to Binance's 0.00001 BTC step
    step = load_markets('binance')['BTC/USDT']['precision']['amount']
    expected_amount = math.floor(0.25 * 10_000 / 58_000 / step) * step
    assert r.size == pytest.approx(expected_amount, abs=1e-12) and expected_amount == pytest.approx(0.0431)
    (f,) = r.fills
    last_close = float(df.close.iloc[4])                  # market order on bars: the last close
    taker = load_markets('binance')['BTC/USDT']['taker']  # 0.001
    assert f.price == last_close == 58_298.01
    assert f.amount == pytest.approx(expected_amount)
    assert f.fee == pytest.approx(expected_amount * last_close * taker, rel=1e-12)
    assert f.timestamp == int(df.index[4].timestamp() * 1000) + 60_000
    bal = await paper.fetch_balance()
    assert bal['total']['BTC'] == pytest.approx(expected_amount, abs=1e-12)
    assert bal['total']['USDT'] == pytest.approx(10_000 - expected_amount * last_close * (1 + taker), abs=1e-9)
    pos = eng.positions.positions[r.position_id]
    assert (pos.amount, pos.entry_price, pos.symbol, pos.strategy) == (pytest.approx(expected_amount), pytest.approx(last_close, rel=1e-12), 'BTC/USDT', 's')
    assert eng.counts['orders'] == 1 and len(eng.analytics.orders()) == 1
    assert [e.key for e in eng.journal.load('position_opened')] == [r.position_id]

async def test_allocation_size_caps_the_order():
    "The spec's allocation_size is a budget in the quote currency: 600 USDT at entry 58,000 -> 0.01034 BTC (step 0.00001)."
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    r = await clock.run(eng.execute_signal(sig(algo='market'), allocation_size=600.0))
    assert r.status == 'filled' and r.size == pytest.approx(math.floor(600 / 58_000 / 1e-5) * 1e-5, abs=1e-12)
    assert sum(f.amount for f in r.fills) == pytest.approx(0.01034)

async def test_each_finished_parent_is_journaled_once():
    "One row per finished parent: the analytics' `execution` row when the analytics write to the engine's journal, else the engine's `parent_order` row."
    eng, paper, clock, df, events = build()
    eng.analytics.journal = eng.journal
    await feed(eng, clock, events[:5])
    filled = await clock.run(eng.execute_signal(sig(algo='market')))
    with pytest.raises(Exception, match='balance'):   # selling 1 BTC that is not held fails validation: the analytics never see it
        await clock.run(eng.orders.execute(OrderRequest('BTC/USDT', 'sell', 1.0, algo='market'), venue='binance'))
    failed = list(eng.orders.parents.values())[-1]
    eng.analytics.journal = None                      # the analytics keep their records elsewhere
    second = await clock.run(eng.execute_signal(sig(algo='market', client_id='second')))
    rows = [(e.kind, e.key or e.payload['order_id']) for e in eng.journal.load(('execution', 'parent_order'))]
    assert rows == [('execution', filled.parent.id), ('parent_order', failed.id), ('parent_order', second.parent.id)]
    assert failed.status == 'failed' and 'balance' in eng.journal.load('parent_order')[0].payload['reason']
    assert eng.journal.load('execution')[0].payload['reason'] == filled.parent.reason == 'market order done'

async def test_a_limit_entry_the_market_never_fills_is_unfilled_not_an_error():
    "A passive limit that times out with no trade at its price is `unfilled`: journaled, the breaker's error count untouched."
    eng, paper, clock, df, events = build(overrides={'execution': {'order_timeout': 120}, 'emergency': {'max_consecutive_errors': 2}})
    await feed(eng, clock, events[:5])
    results = [await clock.run(eng.execute_signal(sig(algo='limit', client_id=f'l{k}'))) for k in range(3)]   # no bar comes: nothing trades
    assert [r.status for r in results] == ['unfilled'] * 3 and not any(r.ok for r in results)
    assert 'timed out' in results[0].reasons[-1] and results[0].parent.children[0].status == 'canceled'
    assert eng.risk.breaker.errors == 0 and not eng.halted and eng.counts['errors'] == 0   # three in a row would trip at 2 errors
    assert [e.key for e in eng.journal.load('signal_unfilled')] == ['l0', 'l1', 'l2'] and not eng.journal.load('signal_rejected')
    assert eng.positions.open_positions() == [] and await paper.fetch_open_orders() == []

async def test_size_below_the_venue_step_is_rejected_not_raised():
    "A budget too small for one step of the venue (0.5 USDT -> 8.6e-6 BTC < 0.00001) is a rejection, not an exception."
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    r = await clock.run(eng.execute_signal(sig(algo='market'), allocation_size=0.5))
    assert r.status in ('rejected', 'failed') and not r.ok
    assert await paper.fetch_orders() == []

# ------------------------------------------------------------------ bad input
BAD = [
    ('symbol', {'symbol': None}),
    ('symbol', {'symbol': ''}),
    ('stop', {'stop': 59_000.0}),                 # a buy's stop above its entry
    ('size', {'size': -0.5}),
    ('exchange', {'exchange': 'mtgox'}),
]

@pytest.mark.parametrize('field,change', BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
async def test_bad_signal_rejected_journaled_no_order_engine_keeps_running(field, change):
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    bad = {k: v for k, v in sig(**change).items() if v is not None}
    with pytest.raises(SignalError) as e: Signal.from_dict(bad, venues={'binance'})
    assert e.value.field == field
    await eng.start_live_trading('simulation')
    refused = eng.submit(bad)
    assert refused.status == 'rejected' and refused.field == field and refused.reasons[0].startswith(f'signal.{field}:'), refused
    r = await eng.execute_signal(bad)
    assert r.status == 'rejected' and r.reasons[0].startswith(f'signal.{field}:')
    rej = eng.journal.load('signal_rejected')
    assert len(rej) == 2 and all(x.payload['reasons'][0].startswith(f'signal.{field}:') for x in rej)
    assert await paper.fetch_orders() == []
    assert eng.running and eng.counts['rejected'] == 2
    assert eng.submit(sig(algo='market', client_id='good')) is None
    assert await eng.drain(60)
    await eng.stop_live_trading()
    good = [x for x in eng.results if x.status == 'filled']
    assert len(good) == 1 and good[0].fills[0].price == float(df.close.iloc[4])
    assert len(await paper.fetch_orders()) == 1

async def test_unregistered_strategy_is_rejected_not_raised():
    "Bad input: a signal from a strategy nobody registered is rejected and journaled (not an exception out of the engine)."
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    r = await clock.run(eng.execute_signal(sig(strategy='ghost', algo='market')))
    assert r.status == 'rejected' and any('ghost' in x for x in r.reasons)
    assert eng.journal.load('signal_rejected')
    assert await paper.fetch_orders() == []

# ------------------------------------------------------------------ fault injection
class Flaky(PaperExchange):
    "A paper Binance whose create_order raises `error` on the first `fail` calls (on `sides`), before or after accepting."
    def __init__(self, clock, fail=0, error=ccxt.NetworkError, after_accept=False, sides=('buy', 'sell')):
        super().__init__('binance', balances={'USDT': 10_000.0}, clock=clock)
        self.fail, self.error, self.after_accept, self.sides, self.calls = fail, error, after_accept, sides, []
    async def create_order(self, symbol, type, side, amount, price=None, params={}):
        self.calls.append((side, (params or {}).get('clientOrderId')))
        if self.fail > 0 and side in self.sides:
            self.fail -= 1
            if self.after_accept: await super().create_order(symbol, type, side, amount, price, params)
            raise self.error(f'injected {self.error.__name__}')
        return await super().create_order(symbol, type, side, amount, price, params)

@pytest.mark.parametrize('after_accept', [False, True], ids=['lost-request', 'lost-response'])
async def test_an_order_of_unknown_fate_is_found_or_proven_absent_and_sent_once_more_under_a_new_id(after_accept):
    """A create that times out is never re-sent under its id (Binance accepts an id again once its order is closed): a lost
    response is found by its client id; a lost request is re-sent once, under a new id, after the venue's acceptance window."""
    eng, paper, clock, df, events = build(venue=lambda c: Flaky(c, fail=1, error=ccxt.RequestTimeout, after_accept=after_accept))
    await feed(eng, clock, events[:5])
    t0 = clock.time()
    r = await clock.run(eng.execute_signal(sig(algo='market')))
    assert r.status == 'filled', r
    cids = [c for _, c in paper.calls]
    assert len(cids) == (1 if after_accept else 2) and len(set(cids)) == len(cids)    # a second send only under a new id
    orders = await paper.fetch_orders()                                                 # counted on the venue's side
    assert len(orders) == 1 and orders[0]['clientOrderId'] == r.fills[0].client_order_id == cids[-1] and orders[0]['status'] == 'closed'
    assert len(await paper.fetch_my_trades()) == 1
    assert (await paper.fetch_balance())['total']['BTC'] == pytest.approx(r.size)
    assert eng.orders.clients['binance'].errors['RequestTimeout'] == 1
    if not after_accept: assert clock.time() - t0 >= 11.0                              # Binance's window: recvWindow 10 s + 1 s
    assert [e.payload['order'] for e in eng.journal.load('order_unresolved')] == ([] if after_accept else [cids[0]])
    assert len(eng.journal.load('order_submitted')) == len(cids)                       # each send journaled before it went out

async def test_while_an_order_is_unresolved_no_new_entry_on_its_symbol_and_a_second_loss_is_not_resent():
    eng, paper, clock, df, events = build(venue=lambda c: Flaky(c, fail=2, error=ccxt.RequestTimeout))
    await feed(eng, clock, events[:5])
    first = asyncio.ensure_future(clock.run(eng.execute_signal(sig(algo='market'))))
    while not eng.orders.unresolved: await asyncio.sleep(0)
    blocked = await eng.execute_signal(sig(algo='market', size=0.001))
    assert blocked.status == 'rejected' and 'has an unknown fate' in blocked.reasons[-1]
    r = await first
    assert r.status == 'failed' and 'never reached the venue' in r.reasons[-1], r
    assert len(paper.calls) == 2 and len({c for _, c in paper.calls}) == 2 and await paper.fetch_orders() == []
    assert not eng.orders.unresolved

async def test_insufficient_funds_is_rejected_and_counted():
    "A venue's InsufficientFunds: the result is not ok, its reasons say why, the engine counts the error."
    eng, paper, clock, df, events = build(venue=lambda c: Flaky(c, fail=1, error=ccxt.InsufficientFunds, sides=('buy',)))
    await feed(eng, clock, events[:5])
    r = await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
    assert r.status in ('failed', 'rejected') and not r.ok and r.position_id is None
    assert len(paper.calls) == 1                    # not retried
    assert eng.risk.breaker.errors == 1
    assert eng.counts['errors'] == 1, eng.counts
    assert any('InsufficientFunds' in x for x in r.reasons), r.reasons

async def test_consecutive_venue_errors_trip_the_breaker_entries_blocked_exit_passes():
    sink = CaptureSink()
    eng, paper, clock, df, events = build(venue=lambda c: Flaky(c, fail=0, error=ccxt.InsufficientFunds, sides=('buy',)),
                                          overrides={'emergency': {'max_consecutive_errors': 3}}, sink=sink)
    await feed(eng, clock, events[:5])
    ok = await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
    assert ok.status == 'filled'
    paper.fail = 10
    for i in range(3):
        assert not eng.risk.breaker.is_tripped
        r = await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
        assert not r.ok and r.parent is not None and 'InsufficientFunds' in r.parent.reason
    assert eng.risk.breaker.is_tripped and len(paper.calls) == 4
    await eng.alerts.drain()
    assert any(a.level == 'critical' and 'CircuitBreakerTripped' in a.message for a in sink.alerts)
    assert any(e.payload['type'] == 'CircuitBreakerTripped' for e in eng.journal.load('risk_event'))
    # entries are blocked before any order is sent
    blocked = await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
    assert blocked.status == 'rejected' and any('circuit_breaker' in x for x in blocked.reasons), blocked.reasons
    assert len(paper.calls) == 4
    # an exit still passes
    ex = await clock.run(eng.execute_signal(sig(side='sell', intent='exit', stop=None, target=None)))
    assert ex.status == 'exited'
    await clock.run(eng.drain(60))
    assert not eng.positions.open_positions()
    assert (await paper.fetch_balance())['total'].get('BTC', 0.0) == pytest.approx(0.0, abs=1e-12)
    sells = [o for o in await paper.fetch_orders() if o['side'] == 'sell']
    assert len(sells) == 1 and sells[0]['status'] == 'closed' and sells[0]['filled'] == pytest.approx(0.01)

async def test_emergency_stop_closes_positions_and_cancels_orders():
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
    await eng.orders.execute(OrderRequest('BTC/USDT', 'buy', 0.01, algo='limit', limit_price=40_000.0, venue='binance'), venue='binance', wait=False)
    assert len(await paper.fetch_open_orders()) == 1
    summary = await clock.run(eng.emergency_stop('test'))
    assert summary['open_positions_left'] == [] and summary['working_orders_left'] == [] and len(summary['canceled_orders']) == 1
    assert await paper.fetch_open_orders() == []
    bal = await paper.fetch_balance()
    assert bal['total'].get('BTC', 0.0) == pytest.approx(0.0, abs=1e-12) and bal['used']['USDT'] == pytest.approx(0.0, abs=1e-9)
    blocked = await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
    assert blocked.status == 'rejected'

# ------------------------------------------------------------------ execution analytics see every order
async def test_unfilled_order_is_in_the_execution_analytics():
    "A limit buy far below the market times out unfilled: the analytics record it, its shortfall all opportunity cost."
    eng, paper, clock, df, events = build(overrides={'execution': {'default_execution_algo': 'market', 'timeout_action': 'cancel'}})
    await feed(eng, clock, events[:5])
    parent = await eng.orders.execute(OrderRequest('BTC/USDT', 'buy', 0.01, algo='limit', limit_price=40_000.0, venue='binance',
                                                   params={'timeout': 90}), venue='binance', wait=False)
    await feed(eng, clock, events[5:8])   # the timeout falls between the 6th and the 7th bar
    assert parent.is_terminal and parent.filled == 0
    row = eng.analytics.orders().loc[parent.id]
    # by hand: arrival at the 5th close, end at the 6th (the last price seen when the timeout fired)
    close = df.close.to_numpy()
    assert (row.arrival_price, row.end_price) == (close[4], close[5])
    assert row.fill_rate == 0 and row.filled == 0 and row.notional == 0
    assert row.opportunity_cost == pytest.approx(0.01 * (close[5] - close[4]), rel=1e-12)
    assert row.execution_cost == 0 and row.fees == 0
    assert row.shortfall == pytest.approx(0.01 * (close[5] - close[4]), rel=1e-12)

async def test_entries_still_working_count_as_deployed_capital():
    "Strategy 's' has 0.5 x 10,000 USDT: an entry still working holds its share, so a second entry gets only what is left."
    eng, paper, clock, df, events = build(overrides={'risk': {'max_position_fraction': 0.45}})
    await feed(eng, clock, events[:5])
    first = asyncio.ensure_future(eng.execute_signal(sig(algo='limit')))
    await clock.settle()
    (working,) = eng.orders.active_orders                       # a passive buy at the touch: no bar has come to fill it
    assert not first.done() and working.filled == 0
    mark = df.close.iloc[4]
    # risk sizes it at 1% of equity over |mark - stop|: 100 / (58,298.01 - 57,000) = 0.077041 BTC, about 4,491 USDT
    assert working.amount == pytest.approx(math.floor(100 / (mark - 57_000) * 1e5) / 1e5, abs=1e-5)
    second = await clock.run(eng.execute_signal(sig(algo='market')))
    left = 0.5 * 10_000 - working.amount * mark                 # what the strategy has not committed, about 509 USDT
    assert second.status == 'filled' and second.size <= left / 58_000 + 1e-12
    assert second.size == pytest.approx(math.floor(left / 58_000 * 1e5) / 1e5, abs=1e-5)
    first.cancel()

async def test_entry_cut_below_the_venue_minimum_is_rejected_not_failed():
    "Cash locked in a resting order leaves ~2 USDT free: the entry, cut to what that pays, is under Binance's 5 USDT minimum notional."
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    await paper.create_order('BTC/USDT', 'limit', 'buy', 0.2497, 40_000.0)   # holds 0.2497 x 40,000 x (1 + fee) of the 10,000 USDT
    free = (await paper.fetch_balance())['USDT']['free']
    assert 0 < free < 5
    errors = eng.counts['errors']
    r = await clock.run(eng.execute_signal(sig(algo='market')))
    assert r.status == 'rejected' and 'which the venue refuses' in r.reasons[-1] and 'notional' in r.reasons[-1], r.reasons
    assert eng.counts['errors'] == errors and eng.risk.breaker.errors == 0   # a sizing outcome, not a venue error: the breaker does not count it
    assert not eng.orders.parents                                                 # nothing was sent

async def test_stop_cancels_orders_still_working_and_books_their_fills():
    "A 30-minute TWAP entry is still slicing when the engine stops: stop cancels the rest on the venue and books the slices that filled."
    eng, paper, clock, df, events = build(slice_=('2024-08-05 00:00', '2024-08-05 01:00'))
    await feed(eng, clock, events[:5])
    await eng.start_live_trading('simulation')
    assert eng.submit(sig(algo='twap')) is None
    for ev in events[5:16]:                                     # ten more minutes of market: slices at 0 and 5 minutes
        await clock.advance_to(ev.close_time / 1000); await eng.on_market_event(ev)
    (parent,) = eng.orders.active_orders
    assert 0 < parent.filled < parent.amount
    await clock.run(eng.stop_live_trading(grace=1))
    assert not eng.orders.active_orders and parent.status == 'canceled'
    assert await paper.fetch_open_orders() == []
    (pos,) = eng.positions.open_positions()
    assert pos.amount == pytest.approx(parent.filled, abs=1e-12)
    bal = await paper.fetch_balance()
    assert bal['total']['BTC'] == pytest.approx(parent.filled, abs=1e-12) and bal['used'].get('USDT', 0.0) == pytest.approx(0.0, abs=1e-9)

# ------------------------------------------------------------------ simulation: a step runs what its event caused
class Scripted:
    "Signals a test scripts per bar close time."
    symbols, exchange = ['BTC/USDT'], 'binance'
    def __init__(self): self.script = {}
    def on_bar(self, bar): return self.script.pop(bar.close_time, [])

async def stepped(eng, clock, ev):
    "What the feed does: the clock to the bar's close, `step`, and what it left to await (the due jobs)."
    await clock.advance_to(ev.close_time / 1000)
    if (pending := eng.step(ev)) is not None: await pending

async def test_simulation_step_runs_exits_then_signals_before_it_returns():
    from dataclasses import replace
    eng, paper, clock, df, events = build()
    strat = eng.register_strategy('t', Scripted(), 0.5)
    await eng.start_live_trading('simulation')
    px = events[1].close
    strat.script[events[1].close_time] = [sig(strategy='t', entry=px, stop=px - 500, target=px + 2_000, size=0.01)]
    await stepped(eng, clock, events[0]); await stepped(eng, clock, events[1])
    # filled inside the step: no task, no turn of the event loop
    assert not eng._tasks and eng.counts['orders'] == 1 and len(eng.positions.open_positions()) == 1
    # the next bar falls through the stop and brings a new entry: the stop's exit goes first, then the signal
    crash = replace(events[2], low=px - 600)
    strat.script[crash.close_time] = [sig(strategy='t', entry=crash.close, stop=crash.close - 900, target=crash.close + 2_000, size=0.01)]
    await stepped(eng, clock, crash); assert not eng._tasks
    sides = [(p.side.value, p.strategy) for p in eng.orders.parents.values()]
    assert sides == [('buy', 't'), ('sell', 't'), ('buy', 't')], sides
    closed = [p for p in eng.positions.positions.values() if not p.amount]
    assert [p.exit_reason for p in closed] == ['stop_loss'] and len(eng.positions.open_positions()) == 1
    await eng.stop_live_trading()

async def test_simulation_step_hands_work_that_waits_to_a_task():
    eng, paper, clock, df, events = build(venue=lambda clock: PaperExchange('binance', balances={'USDT': 10_000.0}, clock=clock, latency=0.25))
    strat = eng.register_strategy('t', Scripted(), 0.5)
    await eng.start_live_trading('simulation')
    px = events[1].close
    strat.script[events[1].close_time] = [sig(strategy='t', entry=px, stop=px - 500, target=px + 2_000, size=0.01)]
    await stepped(eng, clock, events[0]); await stepped(eng, clock, events[1])
    assert len(eng._tasks) == 1 and eng.counts['orders'] == 0      # the order waits out the venue's latency
    assert await clock.run(eng.drain(5)) and not eng._tasks and eng.counts['orders'] == 1 and len(eng.positions.open_positions()) == 1
    await eng.stop_live_trading()

class SilentPaper(PaperExchange):
    "A paper venue whose in-process order pushes are lost: the engine hears of its fills from the websocket's reports."
    def listen_orders(self, callback): return lambda: None

async def test_an_order_report_from_the_websocket_fills_a_working_entry_at_once():
    from trader.core import Side, TradeTick
    from trader.websocket import fill, order_update
    eng, paper, clock, df, events = build(venue=lambda c: SilentPaper('binance', balances={'USDT': 10_000.0}, clock=c))
    await feed(eng, clock, events[:5])
    entry = asyncio.ensure_future(eng.execute_signal(sig(algo='limit')))
    await clock.settle()
    (working,) = eng.orders.active_orders
    child = working.children[0]
    paper.on_market(TradeTick('BTC/USDT', clock.ms(), child.price - 1.0, 10.0, Side.SELL, 'x1', venue='binance'))   # the venue fills it
    report = await paper.fetch_order(child.venue_order_id, 'BTC/USDT')
    assert report['status'] == 'closed' and child.filled == 0 and not entry.done()          # nobody told the engine
    await eng.on_market_event(fill(report['trades'][0], 'binance'))                         # our trade alone changes nothing
    assert child.filled == 0 and eng.positions.open_positions() == []
    await eng.on_market_event(order_update(report, 'binance', clock.ms()))
    await clock.settle()
    result = await entry
    assert result.status == 'filled' and child.filled == pytest.approx(working.amount)
    (pos,) = eng.positions.open_positions()
    assert pos.opened_at == clock.ms() and pos.amount == pytest.approx(working.amount)      # no clock time passed: no poll was needed
    assert eng.orders.clients['binance'].requests['fetch_order'] == 0
    await eng.on_market_event(order_update(report, 'binance', clock.ms()))                  # a repeat is not news
    assert len(child.fills) == 1

async def test_equity_once_flat_is_the_cash_left_after_the_exit():
    "All cash again after an exit: equity is the USDT balance, exit fee included (it kept the value marked before the exit)."
    eng, paper, clock, df, events = build()
    await feed(eng, clock, events[:5])
    await clock.run(eng.execute_signal(sig(algo='market')))
    await feed(eng, clock, events[5:7])                         # marked at later closes while the position is open
    marked = eng.equity()
    await clock.run(eng.execute_signal(sig(side='sell', intent='exit', stop=None, target=None)))
    await eng.update_pnl()
    (exit_fill,) = [f for p in eng.positions.positions.values() for f in p.fills if f.side.value == 'sell']
    cash = (await paper.fetch_balance())['total']['USDT']
    assert eng.positions.open_positions() == [] and eng.equity() == cash
    assert marked - cash == pytest.approx(exit_fill.fee, rel=1e-9)   # exit at the last mark: the fee is the whole difference

# ------------------------------------------------------------------ a journal that cannot keep a state row
async def test_a_state_row_the_journal_cannot_commit_halts_new_entries_and_loses_nothing(tmp_path):
    """The disk refuses position rows: the kill switch stops entries with the journal's reason, exits still go out, and once
    the disk takes rows again the buffered ones are committed, none lost and none twice."""
    sink, journal = CaptureSink(), Journal(tmp_path / 'j.sqlite')
    journal.db.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON events WHEN NEW.kind = 'position_opened' BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    eng, paper, clock, df, events = build(journal=journal, sink=sink)
    await feed(eng, clock, events[:5])
    first = await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
    assert first.status == 'filled' and eng.risk.killed is not None and 'disk is full' in eng.risk.killed.reason
    assert any(a.level == 'critical' and 'journal' in a.message for a in eng.alerts.history), [a.message for a in eng.alerts.history]
    second = await clock.run(eng.execute_signal(sig(algo='market', size=0.01)))
    assert second.status == 'rejected' and second.reasons[0].startswith('kill_switch: trading halted (journal:'), second.reasons
    assert len(await paper.fetch_orders()) == 1                                    # the venue saw the first entry only
    eng.positions.request_exit(first.position_id, 'exit_signal')                   # exits still pass
    await clock.run(eng.drain(60))
    assert not eng.positions.open_positions() and len(await paper.fetch_orders()) == 2
    journal.db.execute('DROP TRIGGER full')
    journal.flush()                                                               # the buffered rows go in at the next commit
    rows = journal.db.execute("SELECT kind, key FROM events WHERE kind IN ('position_opened', 'position_fill')").fetchall()
    assert sorted(rows) == sorted([('position_opened', first.position_id)] + [('position_fill', first.position_id)] * 2), rows

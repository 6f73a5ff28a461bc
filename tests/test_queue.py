"The signal queue through the engine (engine.submit): priority, duplicates, maximum size, stale signals."
import pytest
from trader.clock import SimClock
from trader.config import build_config
from trader.data import load_candles
from trader.feed import candle_events
from trader.paper import PaperExchange
from trader.orders import SmartOrderManager
from trader.positions import AdvancedPositionManager
from trader.risk import RiskManager
from trader.portfolio import PortfolioManager
from trader.store import Journal
from trader.engine import LiveTradingEngine

class Manual:
    symbols, exchange = [], 'binance'

async def build(**signal_cfg):
    "An engine on a paper Binance with five real bars delivered; strategies a, b, c registered."
    events = candle_events({'BTC/USDT': load_candles('BTC/USDT', '2024-08-05 00:00', '2024-08-05 00:05')}, venue='binance')
    clock = SimClock(events[0].close_time / 1000)
    cfg = build_config({'execution': {'default_execution_algo': 'market'}, 'signal': signal_cfg})
    paper = PaperExchange('binance', balances={'USDT': 10_000.0}, clock=clock)
    orders = SmartOrderManager({'binance': paper}, clock, cfg.execution, cfg.algorithms)
    eng = LiveTradingEngine(orders, AdvancedPositionManager(clock), RiskManager(cfg.risk, cfg.emergency, clock),
                            PortfolioManager(clock=clock), clock=clock, config=cfg, journal=Journal(), paper_venues={'binance': paper})
    for name in 'abc': eng.register_strategy(name, Manual(), 0.3)
    for ev in events:
        await clock.advance_to(ev.close_time / 1000); eng.handle(ev)
    await eng.update_pnl()
    return eng, paper, clock

def sig(size, **kw):
    "A signal recognisable on the venue by its size."
    return {'symbol': 'BTC/USDT', 'side': 'buy', 'entry': 58_000.0, 'stop': 57_000.0, 'target': 60_000.0, 'strategy': 'a',
            'exchange': 'binance', 'size': size, **kw}

async def run(eng, clock):
    await eng.start_live_trading('simulation')
    assert await eng.drain(120)
    await eng.stop_live_trading()

async def sent_sizes(paper):
    "The amounts of the orders the venue received, in the order it received them."
    return [o['amount'] for o in sorted(await paper.fetch_orders(), key=lambda o: int(o['id']))]

async def test_priority_urgency_first_then_exits_then_priority_then_fifo():
    eng, paper, clock = await build()
    # submitted while the engine is stopped, so all wait in the queue together
    for s in [sig(0.001), sig(0.002, urgency='high'), sig(0.003), sig(0.004, urgency='critical'),
              sig(0.005, priority=5), sig(0.006, urgency='low'), sig(0.007, urgency='high', priority=1)]:
        assert eng.submit(s) is None
    assert len(eng.queue) == 7
    await run(eng, clock)
    # by hand: critical; high (priority 1 before 0); normal (priority 5, then FIFO 0.001, 0.003); low
    assert await sent_sizes(paper) == [0.004, 0.007, 0.002, 0.005, 0.001, 0.003, 0.006]
    assert sum(r.status == 'filled' for r in eng.results) == 7

async def test_exit_runs_before_entries_of_the_same_urgency():
    eng, paper, clock = await build()
    assert eng.submit(sig(0.002)) is None
    await run(eng, clock)
    eng.submit(sig(0.001, strategy='b'))
    eng.submit({'symbol': 'BTC/USDT', 'side': 'sell', 'entry': 58_000.0, 'strategy': 'a', 'exchange': 'binance', 'intent': 'exit'})
    eng.submit(sig(0.003, strategy='c'))
    # the engine's queue hands out the exit first (taken out by hand here, as the consumer would)
    taken = [eng.queue.get_nowait() for _ in range(3)]
    assert [(s.intent.value, s.strategy) for s in taken] == [('exit', 'a'), ('entry', 'b'), ('entry', 'c')]
    for s in taken: eng.submit(s.__class__(**{**s.to_dict(), 'client_id': None}))   # back in, to run them
    await run(eng, clock)
    orders = sorted(await paper.fetch_orders(), key=lambda o: int(o['id']))
    assert sorted((o['side'], o['amount']) for o in orders) == [('buy', 0.001), ('buy', 0.002), ('buy', 0.003), ('sell', 0.002)]
    assert not [p for p in eng.positions.open_positions() if p.strategy == 'a']

async def test_duplicate_client_id_dropped_and_journaled():
    eng, paper, clock = await build()
    assert eng.submit(sig(0.001, client_id='x-1')) is None
    refused = eng.submit(sig(0.002, client_id='x-1'))
    assert refused.status == 'rejected' and refused.field == 'client_id' and refused.reasons == ["queue: duplicate client_id 'x-1'"]
    await run(eng, clock)
    assert await sent_sizes(paper) == [0.001]
    rej = eng.journal.load('signal_rejected')
    assert len(rej) == 1 and rej[0].payload['reasons'] == ["queue: duplicate client_id 'x-1'"] and rej[0].payload['signal']['size'] == 0.002
    assert eng.queue.dropped == {'duplicate': 1}
    # a duplicate is refused even after the first one ran
    assert eng.submit(sig(0.003, client_id='x-1')).reasons == ["queue: duplicate client_id 'x-1'"]

async def test_queue_full_refuses_with_reason():
    eng, paper, clock = await build(max_queue_size=2)
    assert eng.submit(sig(0.001)) is None and eng.submit(sig(0.002)) is None
    assert eng.submit(sig(0.003)).reasons == ['queue: queue full (2 signals)']
    assert len(eng.queue) == 2
    await run(eng, clock)
    assert await sent_sizes(paper) == [0.001, 0.002]
    rej = eng.journal.load('signal_rejected')
    assert [r.payload['reasons'] for r in rej] == [['queue: queue full (2 signals)']]
    assert eng.counts['rejected'] == 1

async def test_stale_signal_expired_with_reason_no_order():
    eng, paper, clock = await build(signal_ttl=60)
    assert eng.submit(sig(0.001)) is None                      # stamped now
    await clock.advance(30)
    assert eng.submit(sig(0.002)) is None
    await clock.advance(31)                                    # the first waited 61 s, the second 31 s
    await run(eng, clock)
    assert await sent_sizes(paper) == [0.002]
    (rej,) = eng.journal.load('signal_rejected')
    assert rej.payload['signal']['size'] == 0.001 and rej.payload['reasons'][0].startswith('queue: stale: waited 61.0 s > signal_ttl 60 s')
    assert eng.queue.dropped == {'stale': 1}

async def test_signal_age_counts_from_its_own_timestamp():
    "A signal made 90 s ago (its timestamp) is stale on arrival with a 60 s ttl."
    eng, paper, clock = await build(signal_ttl=60)
    assert eng.submit(sig(0.001, timestamp=clock.ms() - 90_000)) is None
    await run(eng, clock)
    assert await paper.fetch_orders() == []
    assert eng.journal.load('signal_rejected')[0].payload['reasons'][0].startswith('queue: stale: waited 90.0 s')

"SmartOrderManager on PaperExchange with the real Binance capture: the spec's six, routing, events, reports, retries."
import asyncio, copy
import ccxt
import pytest
from trader.analytics import ExecutionRecord, execution_metrics
from trader.clock import SimClock
from trader.config import ExecutionConfig
from trader.core import BookUpdate, Order, OrderStatus, Side, Signal, TradeTick, event_time
from trader.data import load_markets, sample_market_events
from trader.orders import (ExecutionCompleted, ExecutionFilled, OrderRequest, OrderValidationError, SmartOrderManager,
                           order_events, apply_events)
from trader.paper import PaperExchange

SYMBOL = 'BTC/USDT'

@pytest.fixture(scope='module')
def events():
    return sample_market_events(SYMBOL)

def snapshot(events) -> BookUpdate:
    return next(e for e in events if isinstance(e, BookUpdate) and e.is_snapshot)

def setup(events, n=200, execution=None, venues=None):
    "Clock, one paper venue fed the snapshot and the next `n` events, and its manager."
    t0 = events[0].timestamp / 1000
    clock = SimClock(t0)
    paper = PaperExchange('binance', clock=clock, balances={'USDT': 1_000_000.0, 'BTC': 10.0})
    manager = SmartOrderManager({'binance': paper}, clock, execution=execution)
    for e in events[:n]: paper.on_market(e); manager.on_market(e)
    return clock, paper, manager

# ---------------------------------------------------------------- the spec's six

async def test_initialization(events):
    clock, paper, manager = setup(events)
    snap = snapshot(events)
    assert list(manager.clients) == ['binance'] and manager.parents == {}
    v = manager.view('binance', SYMBOL)
    assert v.book_ready and v.bid < v.ask and v.trade_count == sum(isinstance(e, TradeTick) for e in events[:200])
    assert manager.get_statistics()['total_orders'] == 0
    with pytest.raises(OrderValidationError, match='order.venues: at least one venue'): SmartOrderManager({}, clock)

async def test_market_order_fills_by_walking_the_real_book(events):
    clock, paper, manager = setup(events, n=1)          # only the REST snapshot: the book is known level by level
    snap = snapshot(events)
    amount, left, cost = 3.0, 3.0, 0.0
    for price, size in snap.asks:                        # by hand: take the asks best first
        take = min(size, left); cost += price * take; left -= take
        if left <= 0: break
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', amount), algo='market')
    assert p.status == 'completed' and p.filled == pytest.approx(amount)
    assert p.average_price == pytest.approx(cost / amount, rel=1e-12)
    mid = (snap.bids[0][0] + snap.asks[0][0]) / 2
    assert p.arrival_price == mid and p.slippage_bps == pytest.approx((cost / amount / mid - 1) * 1e4)
    assert p.fees == pytest.approx(cost * 0.001)         # Binance spot taker fee in the bundled markets

async def test_limit_order_rests_at_the_touch_and_fills_from_the_tape(events):
    clock, paper, manager = setup(events)
    bid = manager.view('binance', SYMBOL).bid
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.05), algo='limit', wait=False)
    assert p.children[0].price == bid and p.children[0].status is OrderStatus.OPEN
    t0, i = clock.time(), 200
    while not p.is_terminal and i < len(events):       # replay until it fills
        e = events[i]; i += 1
        await clock.advance_to(max(clock.time(), event_time(e) / 1000)); paper.on_market(e); manager.on_market(e)
    assert p.status == 'completed' and p.average_price <= bid and p.fills[0].liquidity == 'maker'
    assert await paper.fetch_open_orders(SYMBOL) == []

async def test_validation_errors_name_the_field(events):
    clock, paper, manager = setup(events)
    cases = [(OrderRequest('ETH/USDT', 'buy', 0.1), {'venue': 'binance'}, 'order.price: no market price for ETH/USDT on binance'),
             (OrderRequest('NOPE/USDT', 'buy', 0.1), {}, 'order.symbol: not listed on any venue'),
             (OrderRequest(SYMBOL, 'buy', 0.00004), {'algo': 'market'}, 'limits.cost.min'),
             (OrderRequest(SYMBOL, 'hold', 0.1), {}, "order.side: must be 'buy' or 'sell'"),
             (OrderRequest(SYMBOL, 'sell', 11.0), {}, 'order.balance: needs 11 BTC free on binance, has 10'),
             (OrderRequest(SYMBOL, 'buy', 0.1, stop_price=1.0), {'algo': 'stop_limit'}, 'a buy stop must be above the market'),
             (OrderRequest(SYMBOL, 'sell', 0.1, stop_price=61_000.0, target_price=60_000.0), {'algo': 'oco'}, 'a sell target must be above'),
             ({'symbol': SYMBOL, 'side': 'buy', 'entry': 61_800, 'strategy': 's', 'exchange': 'binance'}, {}, 'order.amount: is required')]
    for req, kw, msg in cases:
        with pytest.raises(OrderValidationError, match=msg.replace('(', r'\(')): await manager.execute(req, **kw)
    assert await paper.fetch_orders() == []

async def test_cancellation_cancels_every_child(events):
    clock, paper, manager = setup(events)
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', 1.0), algo='iceberg', wait=False, clip_size=0.25)
    assert len(await paper.fetch_open_orders(SYMBOL)) == 1
    seen = []; manager.subscribe(seen.append)
    await manager.cancel_order(p.id)
    assert p.status == 'canceled' and await paper.fetch_open_orders(SYMBOL) == []
    done = [e for e in seen if type(e).__name__ == 'ExecutionCompleted']
    assert len(done) == 1 and done[0].parent is p
    assert [type(e.event).__name__ for e in seen if type(e).__name__ == 'ChildOrderUpdated'] == ['OrderCancelRequested', 'OrderCanceled']
    assert await manager.cancel_order(p.id) is p                 # cancelling again is harmless

async def test_statistics_per_algorithm_and_venue(events):
    clock, paper, manager = setup(events, execution=ExecutionConfig(order_timeout=30))
    a = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.5), algo='market')
    b = await manager.execute(OrderRequest(SYMBOL, 'sell', 0.5), algo='market')
    c = await clock.run(manager.execute(OrderRequest(SYMBOL, 'buy', 0.2, limit_price=50_000.0), algo='limit'))   # never fills: times out
    with pytest.raises(OrderValidationError): await manager.execute(OrderRequest(SYMBOL, 'buy', 100.0), algo='market')
    st = manager.get_statistics()
    assert (st['total_orders'], st['successful_orders'], st['failed_orders'], st['canceled_orders']) == (4, 2, 2, 0)
    assert st['success_rate'] == 0.5
    assert st['total_slippage'] == pytest.approx(a.slippage_cost + b.slippage_cost)
    assert st['average_execution_time'] == 0.0 and c.execution_time == 30.0
    assert st['by_algorithm']['market']['successful_orders'] == 2 and st['by_algorithm']['limit']['failed_orders'] == 1
    assert st['by_venue']['binance']['total_orders'] == 4

# ---------------------------------------------------------------- routing

def hand_all_in(levels, amount, fee):
    "Average price of taking `amount` from `levels`, plus the fee; None when too thin."
    left, cost = amount, 0.0
    for price, size in levels:
        take = min(size, left); cost += price * take; left -= take
        if left <= 1e-12: return cost / amount * (1 + fee)
    return None

@pytest.mark.parametrize('amount', [0.05, 1.0, 3.0, 4.0])   # thin, thin, deep (both can fill), deep (thin cannot)
async def test_routing_picks_the_cheaper_venue(events, amount):
    "Venue 'deep': the real book, taker 0.1 %. Venue 'thin': the same prices with 3 % of the depth, taker 0.02 %."
    snap = snapshot(events)
    thin_snap = BookUpdate(SYMBOL, snap.timestamp, tuple((p, q * 0.03) for p, q in snap.bids), tuple((p, q * 0.03) for p, q in snap.asks), True)
    cheap = load_markets('binance'); cheap[SYMBOL] = {**cheap[SYMBOL], 'taker': 0.0002, 'maker': 0.0001}
    clock = SimClock(snap.timestamp / 1000)
    deep = PaperExchange('binance', clock=clock, balances={'USDT': 1e6})
    thin = PaperExchange('binance', markets=cheap, clock=clock, balances={'USDT': 1e6})
    manager = SmartOrderManager({'deep': deep, 'thin': thin}, clock)
    deep.on_market(snap); manager.on_market(snap, venue='deep')
    thin.on_market(thin_snap); manager.on_market(thin_snap, venue='thin')
    costs = {'deep': hand_all_in(snap.asks, amount, 0.001), 'thin': hand_all_in(thin_snap.asks, amount, 0.0002)}
    expected = min((c, v) for v, c in costs.items() if c is not None)[1]
    p = await manager.execute(Signal(SYMBOL, 'buy', entry=61_837.0, size=amount, exchange='paper'), algo='market')
    assert p.venue == expected, (costs, p.params['route'])
    assert p.params['route'][expected] == pytest.approx(costs[expected])
    assert p.average_price * (1 + (0.001 if expected == 'deep' else 0.0002)) == pytest.approx(costs[expected])
    # the signal's exchange wins unless route_by_cost
    other = 'thin' if expected == 'deep' else 'deep'
    if costs[other] is not None:
        q = await manager.execute(Signal(SYMBOL, 'buy', entry=61_837.0, size=amount, exchange=other), algo='limit', wait=False)
        assert q.venue == other; await manager.cancel_order(q.id)

async def test_route_by_cost_overrides_the_signal(events):
    snap = snapshot(events)
    cheap = load_markets('binance'); cheap[SYMBOL] = {**cheap[SYMBOL], 'taker': 0.0002}
    clock = SimClock(snap.timestamp / 1000)
    venues = {'deep': PaperExchange('binance', clock=clock), 'cheap': PaperExchange('binance', markets=cheap, clock=clock)}
    manager = SmartOrderManager(venues, clock, execution=ExecutionConfig(route_by_cost=True))
    for n, v in venues.items(): v.on_market(snap); manager.on_market(snap, venue=n)
    p = await manager.execute(Signal(SYMBOL, 'buy', entry=61_837.0, size=0.01, exchange='deep'), algo='market')
    assert p.venue == 'cheap'

# ---------------------------------------------------------------- events, records, signals

async def test_fill_and_completion_events_build_an_execution_record(events):
    clock, paper, manager = setup(events)
    seen = []; manager.subscribe(seen.append)
    sig = Signal(SYMBOL, 'buy', entry=61_830.0, stop=61_000.0, size=0.4, strategy='momentum', exchange='binance', timestamp=clock.ms() - 500)
    p = await manager.execute(sig, algo='market')
    fills = [e for e in seen if isinstance(e, ExecutionFilled)]
    assert [type(e) for e in seen][-1] is ExecutionCompleted and len([e for e in seen if isinstance(e, ExecutionCompleted)]) == 1
    assert [e.fill for e in fills] == p.fills and all(e.strategy == 'momentum' and e.parent_id == p.id for e in fills)
    r = ExecutionRecord(**p.to_execution_record())
    assert (r.decision_price, r.decision_time, r.strategy, r.venue, r.algo) == (61_830.0, sig.timestamp, 'momentum', 'binance', 'market')
    assert r.filled == pytest.approx(0.4) and r.bid == p.arrival_bid and r.ask == p.arrival_ask
    assert execution_metrics(r)['fill_rate'] == pytest.approx(1.0)

async def test_signal_dict_uses_the_default_algorithm(events):
    clock, paper, manager = setup(events)
    p = await manager.execute({'symbol': SYMBOL, 'side': 'buy', 'entry': 61_800, 'stop': 61_000, 'strategy': 's',
                               'exchange': 'binance', 'size': 0.01}, wait=False)
    assert p.algo == 'limit' and p.status == 'working'
    await manager.stop()
    assert p.status == 'canceled' and manager._tasks == {} and await paper.fetch_open_orders(SYMBOL) == []

# ---------------------------------------------------------------- venue reports

def test_order_events_deduplicate_and_synthesize_fills():
    o = Order('c1', SYMBOL, 'buy', 'limit', 1.0, price=100.0, venue='v')
    rep = {'id': '7', 'status': 'open', 'filled': 0.4, 'average': 100.0, 'fee': {'cost': 0.04, 'currency': 'USDT'}, 'trades': []}
    fills = apply_events(o, order_events(o, rep))
    assert o.status is OrderStatus.PARTIALLY_FILLED and o.venue_order_id == '7' and [f.trade_id for f in fills] == ['7@0.4']
    assert apply_events(o, order_events(o, rep)) == []                       # the same report twice adds nothing
    rep2 = {**rep, 'status': 'closed', 'filled': 1.0, 'average': 99.4, 'fee': {'cost': 0.1, 'currency': 'USDT'}}
    (f2,) = apply_events(o, order_events(o, rep2))
    assert f2.amount == pytest.approx(0.6) and f2.price == pytest.approx((99.4 - 0.4 * 100.0) / 0.6) and f2.fee == pytest.approx(0.06)
    assert o.status is OrderStatus.FILLED and o.average_price == pytest.approx(99.4)
    # with trades: one fill per trade, by trade id; a partial IOC ends expired
    o = Order('c2', SYMBOL, 'sell', 'limit', 1.0, price=100.0, time_in_force='IOC')
    trades = [{'id': 'T1', 'price': 101.0, 'amount': 0.3, 'timestamp': 5}, {'id': 'T2', 'price': 100.5, 'amount': 0.2, 'timestamp': 6}]
    rep = {'id': '8', 'status': 'expired', 'filled': 0.5, 'average': 100.8, 'trades': trades}
    fills = apply_events(o, order_events(o, rep))
    assert [f.trade_id for f in fills] == ['T1', 'T2'] and o.status is OrderStatus.EXPIRED and o.filled == pytest.approx(0.5)

class FlakyPaper(PaperExchange):
    "Places the order, then loses the response once: a timeout after the venue got the request."
    failures = 1
    async def create_order(self, *args, **kw):
        order = await super().create_order(*args, **kw)
        if self.failures: self.failures -= 1; raise ccxt.RequestTimeout('response lost')
        return order

async def test_a_lost_response_is_reconciled_not_resent(events):
    t0 = events[0].timestamp / 1000
    clock = SimClock(t0)
    paper = FlakyPaper('binance', clock=clock, balances={'USDT': 1e6})
    manager = SmartOrderManager({'binance': paper}, clock)
    for e in events[:200]: paper.on_market(e); manager.on_market(e)
    p = await clock.run(manager.execute(OrderRequest(SYMBOL, 'buy', 0.2), algo='market'))
    assert p.status == 'completed' and len(await paper.fetch_orders()) == 1 and p.filled == pytest.approx(0.2)
    assert manager.clients['binance'].recovered_orders == 1

# ---------------------------------------------------------------- pushed order updates

class SilentPaper(PaperExchange):
    "A venue whose order stream loses every message: only fetching tells the manager anything."
    def listen_orders(self, callback): return lambda: None

def filled_at(paper:PaperExchange) -> list[int]:
    "Clock ms at which the venue's orders closed, recorded on the venue's side."
    seen = []
    paper.subscribe(lambda kind, d: seen.append(d['lastUpdateTimestamp']) if kind == 'order' and d['status'] == 'closed' else None)
    return seen

async def replay_until_done(clock, paper, manager, events, p, i=200):
    while not p.is_terminal and i < len(events):
        e = events[i]; i += 1
        await clock.advance_to(max(clock.time(), event_time(e) / 1000)); paper.on_market(e); manager.on_market(e)
    await clock.settle()

async def resting_bid(events, venue_cls=PaperExchange, up_since=None):
    "A bid for 0.05 BTC 10 USDT under the touch on the real tape, worked until the trades fill it."
    t0 = events[0].timestamp / 1000
    clock = SimClock(t0)
    paper = venue_cls('binance', clock=clock, balances={'USDT': 1_000_000.0})
    manager = SmartOrderManager({'binance': paper}, clock, execution=ExecutionConfig(order_timeout=3600, partial_fill_threshold=1.0))
    if up_since is not None: manager.stream_orders('binance', up_since)
    for e in events[:200]: paper.on_market(e); manager.on_market(e)
    closed = filled_at(paper)
    bid = manager.view('binance', SYMBOL).bid
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.05, limit_price=bid - 10.0), algo='limit', wait=False)   # rests until the tape comes down
    await replay_until_done(clock, paper, manager, events, p)
    return p, closed[-1], manager.clients['binance'].requests['fetch_order'], clock.time() - t0

async def test_a_pushed_fill_ends_the_parent_when_the_venue_fills_it(events):
    p, venue_ms, fetches, elapsed = await resting_bid(events)
    assert p.status == 'completed' and p.end_time == venue_ms        # not at the next tick
    assert fetches <= elapsed / 30 + 1                                 # one safety fetch per poll_interval at most

async def test_a_silent_stream_is_caught_up_by_the_poll_interval(events):
    p, venue_ms, fetches, _ = await resting_bid(events, SilentPaper)
    assert p.status == 'completed' and 0 < p.end_time - venue_ms <= 30_000 + 1_000

async def test_a_dropped_stream_polls_every_tick_again(events):
    p, venue_ms, fetches, elapsed = await resting_bid(events, SilentPaper, up_since=lambda: None)
    assert p.status == 'completed' and 0 < p.end_time - venue_ms <= 1_000
    assert fetches >= elapsed - 2                                      # about one fetch per second

async def test_a_stream_back_from_a_break_has_its_children_fetched_once(events):
    "What a venue pushed during a break is lost: children last heard of before its stream came back are fetched at the next tick, once."
    clock, paper = SimClock(events[0].timestamp / 1000), None
    paper = SilentPaper('binance', clock=clock, balances={'USDT': 1_000_000.0})
    manager = SmartOrderManager({'binance': paper}, clock, execution=ExecutionConfig(order_timeout=3600))
    since = [clock.time()]
    manager.stream_orders('binance', lambda: since[0])
    for e in events[:200]: paper.on_market(e); manager.on_market(e)
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.05, limit_price=manager.view('binance', SYMBOL).bid - 10.0), algo='limit', wait=False)
    fetches = lambda: manager.clients['binance'].requests['fetch_order']
    async def wait(seconds): await clock.advance_to(clock.time() + seconds); await clock.settle()
    await wait(5.3)
    assert fetches() == 0                                              # heard of when placed; the stream is up
    since[0] = clock.time()                                            # it broke and came back between two ticks
    await wait(2)
    assert fetches() == 1
    await wait(20)
    assert fetches() == 1                                              # then left to the stream for poll_interval
    since[0] = None                                                    # down: every tick
    await wait(3)
    assert fetches() == 4
    assert p.children[0].is_working
    await manager.cancel_order(p.id)

async def test_order_reports_are_matched_by_id_and_applied_once(events):
    clock, paper, manager = setup(events)
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.05), algo='limit', wait=False)
    child = p.children[0]
    report = await paper.fetch_order(child.venue_order_id, SYMBOL)
    assert not manager.on_order_report('binance', {**report, 'clientOrderId': 'someone-else', 'id': 'x'})
    filled = {**report, 'status': 'closed', 'filled': 0.05, 'remaining': 0.0, 'average': child.price, 'cost': 0.05 * child.price,
              'clientOrderId': None, 'trades': []}                     # known only by the venue's id
    assert manager.on_order_report('binance', filled)
    assert child.status is OrderStatus.FILLED and child.filled == pytest.approx(0.05)
    assert not manager.on_order_report('binance', filled)              # a repeat: the child is done
    await clock.settle()
    assert p.status == 'completed' and p.end_time == clock.ms()
    assert not manager.on_order_report('binance', report)              # a stale report of an ended parent changes nothing
    assert child.status is OrderStatus.FILLED and len(child.fills) == 1
    with pytest.raises(OrderValidationError, match='order.venue: unknown venue'): manager.stream_orders('kraken')

"""The simulation fast path: a parent on a zero-latency PaperExchange is driven inline, with lean reports and the venue's own
balance figure; every result must equal the ordinary path's (a venue with latency, ccxt's full order structure)."""
import asyncio
import ccxt
import pytest
from trader.clock import SimClock
from trader.config import ExecutionConfig
from trader.core import Bar, OrderStatus
from trader.orders import OrderRequest, OrderValidationError, SmartOrderManager
from trader.paper import PaperExchange

SYMBOL, T0 = 'BTC/USDT', 1_723_161_600.0

def bar(i:int, close:float) -> Bar:
    return Bar(SYMBOL, int((T0 + 60 * i) * 1000), close, close + 5.0, close - 5.0, close, 10.0, venue='binance')

class FullReports(PaperExchange):
    "A paper venue that ignores `leanReport`: it always answers with ccxt's full order structure."
    async def create_order(self, symbol, type, side, amount, price=None, params={}):
        return await super().create_order(symbol, type, side, amount, price, {k: v for k, v in (params or {}).items() if k != 'leanReport'})

def make(cls=PaperExchange, balances=None, **kw):
    clock = SimClock(T0)
    paper = cls('binance', clock=clock, balances=balances or {'USDT': 1e6}, **kw)
    return clock, paper, SmartOrderManager({'binance': paper}, clock)

def feed(paper, manager, e): paper.on_market(e); manager.on_market(e)

async def test_a_market_order_on_an_immediate_venue_ends_without_a_task_or_a_loop_turn():
    clock, paper, manager = make()
    assert manager.clients['binance'].exchange.immediate and not PaperExchange(latency=0.1).immediate
    feed(paper, manager, bar(0, 60_000.0))
    turned = []
    asyncio.get_running_loop().call_soon(turned.append, 1)   # runs at the loop's next turn
    spawned = []
    ensure = asyncio.ensure_future
    asyncio.ensure_future = lambda *a, **k: spawned.append(a) or ensure(*a, **k)
    try: p = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.1), algo='market')
    finally: asyncio.ensure_future = ensure
    assert (p.status, p.filled, p.average_price) == ('completed', 0.1, 60_000.0)
    assert turned == [] and spawned == [] and manager._tasks == {}
    assert p.done.done() and await manager.wait(p.id) is p

async def test_a_limit_order_on_an_immediate_venue_is_placed_inline_then_worked_by_a_task():
    clock, paper, manager = make()
    feed(paper, manager, bar(0, 60_000.0))
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.1), algo='limit', wait=False)
    assert [c.status for c in p.children] == [OrderStatus.OPEN] and list(manager._tasks) == [p.id]
    await manager.cancel_order(p.id)
    assert p.status == 'canceled' and manager._tasks == {} and await paper.fetch_open_orders() == []

async def test_same_fills_inline_with_lean_reports_as_through_tasks_with_full_reports():
    "The same orders on an immediate venue (inline, lean reports, paper.free) and on one with full reports: same everything."
    runs = []
    for cls in (PaperExchange, FullReports):
        clock, paper, manager = make(cls, balances={'USDT': 200_000.0, 'BTC': 0.5})
        out = []
        for i, (side, amount, close) in enumerate([('buy', 0.1, 60_000.0), ('buy', 0.25, 60_010.5), ('sell', 0.35, 59_990.25),
                                                   ('sell', 0.123456789, 60_001.0), ('buy', 2.5, 60_000.0)]):
            feed(paper, manager, bar(i, close))
            p = await manager.execute(OrderRequest(SYMBOL, side, amount), algo='market')
            out.append((p.status, p.amount, p.filled, p.average_price, p.fees, p.slippage_bps, p.to_dict(),
                        [(f.trade_id, f.price, f.amount, f.fee, f.fee_currency, f.timestamp, f.liquidity) for f in p.fills],
                        [(c.status, c.venue_order_id, c.reason) for c in p.children]))
        with pytest.raises(OrderValidationError) as refused:   # more than the free USDT: refused with the venue's figure
            await manager.execute(OrderRequest(SYMBOL, 'buy', 10.0), algo='market')
        out.append(str(refused.value))
        runs.append(out)
    assert runs[0] == runs[1]
    assert [r[0] for r in runs[0][:5]] == ['completed'] * 5 and 'order.balance: needs' in runs[0][5]
    assert runs[0][3][1] == 0.12345                                        # truncated to Binance's 1e-5 step

async def test_balance_refusals_quote_the_same_free_amount_as_fetch_balance():
    msgs = []
    for latency in (0.0, 0.5):           # immediate: the venue's own free(); with latency: fetch_balance through the client
        clock, paper, manager = make(balances={'USDT': 1_234.5, 'BTC': 0.01}, latency=latency)
        feed(paper, manager, bar(0, 60_000.0))
        for req in (OrderRequest(SYMBOL, 'buy', 0.1), OrderRequest(SYMBOL, 'sell', 0.02)):
            with pytest.raises(OrderValidationError) as e: await clock.run(manager.execute(req, algo='market'))
            msgs.append(str(e.value))
    assert msgs[:2] == msgs[2:]
    assert msgs[0] == 'order.balance: needs 6,006 USDT free on binance, has 1,234.5'    # 0.1 * 60,000 * 1.001
    assert msgs[1] == 'order.balance: needs 0.02 BTC free on binance, has 0.01'

class SlowToAnswer(PaperExchange):
    "A zero-latency venue whose first request times out before reaching the book: unresolved, proven absent, re-sent under a new id."
    failures = 1
    async def create_order(self, *args, **kw):
        if self.failures: self.failures -= 1; raise ccxt.RequestTimeout('no answer')
        return await super().create_order(*args, **kw)

async def test_an_inline_start_that_must_wait_is_handed_to_a_task_that_cancel_order_stops():
    clock, paper, manager = make(SlowToAnswer)
    feed(paper, manager, bar(0, 60_000.0))
    run = asyncio.ensure_future(manager.execute(OrderRequest(SYMBOL, 'buy', 0.1), algo='market'))
    await clock.settle()                                   # the placement now waits for its retry on the clock
    (p,) = manager.parents.values()
    assert p.status == 'working' and list(manager._tasks) == [p.id] and p.children[0].status is OrderStatus.NEW
    t0 = clock.time()
    await clock.run(manager.cancel_order(p.id))            # the child may still land: looked up until Binance's acceptance window has passed
    assert p.status == 'canceled' and manager._tasks == {} and p.children[0].is_terminal
    assert clock.time() - t0 >= manager.clients['binance'].acceptance_window - 1.0 and p.children[0].reason == 'never reached the venue'
    assert await run is p
    await clock.advance(5.0)                               # the retry never goes out
    assert await paper.fetch_orders() == [] and p.filled == 0

async def test_an_inline_start_that_must_wait_still_completes():
    clock, paper, manager = make(SlowToAnswer)
    feed(paper, manager, bar(0, 60_000.0))
    p = await clock.run(manager.execute(OrderRequest(SYMBOL, 'buy', 0.1), algo='market'))
    assert (p.status, p.filled, len(await paper.fetch_orders())) == ('completed', 0.1, 1)
    assert manager.clients['binance'].errors['RequestTimeout'] == 1 and manager._tasks == {}
    assert [c.status for c in p.children] == ['rejected', 'filled'] and len({c.client_order_id for c in p.children}) == 2

async def test_parent_to_dict_matches_its_properties():
    clock, paper, manager = make()
    feed(paper, manager, bar(0, 60_000.0))
    p = await manager.execute(OrderRequest(SYMBOL, 'buy', 0.1), algo='market')
    d = p.to_dict()
    assert list(d) == ('id symbol amount algo venue strategy decision_price decision_time limit_price stop_price target_price status reason '
                       'arrival_price arrival_time end_time end_price leftover filled average_price fees slippage_bps execution_time '
                       'side urgency flags children fills').split()
    assert (d['filled'], d['average_price'], d['fees'], d['fills'], d['side']) == (0.1, 60_000.0, 60_000.0 * 0.1 * 0.001, 1, 'buy')
    assert d['slippage_bps'] == 0.0 and d['execution_time'] == 0.0 and d['children'] == [p.children[0].client_order_id]

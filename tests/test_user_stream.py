"""Our orders' updates pushed over a real ccxt.pro private stream: an unmodified `ccxt.pro.binance` logs in to the local
Binance stand-in's user data stream (tests/wsreplay.py: the websocket API's signed subscribe) and parses the
`executionReport`s the venue sends; the WebSocketManager turns them into `OrderUpdate`s and the order manager applies
them. The venue is a PaperExchange on the real tape whose in-process pushes are switched off, so the websocket is the
only way its fills can reach the manager before a fetch."""
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import ccxt.pro

sys.path.insert(0, str(Path(__file__).parent))
from wsreplay import API_KEY, SECRET, USER_DATA, BinanceReplayServer, ExecutionReports, until
from trader.clock import SimClock
from trader.config import ExecutionConfig
from trader.core import OrderStatus, event_time
from trader.data import sample_market_events
from trader.orders import OrderRequest, SmartOrderManager
from trader.paper import PaperExchange
from trader.websocket import OrderUpdate, WebSocketManager

pytestmark = pytest.mark.timeout(60)
SYM = 'BTC/USDT'

class WebSocketOnlyPaper(PaperExchange):
    "A paper venue that does not push to the manager in process: its order updates travel over the websocket."
    def listen_orders(self, callback): return lambda: None

@pytest.fixture(scope='module')
def events(): return sample_market_events(SYM)

@pytest.fixture
async def venue(events):
    "The replay server, a SimClock and a websocket manager on it."
    server = BinanceReplayServer(); await server.start()
    clock = SimClock(events[0].timestamp / 1000)
    ws = WebSocketManager(clock=clock, rng=np.random.default_rng(0))
    yield server, clock, ws
    await ws.stop(); await server.stop()

def pointed(server, secret=SECRET): return server.point(ccxt.pro.binance({'apiKey': API_KEY, 'secret': secret}))

class Desk:
    """A paper venue on the tape and its order manager, told that the venue pushes over `ws`; the venue's order changes go out as
    Binance executionReports, and the OrderUpdates ccxt.pro parses from them are applied to the manager, as the engine does."""
    def __init__(self, server, clock, ws, events):
        self.server, self.clock, self.ws, self.events, self.pending, self.applied = server, clock, ws, events, [], []
        self.paper = WebSocketOnlyPaper('binance', clock=clock, balances={'USDT': 1_000_000.0})
        self.manager = SmartOrderManager({'binance': self.paper}, clock, execution=ExecutionConfig(order_timeout=3600, partial_fill_threshold=1.0))
        self.manager.stream_orders('binance', partial(ws.up_since, 'binance', 'orders'))
        reports = ExecutionReports()
        self.paper.subscribe(lambda kind, d: self.pending.extend(reports(d)) if kind == 'order' else None)
        for e in events[:200]: self.paper.on_market(e); self.manager.on_market(e)

    @property
    def fetches(self) -> int: return self.manager.clients['binance'].requests['fetch_order']

    async def bid_under_the_touch(self):
        "0.05 BTC bid 10 USDT under the touch: it rests until the tape comes down to it."
        bid = self.manager.view('binance', SYM).bid - 10.0
        return await self.manager.execute(OrderRequest(SYM, 'buy', 0.05, limit_price=bid), algo='limit', wait=False)

    async def deliver(self):
        "Push what the venue produced and apply what arrives."
        n = len(self.pending)
        for e in self.pending: await self.server.push_user(e)
        self.pending.clear()
        got = []
        def arrived():
            got.extend(u for u in self.ws.drain() if isinstance(u, OrderUpdate)); return len(got) >= n
        await until(arrived, what=f'{n} order updates')
        self.applied += [self.manager.on_order_report(u.venue, u.report) for u in got]
        await self.clock.settle()

    async def replay_until_done(self, p, i:int=200):
        while not p.is_terminal and i < len(self.events):
            e = self.events[i]; i += 1
            await self.clock.advance_to(max(self.clock.time(), event_time(e) / 1000)); self.paper.on_market(e); self.manager.on_market(e)
            if self.pending: await self.deliver()

async def test_fills_pushed_over_the_user_stream_complete_the_order_with_the_venues_trades(venue, events):
    server, clock, ws = venue
    ws.subscribe(pointed(server), SYM, channels=['orders'])              # with keys: my_trades too (the engine ignores those)
    await server.wait_subscribed({USER_DATA})
    assert server.logins == [True] and ws.flowing('binance', 'orders')
    desk = Desk(server, clock, ws, events)
    p = await desk.bid_under_the_touch()
    await desk.deliver()                                               # NEW: nothing new to the manager
    t0 = clock.time()
    await desk.replay_until_done(p)
    (order,) = await desk.paper.fetch_orders()
    trades = order['trades']
    assert p.status == 'completed' and order['status'] == 'closed'
    assert p.end_time == order['lastUpdateTimestamp']                  # at the venue's fill, not at a later tick or poll
    assert desk.fetches <= (clock.time() - t0) / 30 + 1
    child = p.children[0]
    assert child.status is OrderStatus.FILLED
    # the child's fills are the venue's trades, as Binance reports them (ids without the paper's prefix; the fee at 8 decimals)
    assert len(trades) > 1 and [f.trade_id for f in child.fills] == [t['id'].lstrip('T') for t in trades]
    for f, t in zip(child.fills, trades):
        assert (f.price, f.amount, f.timestamp) == (t['price'], t['amount'], t['timestamp']) and f.fee == pytest.approx(t['fee']['cost'], abs=1e-8)
    assert {f.fee_currency for f in child.fills} == {'USDT'} and {f.liquidity for f in child.fills} == {'maker'}
    assert desk.applied == [True] * (1 + len(trades))                  # NEW, then one executionReport per trade

async def test_after_the_user_stream_reconnects_the_working_child_is_fetched_once_and_fills_arrive_again(venue, events):
    server, clock, ws = venue
    st = ws.subscribe(pointed(server), SYM, channels=['orders'], private=False)[0]
    await server.wait_subscribed({USER_DATA})
    desk = Desk(server, clock, ws, events)
    p = await desk.bid_under_the_touch()
    await desk.deliver()
    await server.disconnect_all()                                      # the venue drops the connection
    await until(lambda: st.reconnects == 1 and st.up_since is None, what='the stream to see the drop')
    assert not desk.manager.streams_orders('binance')
    dropped_at = clock.time()
    await clock.advance_to(dropped_at + 1.0)                          # the backoff (at most 0.5 s) ends on the clock: a new watch
    await server.wait_subscribed({USER_DATA})
    assert server.logins == [True, True] and dropped_at < st.up_since <= dropped_at + 0.5
    await clock.advance_to(clock.time() + 1.0); await clock.settle()
    assert desk.fetches == 1                                           # what was pushed during the break is lost: fetched once
    await desk.replay_until_done(p)
    (order,) = await desk.paper.fetch_orders()
    assert p.status == 'completed' and p.end_time == order['lastUpdateTimestamp']
    assert [f.trade_id for f in p.children[0].fills] == [t['id'].lstrip('T') for t in order['trades']]

async def test_a_refused_login_stops_the_stream_and_the_manager_polls(venue, events):
    server, clock, ws = venue
    st = ws.subscribe(pointed(server, secret='not-the-secret'), SYM, channels=['orders'], private=False)[0]
    await until(lambda: st.done, what='the stream to stop')
    assert server.logins == [False] and st.errors == 1 and st.up_since is None and st.last_error   # (ccxt 4.5.90 raises KeyError('spot') from its own cleanup of the refused subscribe)
    assert not ws.flowing('binance', 'orders') and ws.up_since('binance', 'orders') is None
    manager = SmartOrderManager({'binance': WebSocketOnlyPaper('binance', clock=clock)}, clock)
    manager.stream_orders('binance', partial(ws.up_since, 'binance', 'orders'))
    assert not manager.streams_orders('binance')                      # so its children are fetched every tick

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
    "The replay server, a ccxt.pro binance with the server's keys pointed at it, a SimClock and a websocket manager on it."
    server = BinanceReplayServer(); await server.start()
    clock = SimClock(events[0].timestamp / 1000)
    ws = WebSocketManager(clock=clock, rng=np.random.default_rng(0))
    yield server, clock, ws
    await ws.stop(); await server.stop()

def pointed(server, secret=SECRET): return server.point(ccxt.pro.binance({'apiKey': API_KEY, 'secret': secret}))

async def test_fills_pushed_over_the_user_stream_complete_the_order_with_the_venues_trades(venue, events):
    server, clock, ws = venue
    ws.subscribe(pointed(server), SYM, channels=['orders'])
    await server.wait_subscribed({USER_DATA})
    assert server.logins == [True] and ws.flowing('binance', 'orders')
    paper = WebSocketOnlyPaper('binance', clock=clock, balances={'USDT': 1_000_000.0})
    manager = SmartOrderManager({'binance': paper}, clock, execution=ExecutionConfig(order_timeout=3600, partial_fill_threshold=1.0))
    manager.stream_orders('binance', partial(ws.up_since, 'binance', 'orders'))
    to_send, reports, applied = [], ExecutionReports(), []
    paper.subscribe(lambda kind, d: to_send.extend(reports(d)) if kind == 'order' else None)

    async def deliver():
        "Push what the venue produced; apply each OrderUpdate ccxt.pro parsed from it, as the engine does."
        pushed = len(to_send)
        for e in to_send: await server.push_user(e)
        to_send.clear()
        got = []
        def arrived():
            got.extend(u for u in ws.drain() if isinstance(u, OrderUpdate)); return len(got) >= pushed
        await until(arrived, what=f'{pushed} order updates')
        for u in got: applied.append(manager.on_order_report(u.venue, u.report))
        await clock.settle()

    for e in events[:200]: paper.on_market(e); manager.on_market(e)
    bid = manager.view('binance', SYM).bid - 10.0                      # rests until the tape comes down to it
    p = await manager.execute(OrderRequest(SYM, 'buy', 0.05, limit_price=bid), algo='limit', wait=False)
    await deliver()                                                    # NEW: nothing new to the manager
    t0, i = clock.time(), 200
    while not p.is_terminal and i < len(events):
        e = events[i]; i += 1
        await clock.advance_to(max(clock.time(), event_time(e) / 1000)); paper.on_market(e); manager.on_market(e)
        if to_send: await deliver()
    (order,) = await paper.fetch_orders()
    trades = order['trades']
    assert p.status == 'completed' and order['status'] == 'closed'
    assert p.end_time == order['lastUpdateTimestamp']                  # at the venue's fill, not at a later tick or poll
    assert manager.clients['binance'].requests['fetch_order'] <= (clock.time() - t0) / 30 + 1
    child = p.children[0]
    assert child.status is OrderStatus.FILLED
    # the child's fills are the venue's trades, as Binance reports them (ids without the paper's prefix, 8 decimals)
    assert len(trades) > 1 and [f.trade_id for f in child.fills] == [t['id'].lstrip('T') for t in trades]
    for f, t in zip(child.fills, trades):
        assert (f.price, f.amount, f.fee, f.timestamp) == (pytest.approx(t['price'], abs=1e-8), pytest.approx(t['amount'], abs=1e-8),
                                                        pytest.approx(t['fee']['cost'], abs=1e-8), t['timestamp'])
    assert {f.fee_currency for f in child.fills} == {'USDT'} and {f.liquidity for f in child.fills} == {'maker'}
    assert applied[0] is True and len(applied) == 1 + len(trades)       # NEW, then one executionReport per trade

async def test_a_refused_login_stops_the_stream_and_the_manager_polls(venue, events):
    server, clock, ws = venue
    st = ws.subscribe(pointed(server, secret='not-the-secret'), SYM, channels=['orders'], private=False)[0]
    await until(lambda: st.done, what='the stream to stop')
    assert server.logins == [False] and st.errors == 1 and st.up_since is None and st.last_error   # (ccxt 4.5.90 raises KeyError('spot') from its own cleanup of the refused subscribe)
    assert not ws.flowing('binance', 'orders') and ws.up_since('binance', 'orders') is None
    manager = SmartOrderManager({'binance': WebSocketOnlyPaper('binance', clock=clock)}, clock)
    manager.stream_orders('binance', partial(ws.up_since, 'binance', 'orders'))
    assert not manager.streams_orders('binance')                      # so its children are fetched every tick

"""Paper mode on live market data, end to end: the ProductionCoordinator with `online=True` subscribes an unmodified
`ccxt.pro.binance` (pointed at the local replay of the bundled Binance capture, tests/wsreplay.py) through its
WebSocketManager, feeds the events to the engine, and a signal fills on the PaperExchange against the book those
websocket messages built. The expected book comes from the raw capture file, rebuilt here with plain Decimals."""
import asyncio, sys
from decimal import Decimal
from pathlib import Path

import pytest
import ccxt.pro

sys.path.insert(0, str(Path(__file__).parent))
from wsreplay import BinanceReplayServer, raw_capture, until
from trader.config import build_config
from trader.coordinator import ProductionCoordinator
from trader.core import Signal
from trader.strategies import MomentumStrategy

pytestmark = pytest.mark.timeout(90)
SYM = 'BTC/USDT'
STREAMS = {'btcusdt@trade', 'btcusdt@depth@100ms', 'btcusdt@bookTicker', 'btcusdt@kline_1m'}

def book_after(n:int) -> tuple[dict, dict]:
    "Bids and asks (Decimal price -> Decimal amount) after the REST snapshot and the depth diffs among the first `n` messages."
    snapshot, msgs = raw_capture()
    book = {k: {Decimal(p): Decimal(q) for p, q in snapshot[k]} for k in ('bids', 'asks')}
    for stream, d in msgs[:n]:
        if stream != 'btcusdt@depth@100ms' or d['u'] <= snapshot['lastUpdateId']: continue
        for key, side in (('b', 'bids'), ('a', 'asks')):
            for p, q in d[key]:
                if Decimal(q) == 0: book[side].pop(Decimal(p), None)
                else: book[side][Decimal(p)] = Decimal(q)
    return book['bids'], book['asks']

def walk(asks:dict, amount:Decimal) -> Decimal:
    "The average price of buying `amount` up the asks."
    left, cost = amount, Decimal(0)
    for p in sorted(asks):
        take = min(left, asks[p]); cost += take * p; left -= take
        if left == 0: return cost / amount
    raise AssertionError('the book is too thin')

async def test_online_paper_mode_trades_on_the_websocket_market_and_shuts_down_flat():
    server = BinanceReplayServer(); await server.start()
    try:
        c = await online_paper(server); eng = c.trading_engine           # its strategy's symbol, BTC/USDT, is what gets subscribed
        assert c.feed is None                                             # no replay feed: the websockets are the market
        loop = asyncio.ensure_future(c.run_production_loop('paper', duration=120))
        await server.wait_subscribed(STREAMS)
        await until(lambda: server.snapshot_requests, what='the REST book snapshot')
        n = 4000
        await server.play(n)
        paper, played = c.venues['binance'], server.capture.messages[:n]
        last_u = max(m.data['u'] for m in played if m.stream == 'btcusdt@depth@100ms')
        last_trade = float(next(m.data['p'] for m in reversed(played) if m.stream == 'btcusdt@trade'))
        await until(lambda: paper.books.get(SYM) is not None and paper.books[SYM].sequence == last_u and eng.marks.get(SYM) == last_trade,
                    what='the paper book at the last diff and the last trade as the mark')
        bids, asks = book_after(n)
        book = paper.books[SYM]
        assert (book.best_bid, book.best_ask) == (float(max(bids)), float(min(asks)))
        px = book.best_ask
        assert await c.submit_signal(Signal(SYM, 'buy', px, stop=px * 0.98, target=px * 1.05, strategy='trend', size=0.3, exchange='binance')) is None
        await until(lambda: eng.positions.open_positions(), what='the position')
        (pos,) = eng.positions.open_positions()
        assert pos.amount == 0.3 and pos.entry_price == pytest.approx(float(walk(asks, Decimal('0.3'))), rel=1e-12)
        report = await c.emergency_shutdown('test over')
        assert not eng.positions.open_positions() and not (await paper.fetch_open_orders())
        assert (await paper.fetch_balance())['BTC']['total'] == pytest.approx(0.0, abs=1e-12)
        summary = await asyncio.wait_for(loop, 5)                     # the stopped engine ends the loop, long before its 120 s
        assert summary['orders'] >= 1 and summary['open_positions'] == 0, (summary, report)
    finally:
        await server.stop()

async def online_paper(server):
    c = ProductionCoordinator(build_config({'mode': 'paper'}), online=True, regimes=False)
    await c.initialize_production_system({'binance': server.point(ccxt.pro.binance())}, {'equity_usd': 100_000})
    c.register_strategy('trend', MomentumStrategy(10, 50, stop_pct=0.02, size=0.01, symbols=SYM), 1.0)
    return c

async def test_the_online_loop_ends_at_its_duration_while_the_market_keeps_talking():
    server = BinanceReplayServer(); await server.start()
    async def market():   # about 5,000 messages a second, for longer than the loop's duration
        await server.wait_subscribed(STREAMS)
        while not server.done: await server.play(50); await asyncio.sleep(0.01)
    try:
        c = await online_paper(server)
        talking = asyncio.ensure_future(market())
        clock = c.trading_engine.clock   # the duration is the engine's clock's: measured there (the loop's monotonic clock and the wall clock drift apart on a busy VM)
        t0 = clock.time()
        summary = await asyncio.wait_for(c.run_production_loop('paper', duration=2.0), 20)
        took = clock.time() - t0
        assert not server.done and not talking.done()                  # the market was still sending
        assert summary['events'] > 1000 and 2.0 <= took < 6.0, (summary['events'], took)
        talking.cancel()
    finally:
        await server.stop()

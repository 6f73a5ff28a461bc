"""WebSocketManager end to end, offline: an unmodified ccxt.pro binance client against a local replay of the
bundled Binance capture (tests/wsreplay.py). Expectations come from the raw capture file itself (parsed and
rebuilt here with plain dicts, following Binance's rules) or from the separately recorded 1m candles."""
import asyncio, heapq, socket, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ccxt.pro

sys.path.insert(0, str(Path(__file__).parent))
from wsreplay import BinanceReplayServer, raw_capture, until
from trader.core import Bar, BookUpdate, Quote, Side, TradeTick
from trader.data import load_candles
from trader.websocket import StreamRecovered, StreamStale, WebSocketManager

pytestmark = pytest.mark.timeout(60)
SYM, DEPTH_STREAM, TRADE_STREAM, BBO_STREAM = 'BTC/USDT', 'btcusdt@depth@100ms', 'btcusdt@trade', 'btcusdt@bookTicker'


# --- the expectation side: raw file, plain dicts -------------------------------------------------------------
SNAPSHOT, RAW = raw_capture()

def rebuilt_tops(upto:int, wanted:set[int], n:int=20) -> dict[int, tuple]:
    "Top-n (bids, asks) after each update id in `wanted`, rebuilding the book from the snapshot and the first `upto` messages."
    L = SNAPSHOT['lastUpdateId']
    bids = {float(p): float(q) for p, q in SNAPSHOT['bids']}
    asks = {float(p): float(q) for p, q in SNAPSHOT['asks']}
    top = lambda: (tuple((p, bids[p]) for p in heapq.nlargest(n, bids)), tuple((p, asks[p]) for p in heapq.nsmallest(n, asks)))
    prev, out = None, ({L: top()} if L in wanted else {})
    for stream, d in RAW[:upto]:
        if stream != DEPTH_STREAM or d['u'] <= L: continue          # drop u <= lastUpdateId
        if prev is None: assert d['U'] <= L + 1 <= d['u']             # the first applied diff straddles L+1
        else: assert d['U'] == prev + 1                                # then each U follows the previous u
        for side, levels in ((bids, d['b']), (asks, d['a'])):
            for p, q in levels:
                if float(q) == 0: side.pop(float(p), None)
                else: side[float(p)] = float(q)
        prev = d['u']
        if prev in wanted: out[prev] = top()
    return out

def file_trades(upto:int) -> list[dict]:
    return [d for s, d in RAW[:upto] if s == TRADE_STREAM]

def last_u(upto:int) -> int:
    "The book's update id once the first `upto` messages are applied (the snapshot's id before any later diff)."
    return max([SNAPSHOT['lastUpdateId']] + [d['u'] for s, d in RAW[:upto] if s == DEPTH_STREAM])


# --- harness ---------------------------------------------------------------------------------------------------
class Run:
    "A replay server, a pointed ccxt.pro binance, a manager, and the events it produced."
    def __init__(self, **kw):
        self.server = BinanceReplayServer()
        self.kw = dict(rng=np.random.default_rng(42), backoff_base=0.05, backoff_cap=0.5, **kw)
        self.events = []

    async def start(self, channels, streams):
        await self.server.start()
        self.exchange = self.server.point(ccxt.pro.binance())
        self.ws = WebSocketManager(**self.kw)
        self.ws.subscribe(self.exchange, SYM, channels=channels)
        await self.server.wait_subscribed(streams)
        if 'order_book' in channels: await until(lambda: self.server.snapshot_requests, what='the REST snapshot request')
        return self

    def collect(self):
        self.events += self.ws.drain(); return self.events

    def of(self, cls): return [e for e in self.collect() if isinstance(e, cls)]

    async def book_at(self, u:int, timeout:float=15.0):
        await until(lambda: any(b.sequence == u for b in self.of(BookUpdate)), timeout, f'the book at update id {u}')

    async def play_synced(self, n:int, chunk:int=250):
        "Replay `n` messages in chunks, waiting after each for the local book to reach the chunk's last update id."
        for _ in range(0, n, chunk):
            await self.server.play(chunk); await self.book_at(last_u(self.server.cursor))

    async def stop(self):
        await self.ws.stop()
        await self.server.stop()

@pytest.fixture
async def run():
    runs = []
    def make(**kw): runs.append(Run(**kw)); return runs[-1]
    yield make
    for r in runs: await r.stop()


def assert_books_match(books:list[BookUpdate], upto:int, min_checks:int):
    expected = rebuilt_tops(upto, {b.sequence for b in books})
    assert len(expected) >= min_checks, (len(expected), min_checks)
    for b in books:
        assert (b.bids, b.asks) == expected[b.sequence], f"book differs at update id {b.sequence}"
        assert b.is_snapshot and b.venue == 'binance' and len(b.bids) == len(b.asks) == 20
        assert b.bids[0][0] < b.asks[0][0]


# --- tests -----------------------------------------------------------------------------------------------------
async def test_trades_and_quotes_arrive_parsed_and_in_order(run):
    r = await run().start(['trades', 'ticker'], {TRADE_STREAM, BBO_STREAM})
    await r.server.play(6000)
    want = file_trades(6000)
    await until(lambda: len(r.of(TradeTick)) >= len(want), what=f'{len(want)} trades')
    ticks = r.of(TradeTick)
    assert [int(t.trade_id) for t in ticks] == [d['t'] for d in want]
    assert [int(t.trade_id) for t in ticks] == list(range(want[0]['t'], want[0]['t'] + len(want)))  # consecutive
    for t, d in zip(ticks, want):
        assert (t.symbol, t.timestamp, t.price, t.amount) == (SYM, d['T'], float(d['p']), float(d['q']))
        assert t.side == (Side.SELL if d['m'] else Side.BUY)
    bbo = [(float(d['b']), float(d['B']), float(d['a']), float(d['A'])) for s, d in RAW[:6000] if s == BBO_STREAM]
    key = lambda q: (q.bid, q.bid_size, q.ask, q.ask_size)
    await until(lambda: r.of(Quote) and key(r.of(Quote)[-1]) == bbo[-1], what='the last best bid/ask')
    quotes = r.of(Quote); seen = [key(q) for q in quotes]
    assert len(seen) >= 2 and seen[0] == bbo[0]              # latest-value stream: ccxt conflates a burst
    it = iter(bbo); assert all(any(x == y for y in it) for x in seen)   # an in-order subsequence of the file's
    s = r.ws.stats
    assert s['events_per_channel'] == {'trades': len(want), 'ticker': len(quotes)}
    assert s['reconnects'] == s['resyncs'] == s['stale_alerts'] == 0


async def test_local_book_matches_book_rebuilt_from_file(run):
    r = await run().start(['order_book'], {DEPTH_STREAM})
    n = 8000
    await r.play_synced(n)                                    # 32 checkpoints at least, plus what arrives between
    books = r.of(BookUpdate)
    assert_books_match(books, n, min_checks=32)
    assert [b.sequence for b in books] == sorted(b.sequence for b in books)
    assert r.ws.book_nonce(SYM) == last_u(n)
    assert r.server.snapshot_requests == [SNAPSHOT['lastUpdateId']]   # synced from the recorded snapshot


@pytest.mark.parametrize('abrupt', [False, True], ids=['close-frame', 'tcp-drop'])
async def test_server_disconnect_is_survived_with_reconnect_and_resync(run, abrupt):
    r = await run().start(['trades', 'order_book'], {TRADE_STREAM, DEPTH_STREAM})
    n1 = 3000
    await r.play_synced(n1)
    before = len(r.of(BookUpdate))
    await r.server.disconnect_all(abrupt=abrupt)
    await until(lambda: all(st.reconnects >= 1 for st in r.ws.streams.values()), what='both streams to see the disconnect')
    await r.server.wait_subscribed({TRADE_STREAM, DEPTH_STREAM})                   # resubscribed on new sockets
    await until(lambda: len(r.server.snapshot_requests) == 2, what='a fresh REST snapshot')
    n2 = n1 + 5000
    await r.play_synced(n2 - n1)
    st = r.ws.streams[('binance', SYM, 'order_book')]
    assert st.resyncs == 1 and st.gaps == 0
    assert r.server.snapshot_requests[1] == last_u(n1)        # the resync snapshot is the book as of the disconnect
    assert r.server.connections == 4 and r.server.subscribe_requests.count((TRADE_STREAM,)) == 2
    after = r.of(BookUpdate)[before:]
    assert_books_match(after, n2, min_checks=20)
    assert after[-1].sequence == r.ws.book_nonce(SYM) == last_u(n2)
    await until(lambda: len(r.of(TradeTick)) >= len(file_trades(n2)), what='every trade')
    assert [int(t.trade_id) for t in r.of(TradeTick)] == [d['t'] for d in file_trades(n2)]   # nothing lost, no duplicate


async def test_sequence_gap_forces_resync(run):
    r = await run().start(['order_book'], {DEPTH_STREAM})
    n1 = 2000
    await r.play_synced(n1)
    r.server.drop_next(DEPTH_STREAM)                          # one diff lost on the wire
    n2 = n1 + 6000
    await r.server.play(n2 - n1)
    await until(lambda: r.ws.streams[('binance', SYM, 'order_book')].resyncs == 1, what='the resync')
    await r.server.wait_subscribed({DEPTH_STREAM}); await until(lambda: len(r.server.snapshot_requests) == 2, what='a new snapshot')
    n3 = n2 + 3000
    await r.play_synced(n3 - n2)
    st = r.ws.streams[('binance', SYM, 'order_book')]
    assert (st.gaps, st.resyncs, st.reconnects) == (1, 1, 0)
    assert 'ChecksumError' in st.last_error
    assert_books_match(r.of(BookUpdate), n3, min_checks=20)  # never a wrong book, before or after the gap


async def test_silent_stream_trips_staleness_and_clears(run):
    alerts = []
    r = await run(stale_after=0.5, check_every=0.05, on_alert=alerts.append).start(
        ['trades', 'order_book', 'ticker'], {TRADE_STREAM, DEPTH_STREAM, BBO_STREAM})
    await r.server.play(1000); await until(lambda: r.of(TradeTick), what='trades')
    assert not r.ws.trading_paused
    r.server.mute(TRADE_STREAM)
    for _ in range(30):                                       # 1.5 s: book and quotes flow, trades are silent
        await r.server.play(30); await asyncio.sleep(0.05)
    assert r.ws.trading_paused and r.ws.is_stale(SYM) and r.ws.paused_symbols == {('binance', SYM)}
    stale = [a for a in alerts if isinstance(a, StreamStale)]
    assert [a.channel for a in stale] == ['trades'] and stale[0].silent_for > 0.5
    assert not r.ws.streams[('binance', SYM, 'ticker')].stale
    r.server.unmute(TRADE_STREAM)
    await r.server.play(300)
    await until(lambda: not r.ws.trading_paused, timeout=5, what='the stale flag to clear')
    assert isinstance(alerts[-1], StreamRecovered) and alerts[-1].channel == 'trades'
    assert r.ws.stats['stale_alerts'] == 1 and not r.ws.is_stale(SYM)


async def test_closed_candles_only_and_equal_to_recorded_candles(run):
    r = await run().start(['ohlcv'], {'btcusdt@kline_1m'})
    await r.server.play()                                     # the whole capture, 23:54:15 -> 00:05:05
    await until(lambda: len(r.of(Bar)) >= 11, what='11 closed candles')
    await asyncio.sleep(0.2)
    bars = r.of(Bar)
    t = lambda b: pd.Timestamp(b.timestamp, unit='ms', tz='UTC')
    assert [t(b) for b in bars] == list(pd.date_range('2024-08-08 23:54', '2024-08-09 00:04', freq='1min', tz='UTC'))
    candles = load_candles('BTC/USDT', '2024-08-08 23:55', '2024-08-09 00:05')   # recorded separately by Binance
    for b in bars[1:]:                                        # 23:54 is partial: the capture starts at 23:54:15
        c = candles.loc[t(b)]
        assert (b.open, b.high, b.low, b.close) == (c.open, c.high, c.low, c.close)
        assert b.volume == pytest.approx(c.volume, rel=1e-9) and b.timeframe_ms == 60_000


async def test_stop_cancels_tasks_and_closes_connections(run):
    r = await run().start(['trades', 'order_book', 'ticker', 'ohlcv'], {TRADE_STREAM, DEPTH_STREAM, BBO_STREAM, 'btcusdt@kline_1m'})
    await r.server.play(500)
    tasks = list(r.ws._tasks.values()) + [r.ws._monitor]
    await r.ws.stop()
    assert all(t.done() for t in tasks) and not r.ws._tasks
    assert not r.exchange.clients
    await until(lambda: not r.server.subscriptions, timeout=5, what='the server to see every socket closed')


async def test_unreachable_venue_backs_off_then_gives_up():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]   # nothing listens here once closed
    from trader.data import load_markets
    ex = ccxt.pro.binance()
    ex.urls['api']['ws']['spot'] = f'ws://127.0.0.1:{port}/stream/ws'
    ex.set_markets({k: {**ex.safe_market_structure(), **m} for k, m in load_markets('binance').items()})
    ws = WebSocketManager(rng=np.random.default_rng(0), backoff_base=0.01, max_retries=2)
    ws.subscribe(ex, SYM, channels=['trades'])
    st = ws.streams[('binance', SYM, 'trades')]
    try:
        await until(lambda: st.done, timeout=20, what='the stream to give up')
        assert (st.reconnects, st.errors) == (3, 1) and 'NetworkError' in st.last_error
    finally:
        await ws.stop()

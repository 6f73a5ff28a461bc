"""Events per second through WebSocketManager: an unmodified ccxt.pro binance client reading the bundled Binance
capture (99,573 stream messages, 2024-08-08 23:54 -> 00:05 UTC) from the local replay server, as fast as it goes.

    python tests/benchmarks/bench_websocket.py

Two runs: every public channel (trades, order book, best bid/ask, 1m candles), and trades alone. Book and quote
streams are latest-value streams in ccxt.pro (a burst is conflated into the newest state), so 'events out' is
below 'messages in' for them; trades are never conflated (every trade id arrives once)."""
import asyncio, sys, time
from pathlib import Path

import numpy as np
import ccxt.pro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsreplay import BinanceReplayServer, load_capture
from trader.core import TradeTick
from trader.websocket import WebSocketManager

STREAMS = {'trades': 'btcusdt@trade', 'order_book': 'btcusdt@depth@100ms', 'ticker': 'btcusdt@bookTicker', 'ohlcv': 'btcusdt@kline_1m'}


async def run(channels:list[str]) -> dict:
    capture = load_capture()
    n_trades = sum(m.stream == 'btcusdt@trade' for m in capture.messages)
    async with BinanceReplayServer(capture) as server:
        ex = server.point(ccxt.pro.binance())
        ws = WebSocketManager(rng=np.random.default_rng(0), stale_after=60)
        ws.subscribe(ex, 'BTC/USDT', channels=channels)
        await server.wait_subscribed({STREAMS[c] for c in channels})
        if 'order_book' in channels:
            while not server.snapshot_requests: await asyncio.sleep(0.01)
        out = {'events': 0, 'trades': 0}
        async def consume():
            async for ev in ws.events():
                out['events'] += 1; out['trades'] += isinstance(ev, TradeTick)
                if out['trades'] == n_trades: return
        t0 = time.perf_counter()
        consumer = asyncio.ensure_future(consume())
        await server.play()
        await asyncio.wait_for(consumer, 120)
        if 'order_book' in channels:
            final_u = max(m.data['u'] for m in capture.messages if m.stream == 'btcusdt@depth@100ms')
            while ws.book_nonce('BTC/USDT') != final_u: await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        out['events'] += len(ws.drain())
        dt = time.perf_counter() - t0
        stats = ws.stats
        await ws.stop()
    return dict(channels=channels, seconds=dt, messages_in=sum(server.sent.values()), events_out=stats['events'],
                per_channel=stats['events_per_channel'], trades=out['trades'])


async def main():
    for channels in (['trades', 'order_book', 'ticker', 'ohlcv'], ['trades']):
        r = await run(channels)
        print(f"{'+'.join(channels):32s} {r['messages_in']:7,d} ws messages in, {r['events_out']:7,d} events out "
              f"in {r['seconds']:.2f} s: {r['messages_in'] / r['seconds']:9,.0f} messages/s, "
              f"{r['events_out'] / r['seconds']:9,.0f} events/s  {r['per_channel']}")

if __name__ == '__main__':
    asyncio.run(main())

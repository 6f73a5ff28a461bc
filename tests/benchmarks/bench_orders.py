"""Benchmark: orders per second through SmartOrderManager's market path on PaperExchange, and the overhead per TWAP slice.

    python tests/benchmarks/bench_orders.py [n_orders] [n_slices]

The venue is a PaperExchange holding the real Binance BTC/USDT REST snapshot of the bundled capture (1,000 levels a side);
the snapshot is re-applied every 100 orders (outside the timing) so the orders keep walking the real book. Time is a SimClock (no waiting);
the wall time measured is pure CPU: validation, routing, the ExchangeClient wrapper, the venue, report translation,
events and statistics bookkeeping.
"""
import asyncio, sys, time
from trader.clock import SimClock
from trader.core import BookUpdate
from trader.data import sample_market_events
from trader.orders import OrderRequest, SmartOrderManager
from trader.paper import PaperExchange

SYMBOL = 'BTC/USDT'

def venue(snap):
    clock = SimClock(snap.timestamp / 1000)
    paper = PaperExchange('binance', clock=clock, balances={'USDT': 1e9, 'BTC': 1e4})
    manager = SmartOrderManager({'binance': paper}, clock)
    paper.on_market(snap); manager.on_market(snap)
    return clock, paper, manager

async def market_path(snap, n:int) -> float:
    "Orders per second: n market orders of 0.01 BTC, alternating buy and sell."
    clock, paper, manager = venue(snap)
    wall = 0.0
    for i in range(n):
        if i % 100 == 0: paper.on_market(snap)
        t = time.perf_counter()
        p = await manager.execute(OrderRequest(SYMBOL, 'buy' if i % 2 == 0 else 'sell', 0.01), algo='market')
        wall += time.perf_counter() - t
        assert p.status == 'completed', p.reason
    return n / wall

async def bare_venue(snap, n:int, type:str='market', params:dict={}) -> float:
    "Seconds per order calling PaperExchange.create_order directly (the floor)."
    def price(paper, i):
        if type == 'market': return None
        b, a = paper.books[SYMBOL].best_bid, paper.books[SYMBOL].best_ask
        return a * 1.005 if i % 2 == 0 else b * 0.995
    clock, paper, _ = venue(snap)
    wall = 0.0
    for i in range(n):
        if i % 100 == 0: paper.on_market(snap)
        t = time.perf_counter()
        await paper.create_order(SYMBOL, type, 'buy' if i % 2 == 0 else 'sell', 0.01, price(paper, i), {'clientOrderId': f"b{i}", **params})
        wall += time.perf_counter() - t
    return wall / n

async def twap(snap, slices:int) -> tuple[float, float]:
    "Wall seconds per slice of a TWAP of `slices` IOC slices over `slices` simulated seconds, and per tick of the driver loop."
    clock, paper, manager = venue(snap)
    t = time.perf_counter()
    p = await clock.run(manager.execute(OrderRequest(SYMBOL, 'buy', 0.01 * slices), algo='twap', duration=slices, slices=slices))
    wall = time.perf_counter() - t
    assert p.status == 'completed' and len(p.children) == slices, (p.reason, len(p.children))
    return wall / slices, wall

async def main(n:int=2000, slices:int=1000):
    snap = next(e for e in sample_market_events(SYMBOL) if isinstance(e, BookUpdate) and e.is_snapshot)
    await market_path(snap, 50)                          # warm up
    ops = await market_path(snap, n)
    floor = await bare_venue(snap, n)
    floor_ioc = await bare_venue(snap, slices, 'limit', {'timeInForce': 'IOC'})
    per_slice, wall = await twap(snap, slices)
    print(f"market path: {ops:,.0f} orders/s through SmartOrderManager.execute ({1e6 / ops:,.0f} us/order; "
          f"PaperExchange.create_order alone: {floor * 1e6:,.0f} us/order, so the manager adds {1e6 / ops - floor * 1e6:,.0f} us)")
    print(f"TWAP: {slices} slices in {wall:.2f} s wall: {per_slice * 1e6:,.0f} us per slice including the venue "
          f"({(per_slice - floor_ioc) * 1e6:,.0f} us overhead per slice beyond the bare IOC create_order, {floor_ioc * 1e6:,.0f} us)")

if __name__ == '__main__':
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*args))

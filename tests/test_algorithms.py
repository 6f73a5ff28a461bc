"Execution algorithms on PaperExchange fed with the real Binance capture (2024-08-08 23:54 -> 2024-08-09 00:05 UTC)."
import asyncio, math
import pytest
from trader.clock import SimClock
from trader.config import AlgorithmConfig, ExecutionConfig
from trader.core import Bar, BookUpdate, OrderStatus, Quote, TradeTick, event_time
from trader.data import candles_to_bars, load_candles, sample_market_events
from trader.orders import OrderRequest, SmartOrderManager
from trader.paper import PaperExchange

SYMBOL = 'BTC/USDT'
RICH = {'USDT': 10_000_000.0, 'BTC': 50.0}

@pytest.fixture(scope='module')
def events():
    return sample_market_events(SYMBOL)

class Sim:
    "A SimClock, one PaperExchange and a SmartOrderManager, fed the recorded events in exchange time."
    def __init__(self, events, execution=None, algorithms=None, balances=None, latency=0.0, watch=None):
        self.events, self.i = events, 0
        self.t0 = events[0].timestamp / 1000
        self.clock = SimClock(self.t0)
        self.paper = PaperExchange('binance', clock=self.clock, latency=latency,
                                   balances=balances or {'USDT': 1_000_000.0, 'BTC': 20.0})
        self.manager = SmartOrderManager({'binance': self.paper}, self.clock, execution=execution or ExecutionConfig(),
                                         algorithms=algorithms or AlgorithmConfig())
        self.watch = watch      # called after every event (invariant checks)

    async def feed_until(self, t:float):
        "Feed every event up to clock time `t`, advancing the clock to each, then to `t`."
        ev = self.events
        while self.i < len(ev) and event_time(ev[self.i]) / 1000 <= t:
            e = ev[self.i]; self.i += 1
            await self.clock.advance_to(max(self.clock.time(), event_time(e) / 1000))
            self.paper.on_market(e); self.manager.on_market(e)
            if self.watch: await self.watch(self)
        await self.clock.advance_to(max(self.clock.time(), t))

    async def open_orders(self): return await self.paper.fetch_open_orders(SYMBOL)

    async def venue_filled(self, parent):
        "What the venue says it filled for this parent's children (independent of our bookkeeping)."
        ids = {c.client_order_id for c in parent.children}
        return sum(t['amount'] for t in await self.paper.fetch_my_trades(SYMBOL) if t['clientOrderId'] in ids)

def trades(events): return [e for e in events if isinstance(e, TradeTick)]

# ---------------------------------------------------------------- TWAP

async def test_twap_on_ticks_sends_slices_on_schedule_and_fills(events):
    "10 slices of a 1 BTC buy over 600 s of the capture (the ticks cover ~11 minutes): one slice every 60 s."
    sim = Sim(events)
    await sim.feed_until(sim.t0 + 10)
    start = sim.clock.time()
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'buy', 1.0), algo='twap', wait=False, duration=600, slices=10)
    await sim.feed_until(start + 650)
    assert p.status == 'completed', p.reason
    assert abs(p.filled - 1.0) < 1e-9
    sent = [c.created_at for c in p.children]
    assert sent == [round((start + 60 * k) * 1000) for k in range(10)]          # by hand: start + k * 600 / 10
    assert all(abs(c.amount - 0.1) < 1e-9 for c in p.children)
    assert abs(await sim.venue_filled(p) - 1.0) < 1e-9
    assert await sim.open_orders() == []

async def test_twap_30_minutes_on_bars(events):
    "A 30-minute TWAP on the bundled 1m candles of the same night: 6 market slices, each filled at the last closed bar."
    df = load_candles(SYMBOL, '2024-08-08 23:30', '2024-08-09 00:30')
    bars = candles_to_bars(df, SYMBOL, venue='binance')
    sim = Sim(bars)
    await sim.feed_until(event_time(bars[0]) / 1000 + 1)        # the first bar closed at 23:31; start a second later
    start = sim.clock.time()
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'sell', 0.6), algo='twap', wait=False, duration=1800, slices=6, slice_type='market')
    await sim.feed_until(start + 1900)
    assert p.status == 'completed', p.reason
    assert [c.created_at for c in p.children] == [round((start + 300 * k) * 1000) for k in range(6)]
    # each slice fills at the close of the latest bar closed by its time, read straight from the candle frame
    closes = {int(t) + 60_000: c for t, c in zip(df.index.asi8, df.close)}
    for c in p.children:
        latest = max(t for t in closes if t <= c.created_at)
        assert c.fills[0].price == closes[latest] and abs(c.filled - 0.1) < 1e-9
    assert abs(p.filled - 0.6) < 1e-9 and await sim.open_orders() == []

async def test_twap_reports_leftover_when_it_cannot_fill(events):
    "IOC slices capped at 1 bp from the mid cannot take 25 BTC a slice: the rest is cancelled at the end and reported."
    sim = Sim(events, execution=ExecutionConfig(max_slippage_tolerance=0.0001), algorithms=AlgorithmConfig(twap_leftover='cancel'),
              balances={'USDT': 20_000_000.0})
    await sim.feed_until(sim.t0 + 5)
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'buy', 100.0), algo='twap', wait=False, duration=120, slices=4)
    await sim.feed_until(sim.t0 + 140)
    assert p.status == 'failed' and p.filled < 100.0
    assert f"{p.remaining:g} of 100 left unfilled" in p.reason and 'leftover cancel' in p.reason
    assert abs(p.leftover - (100.0 - p.filled)) < 1e-9
    assert await sim.open_orders() == []

# ---------------------------------------------------------------- iceberg

async def test_iceberg_never_shows_more_than_one_clip(events):
    shown = []
    async def watch(sim):
        oo = await sim.open_orders()
        shown.append((len(oo), sum(o['remaining'] for o in oo)))
    sim = Sim(events, watch=watch, execution=ExecutionConfig(order_timeout=600), algorithms=AlgorithmConfig(iceberg_variation=0.2))
    await sim.feed_until(sim.t0 + 5)
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'buy', 1.0), algo='iceberg', wait=False, clip_size=0.1)
    await sim.feed_until(sim.t0 + 620)
    assert p.is_terminal and p.children
    assert max(n for n, _ in shown) == 1 and max(a for _, a in shown) <= 0.1 * 1.2 + 1e-9
    # a new clip goes out only when the previous child ended: filled, or cancelled to be repriced
    for prev, nxt in zip(p.children, p.children[1:]):
        assert prev.is_terminal and prev.updated_at <= nxt.created_at
        if prev.status is OrderStatus.CANCELED: assert abs(nxt.amount - prev.remaining) < 1e-5   # a reprice keeps the clip
    sizes = {round(c.amount, 5) for c in p.children if c.status is OrderStatus.FILLED}
    assert len(sizes) > 1 and all(0.08 - 1e-9 <= s <= 0.12 + 1e-9 for s in sizes)   # seeded variation of +-20 %
    assert await sim.open_orders() == []

# ---------------------------------------------------------------- limit

async def test_limit_reprices_and_times_out(events):
    "A 10 BTC sell at the ask from t0 + 62 s, as the market falls: repriced every 30 s as the ask drops, cancelled at 120 s."
    sim = Sim(events, execution=ExecutionConfig(order_timeout=120), algorithms=AlgorithmConfig(limit_reprice_interval=30), balances=RICH)
    await sim.feed_until(sim.t0 + 62)
    start = sim.clock.time()
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'sell', 10.0), algo='limit', wait=False)
    await sim.feed_until(start + 200)
    times = [(c.created_at - round(start * 1000)) / 1000 for c in p.children]
    assert times[0] == 0 and len(times) >= 2 and all(t in (0, 30, 60, 90) for t in times)
    prices = [c.price for c in p.children]
    assert all(b < a for a, b in zip(prices, prices[1:]))                 # each reprice follows the ask down
    assert p.status == 'failed' and 'timed out after 120s' in p.reason
    assert p.end_time == round((start + 120) * 1000)
    assert all(c.is_terminal for c in p.children) and await sim.open_orders() == []
    assert abs(await sim.venue_filled(p) - p.filled) < 1e-9

async def test_limit_timeout_cross_fills_the_rest(events):
    sim = Sim(events, execution=ExecutionConfig(order_timeout=60, timeout_action='cross'), balances=RICH)
    await sim.feed_until(sim.t0 + 62)
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'sell', 10.0), algo='limit', wait=False)
    await sim.feed_until(sim.t0 + 140)
    assert p.status == 'completed' and abs(p.filled - 10.0) < 1e-9
    assert p.children[-1].type.value == 'market' and 'crossed the spread' in p.reason

# ---------------------------------------------------------------- stop-limit and OCO

def first_trade_at_or_below(events, price, after_ms):
    return next(t for t in trades(events) if t.timestamp > after_ms and t.price <= price)

async def test_stop_limit_triggers_only_after_the_trigger_trades(events):
    sim = Sim(events)
    await sim.feed_until(sim.t0 + 5)
    trigger = 61_700.0
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'sell', 0.3, stop_price=trigger), algo='stop_limit', wait=False)
    hit = first_trade_at_or_below(events, trigger, sim.clock.ms())
    # the best bid reaches the trigger before any trade does? either way nothing may go out before the trade
    await sim.feed_until(hit.timestamp / 1000 - 0.001)
    assert p.children == [] and await sim.open_orders() == []
    await sim.feed_until(hit.timestamp / 1000 + 1.0)
    assert len(p.children) == 1
    c = p.children[0]
    assert hit.timestamp <= c.created_at <= hit.timestamp + 1000
    assert c.price == round(trigger * (1 - 0.001), 2)                     # trigger minus stop_limit_offset
    await sim.feed_until(sim.clock.time() + 120)
    assert p.status == 'completed' and abs(p.filled - 0.3) < 1e-9

async def test_stop_limit_never_traded_never_fires_and_cancels_clean(events):
    sim = Sim(events)
    await sim.feed_until(sim.t0 + 5)
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'sell', 0.3, stop_price=61_000.0), algo='stop_limit', wait=False)
    await sim.feed_until(sim.t0 + 700)
    assert min(t.price for t in trades(events)) > 61_000 and p.children == [] and p.status == 'working'
    await sim.manager.cancel_order(p.id)
    assert p.status == 'canceled' and await sim.open_orders() == []

async def test_oco_stop_fills_and_the_target_is_cancelled(events):
    sim = Sim(events)
    await sim.feed_until(sim.t0 + 5)
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'sell', 0.5, stop_price=61_700.0, target_price=61_950.0), algo='oco', wait=False)
    target = p.children[0]
    assert (target.price, target.status) == (61_950.0, OrderStatus.OPEN)
    assert [o['price'] for o in await sim.open_orders()] == [61_950.0]
    hit = first_trade_at_or_below(events, 61_700.0, sim.clock.ms())
    await sim.feed_until(hit.timestamp / 1000 + 1.0)
    assert target.status is OrderStatus.CANCELED
    assert [o['clientOrderId'] for o in await sim.open_orders()] in ([], [p.children[1].client_order_id])
    await sim.feed_until(sim.clock.time() + 120)
    assert p.status == 'completed' and p.reason == 'stop filled' and abs(p.filled - 0.5) < 1e-9
    assert target.filled == 0 and await sim.open_orders() == []

async def test_oco_target_fills_and_the_stop_is_disarmed(events):
    "A buy bracket (covering a short) in the falling market: the target below fills, the stop above never goes out."
    sim = Sim(events)
    await sim.feed_until(sim.t0 + 5)
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'buy', 0.5, stop_price=61_950.0, target_price=61_750.0), algo='oco', wait=False)
    await sim.feed_until(sim.t0 + 660)
    assert p.status == 'completed' and p.reason == 'target filled' and len(p.children) == 1
    assert p.children[0].average_price == pytest.approx(61_750.0) and await sim.open_orders() == []

# ---------------------------------------------------------------- POV

async def test_pov_follows_the_traded_volume(events):
    sim = Sim(events)
    await sim.feed_until(sim.t0 + 5)
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'buy', 2.0), algo='pov', wait=False, rate=0.05, duration=120)
    v0, start = sim.manager.view('binance', SYMBOL).volume, sim.clock.ms()
    await sim.feed_until(sim.t0 + 65)
    traded = sum(t.amount for t in trades(events) if start < t.timestamp <= sim.clock.ms())   # from the raw tape
    assert p.filled <= 0.05 * traded + 1e-9 and p.filled >= 0.05 * traded - 0.05   # within one tick's volume of the rate
    await sim.feed_until(sim.t0 + 200)
    assert p.is_terminal and await sim.open_orders() == []

# ---------------------------------------------------------------- cancelling mid-flight, one test per algorithm

CASES = {'market': dict(req=OrderRequest(SYMBOL, 'buy', 0.5), latency=0.5, after=0.2),
         'limit': dict(req=OrderRequest(SYMBOL, 'sell', 10.0), start=62, after=45),
         'iceberg': dict(req=OrderRequest(SYMBOL, 'buy', 2.0), after=30, params=dict(clip_size=0.2)),
         'twap': dict(req=OrderRequest(SYMBOL, 'buy', 1.0), after=130, params=dict(duration=600, slices=10)),
         'stop_limit': dict(req=OrderRequest(SYMBOL, 'buy', 0.5, stop_price=61_838.0), after=3),
         'oco': dict(req=OrderRequest(SYMBOL, 'sell', 0.5, stop_price=61_500.0, target_price=61_950.0), after=60),
         'pov': dict(req=OrderRequest(SYMBOL, 'buy', 5.0), after=60, params=dict(rate=0.02, duration=300))}

@pytest.mark.parametrize('algo', sorted(CASES))
async def test_cancel_mid_flight_leaves_nothing_open(events, algo):
    case = CASES[algo]
    sim = Sim(events, latency=case.get('latency', 0.0), balances=RICH)
    await sim.feed_until(sim.t0 + case.get('start', 2))
    run = sim.manager.execute(case['req'], algo=algo, wait=False, **case.get('params', {}))
    if case.get('latency'):      # the market order's request is in flight: cancel before it reaches the venue
        task = asyncio.ensure_future(run); await sim.clock.settle()
        p = next(iter(sim.manager.parents.values()))
        assert p.children and p.children[0].status is OrderStatus.NEW
        await sim.manager.cancel_order(p.id)
        await sim.clock.advance(1.0); await task
    else:
        p = await run
        await sim.feed_until(sim.clock.time() + case['after'])
        assert p.status == 'working', (algo, p.status, p.reason)
        await sim.manager.cancel_order(p.id)
    assert p.status == 'canceled'
    assert await sim.open_orders() == []
    assert all(c.is_terminal for c in p.children)
    assert abs(await sim.venue_filled(p) - p.filled) < 1e-9             # our fills are the venue's fills
    assert p.leftover == pytest.approx(p.amount - p.filled)
    assert sim.manager._tasks == {} and sim.manager.active_orders == []
    n = len(p.children)
    await sim.feed_until(sim.clock.time() + 120)                           # nothing more is sent afterwards
    assert len(p.children) == n and await sim.open_orders() == []

async def test_limit_on_bars_is_not_repriced_while_the_price_stands(events):
    "On candles alone the touch is the last close: a passive sell rests a tick above it and is re-placed only when a new close moves away."
    df = load_candles(SYMBOL, '2024-08-08 23:30', '2024-08-09 00:30')
    bars = candles_to_bars(df, SYMBOL, venue='binance')
    sim = Sim(bars, execution=ExecutionConfig(order_timeout=600), algorithms=AlgorithmConfig(limit_reprice_interval=10))
    await sim.feed_until(event_time(bars[0]) / 1000 + 1)
    start = sim.clock.time()
    p = await sim.manager.execute(OrderRequest(SYMBOL, 'sell', 0.01), algo='limit', wait=False)
    await sim.feed_until(start + 55)                  # five reprice checks, no new bar: nothing to move for
    (child,) = p.children
    assert child.price == pytest.approx(df.close.iloc[0] + 0.01) and child.created_at == round(start * 1000)
    await sim.feed_until(start + 600)
    # every re-placement follows a new price: no two children in a row at the same price
    prices = [c.price for c in p.children]
    assert all(a != b for a, b in zip(prices, prices[1:])), prices
    await sim.manager.cancel_order(p.id)

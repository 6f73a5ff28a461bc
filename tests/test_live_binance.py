"""Live mode against `trader.venue_server.BinanceSpotServer` with an unmodified `ccxt.binance` (keys, signatures and
all), built by `connect_exchange`. Outcomes are counted on the server: the orders it holds, its balances, its requests."""
import asyncio
from decimal import Decimal as D
import pytest
from trader.config import build_config
from trader.coordinator import ProductionCoordinator
from trader.exchange import connect_exchange
from trader.venue_server import BinanceSpotServer, Fault

KEYS = {'apiKey': 'test-key', 'secret': 'test-secret'}

class Manual:
    "A registered strategy that trades only what is submitted to it."
    def __init__(self, symbols): self.symbols, self.exit_policy = symbols, None

async def live_session(server:BinanceSpotServer, symbols=('BTC/USDT',), timeout_ms:int=10_000, recv_window:int|None=None):
    ex = server.point(connect_exchange('binance', keys=KEYS, config={'timeout': timeout_ms}))
    if recv_window: ex.options['recvWindow'] = recv_window
    c = ProductionCoordinator(build_config({'mode': 'live', 'execution': {'default_execution_algo': 'market'}}), confirm_live=True, regimes=False)
    eng = await c.initialize_production_system({'binance': ex}, {'equity_usd': 10_000})
    c.register_strategy('manual', Manual(list(symbols)), 0.9)
    await eng.start_live_trading('live')
    eng.marks.update({s: float(server.account.last[s.replace('/', '')]) for s in symbols})   # the feed's prices (the live feed is not under test here)
    return c, eng, ex

def buy(size, px=60_000.0, symbol='BTC/USDT'):
    return {'symbol': symbol, 'side': 'buy', 'entry': px, 'stop': px * 0.98, 'target': px * 1.04, 'strategy': 'manual',
            'exchange': 'binance', 'size': size, 'algo': 'market'}

def held(server, asset): free, locked = server.account.balance(asset); return free + locked

async def test_start_up_on_an_account_with_dust_and_coins_no_feed_prices():
    async with BinanceSpotServer({'USDT': 10_000, 'BTC': '0.01', 'BNB': '0.00042', 'TRX': '3'}) as s:
        await s.trade('BTCUSDT', '60000.00'); await s.trade('BNBUSDT', '500.00')      # TRX has not traded: no price anywhere
        c, eng, ex = await live_session(s)
        try:
            await eng.update_pnl()
            assert eng.equity() == pytest.approx(10_000 + 0.01 * 60_000 + 0.00042 * 500)   # BNB valued at the venue's ticker
            assert eng.unvalued == {'binance': {'TRX': 3.0}}                             # listed, not an error
            assert s.orders == []
        finally:
            await eng.stop_live_trading(); await ex.close()

@pytest.mark.parametrize('bnb', [False, True], ids=['fee-in-base', 'fee-in-bnb'])
async def test_a_position_bought_at_binances_fee_is_sold_down_to_dust(bnb):
    "Binance takes a buy's fee from the BTC bought (or in BNB): the position holds what arrived and the exit sells all of it that can be sold."
    async with BinanceSpotServer({'USDT': 10_000, 'BNB': '1' if bnb else '0'}, bnb_discount=bnb) as s:
        await s.trade('BTCUSDT', '60000.00'); await s.trade('BNBUSDT', '600.00')
        c, eng, ex = await live_session(s)
        try:
            r = await c.trading_engine.execute_signal(buy(0.04166))
            assert r.status == 'filled', r
            (entry,) = s.orders
            assert (entry.side, entry.status, entry.executedQty) == ('BUY', 'FILLED', D('0.04166'))
            fee = entry.fills[0]
            pos = eng.positions.positions[r.position_id]
            if bnb:
                assert fee['commissionAsset'] == 'BNB' and held(s, 'BTC') == D('0.04166')
                assert pos.amount == pytest.approx(0.04166) and pos.fees_paid == pytest.approx(float(fee['commission']) * 600.0)
            else:
                assert fee['commissionAsset'] == 'BTC' and held(s, 'BTC') == D('0.04161834')
                assert pos.amount == pytest.approx(0.04161834) and pos.fees_paid == pytest.approx(0.00004166 * 60_000)
            await s.trade('BTCUSDT', '61000.00'); eng.marks['BTC/USDT'] = 61_000.0
            summary = await c.emergency_shutdown('test')
            assert summary['open_positions_left'] == [] and summary['working_orders_left'] == []
            sells = [o for o in s.orders if o.side == 'SELL']
            assert len(s.orders) == 2 and len(sells) == 1 and sells[0].status == 'FILLED'
            left = held(s, 'BTC')
            assert left * D('61000') < 5 and left < D('0.00001') + D('0.00000834')          # what is left is below NOTIONAL: dust
            assert sells[0].executedQty == (D('0.04166') if bnb else D('0.04161'))
            assert not [o for o in s.orders if o.is_open]
        finally:
            await ex.close()

async def test_an_order_accepted_after_the_clients_timeout_is_one_order_and_one_position():
    async with BinanceSpotServer({'USDT': 10_000}) as s:
        await s.trade('BTCUSDT', '60000.00')
        c, eng, ex = await live_session(s, timeout_ms=1000)
        s.faults.append(Fault('POST', '/api/v3/order', 'late_placed', delay=2.0))   # placed at once, answered after the client gave up
        try:
            r = await eng.execute_signal(buy(0.01))
            assert r.status == 'filled', r
            assert len(s.orders) == 1 and s.orders[0].status == 'FILLED' and s.orders[0].executedQty == D('0.01')
            assert [p.amount for p in eng.positions.open_positions()] == [pytest.approx(0.00999)]   # 0.01 less Binance's 0.1 % in BTC
            assert eng.orders.clients['binance'].recovered_orders == 1
        finally:
            await eng.stop_live_trading(); await ex.close()

async def test_an_order_that_never_landed_is_sent_once_more_under_a_new_id_and_is_one_order():
    async with BinanceSpotServer({'USDT': 10_000}) as s:
        await s.trade('BTCUSDT', '60000.00')
        c, eng, ex = await live_session(s, timeout_ms=1000, recv_window=2000)        # acceptance window 2 s + 1 s
        s.faults.append(Fault('POST', '/api/v3/order', 'lost', delay=2.0))          # never placed; the client times out
        try:
            r = await eng.execute_signal(buy(0.01))
            assert r.status == 'filled', r
            posts = [q for q in s.requests if q[1:3] == ('POST', '/api/v3/order')]
            assert len(posts) == 2 and len(s.orders) == 1 and s.orders[0].status == 'FILLED'
            first, again = [e.payload['client_order_id'] for e in eng.journal.load('order_submitted')]
            assert first != again and s.orders[0].clientOrderId == again
            assert [e.payload['order'] for e in eng.journal.load('order_unresolved')] == [first]
            assert len(eng.positions.open_positions()) == 1
        finally:
            await eng.stop_live_trading(); await ex.close()

@pytest.mark.parametrize('code', [429, 418])
async def test_no_request_reaches_the_venue_inside_a_retry_after_and_the_next_goes_right_after_it(code):
    "Binance answers 429 (or 418, an IP ban that a request during it lengthens) with Retry-After: every request of the key waits it out."
    async with BinanceSpotServer({'USDT': 10_000}) as s:
        await s.trade('BTCUSDT', '60000.00')
        c, eng, ex = await live_session(s)
        try:
            s.ban(2.0, code)
            r = await eng.execute_signal(buy(0.01))
            assert r.status == 'filled', r
            refused = [q for q in s.requests if q[3] == code]
            assert len(refused) == 1, refused                          # the one request that learnt of the ban; nothing after it inside
            end = s.banned_until                                       # for 418 the hit doubled what was left of the ban
            after = [q for q in s.requests if q[0] > refused[0][0]]
            assert after and all(t >= end for t, *_ in after), (end, after)
            assert after[0][0] - end < 2.0                                # the first request goes out right after the end
            assert len(s.orders) == 1 and s.orders[0].status == 'FILLED'
            gate = eng.orders.clients['binance'].gate
            assert gate.pauses and gate.pauses[-1][1] >= 1.0
        finally:
            await eng.stop_live_trading(); await ex.close()

class BuyTheFirstBar:
    "Buys 0.001 BTC on the first closed bar it sees: proof that bars arrive and signals become orders."
    exit_policy = None
    def __init__(self): self.symbols, self.bars = ['BTC/USDT'], []
    def on_bar(self, bar):
        from trader.core import Signal
        self.bars.append(bar)
        if len(self.bars) > 1: return []
        return [Signal('BTC/USDT', 'buy', bar.close, stop=bar.close * 0.98, target=bar.close * 1.04, strategy='first_bar', exchange='binance',
                       size=0.001, algo='market')]

async def test_the_live_loop_gets_prices_over_the_venues_websocket_and_places_the_strategys_order():
    async with BinanceSpotServer({'USDT': 10_000}, minute_by_hand=True) as s:
        await s.trade('BTCUSDT', '60000.00')
        ex = s.point(connect_exchange('binance', keys=KEYS))
        c = ProductionCoordinator(build_config({'mode': 'live', 'execution': {'default_execution_algo': 'market'}}), confirm_live=True, regimes=False)
        eng = await c.initialize_production_system({'binance': ex}, {'equity_usd': 10_000})
        strategy = BuyTheFirstBar()
        c.register_strategy('first_bar', strategy, 0.5)
        async def market():   # trades every 50 ms; a minute ends every 10 trades
            for i in range(200):
                await s.trade('BTCUSDT', f"{60000 + (i % 7) * 10:.2f}", '0.01')
                if i % 10 == 9: await s.end_minute('BTCUSDT')
                if s.orders: break
                await asyncio.sleep(0.05)
        try:
            talking = asyncio.ensure_future(market())
            summary = await asyncio.wait_for(c.run_production_loop('live', duration=4.0), 60)
            await talking
            assert strategy.bars and strategy.bars[0].close in {60000 + k * 10 for k in range(7)}, strategy.bars
            assert len(s.orders) == 1 and s.orders[0].side == 'BUY' and s.orders[0].status == 'FILLED'
            assert summary['orders'] == 1
        finally:
            await ex.close()

async def test_trader_venue_serves_the_stand_in_that_a_ccxt_client_trades_against():
    "The shipped command: `trader venue --replay BTC/USDT` in its own process; a ccxt binance reads its balance and the replayed price."
    import re, subprocess, sys
    import ccxt.async_support as ccxt_async
    proc = subprocess.Popen([sys.executable, '-m', 'trader', 'venue', '--balances', 'USDT=5000,BNB=0.5', '--replay', 'BTC/USDT', '--speed', '0.05'],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        port = int(re.search(r'127\.0\.0\.1:(\d+)', line).group(1))
        ex = BinanceSpotServer(port=port).point(ccxt_async.binance(dict(KEYS)))
        try:
            balance = await ex.fetch_balance()
            assert (balance['total']['USDT'], balance['total']['BNB']) == (5000.0, 0.5)
            ticker = await ex.fetch_ticker('BTC/USDT')
            assert 49_000 < ticker['last'] < 70_000                       # a close of the bundled month
        finally: await ex.close()
    finally:
        proc.terminate(); proc.wait(timeout=30)

# ------------------------------------------------------------------ pre-flight, as the command runs it
async def trader_cli(*args, server:BinanceSpotServer, cwd=None):
    "`python -m trader ARGS` with the keys and the stand-in's URL in its environment, while this loop keeps serving."
    import os, sys
    env = {**os.environ, 'TRADER_BINANCE_API_KEY': 'test-key', 'TRADER_BINANCE_SECRET': 'test-secret', 'TRADER_BINANCE_URL': server.url}
    proc = await asyncio.create_subprocess_exec(sys.executable, '-m', 'trader', *args, env=env, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()

async def ticking(server, symbol='BTCUSDT'):
    "The market keeps trading (so the ticker stream has something to say)."
    while True: await server.trade(symbol, '60000.00'); await asyncio.sleep(0.1)

@pytest.mark.parametrize('setup,args,no_go', [
    ({}, [], None),
    ({'can_withdraw': True}, [], 'permissions: the key can withdraw funds'),
    ({'clock_offset': 12.0}, [], "clock: ours is 12."),
    ({}, ['--equity', '10'], 'order sizes: planned orders the venue would refuse: BTC/USDT 2.50 < minimum cost 5'),
], ids=['go', 'withdrawals', 'clock-skew', 'size-below-minimum'])
async def test_preflight_says_go_or_no_go_with_the_reason(setup, args, no_go):
    async with BinanceSpotServer({'USDT': 10_000}, **setup) as s:
        market = asyncio.ensure_future(ticking(s))
        try: code, out, err = await trader_cli('preflight', '--exchanges', 'binance', '--symbols', 'BTC/USDT', *args, server=s)
        finally: market.cancel()
        if no_go is None: assert code == 0 and err.count('NO-GO') == 0 and out.count('GO') == 8, (out, err)
        else: assert code == 4 and no_go in err, (out, err)

async def test_live_mode_runs_the_preflight_first_and_stops_on_a_no_go(tmp_path):
    async with BinanceSpotServer({'USDT': 10_000}, can_withdraw=True) as s:
        market = asyncio.ensure_future(ticking(s))
        try: code, out, err = await trader_cli('run', '--live', '--confirm-live', '--exchanges', 'binance', '--symbols', 'BTC/USDT',
                                               '--output-dir', str(tmp_path / 'runs'), server=s)
        finally: market.cancel()
        assert code == 4 and 'NO-GO binance permissions: the key can withdraw funds' in err, (out, err)
        assert not (tmp_path / 'runs').exists() and s.orders == []                  # no kernel, no order

@pytest.mark.parametrize('flatten', [False, True], ids=['positions-stay', 'flatten-at-end'])
async def test_a_normal_end_keeps_positions_unless_told_to_flatten_and_journals_why(flatten):
    async with BinanceSpotServer({'USDT': 10_000}, minute_by_hand=True) as s:
        await s.trade('BTCUSDT', '60000.00')
        ex = s.point(connect_exchange('binance', keys=KEYS))
        cfg = build_config({'mode': 'live', 'execution': {'default_execution_algo': 'market'}, 'emergency': {'flatten_at_end': flatten}})
        c = ProductionCoordinator(cfg, confirm_live=True, regimes=False)
        eng = await c.initialize_production_system({'binance': ex}, {'equity_usd': 10_000})
        c.register_strategy('first_bar', BuyTheFirstBar(), 0.5)
        async def market():
            for i in range(200):
                await s.trade('BTCUSDT', '60000.00', '0.01')
                if i % 10 == 9: await s.end_minute('BTCUSDT')
                await asyncio.sleep(0.05)
        try:
            talking = asyncio.ensure_future(market())
            await asyncio.wait_for(c.run_production_loop('live', duration=3.0), 60)
            talking.cancel()
            (end,) = [e.payload for e in eng.journal.load('engine') if e.payload.get('event') == 'stopped']
            assert end['reason'] == 'its duration ended'
            assert [o.side for o in s.orders] == (['BUY', 'SELL'] if flatten else ['BUY']) and not [o for o in s.orders if o.is_open]
            assert (end['open_positions'] == []) is flatten and (len(eng.positions.open_positions()) == 0) is flatten
        finally:
            await ex.close()

async def test_an_emergency_shutdown_waits_for_an_unresolved_order_and_leaves_nothing_open():
    """The entry lands on the venue 2 s after it was sent, after the client's 1 s timeout and its first lookup: the emergency
    shutdown keeps looking until the acceptance window has passed, finds it, and closes what it bought."""
    async with BinanceSpotServer({'USDT': 10_000}) as s:
        await s.trade('BTCUSDT', '60000.00')
        c, eng, ex = await live_session(s, timeout_ms=1000, recv_window=4000)        # acceptance window 5 s
        s.faults.append(Fault('POST', '/api/v3/order', 'slow_placed', delay=2.0))
        try:
            entry = asyncio.ensure_future(eng.execute_signal(buy(0.01)))
            while not eng.orders.unresolved: await asyncio.sleep(0.05)
            assert s.orders == []                                                    # not on the venue yet
            summary = await c.emergency_shutdown('test')
            await entry
            assert summary['open_positions_left'] == [] and summary['working_orders_left'] == []
            assert [o.side for o in s.orders] == ['BUY', 'SELL'] and not [o for o in s.orders if o.is_open]
            assert held(s, 'BTC') * D('60000') < 5                                   # what is left is dust
        finally:
            await ex.close()

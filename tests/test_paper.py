"""PaperExchange on the real Binance BTCUSDT capture: book walks, the trade tape, fees, balances, rejections, and properties.
Every expectation is computed here from the raw JSON strings (Decimal) or by hand, never by the code under test."""
import asyncio, copy, gzip, json
from decimal import Decimal as D
import ccxt
import pytest
from ccxt.base.errors import (BadSymbol, DuplicateOrderId, InsufficientFunds, InvalidOrder, NotSupported,
                              OrderImmediatelyFillable, OrderNotFillable, OrderNotFound)
from hypothesis import HealthCheck, given, settings, strategies as st
from trader.clock import SimClock
from trader.core import Bar, BookUpdate, Quote, Side, TradeTick
from trader.data import load_markets, sample_path
from trader.paper import PaperExchange
from trader.portfolio import holdings

SYM = 'BTC/USDT'
TAKER = D('0.001')   # binance.json BTC/USDT taker and maker

@pytest.fixture(scope='module')
def tape():
    "The raw REST snapshot and the trade messages of both spot BTCUSDT files, parsed here with json only."
    snap, trades = None, []
    for name in ('binance_spot_btcusdt_20240808.gz', 'binance_spot_btcusdt_20240809.gz'):
        with gzip.open(sample_path('ticks', name), 'rt') as f:
            for line in f:
                d = json.loads(line.split(' ', 1)[1])
                if 'stream' not in d: snap = d
                elif d['stream'].endswith('@trade'): trades.append(d['data'])
    trades.sort(key=lambda t: t['t'])
    return snap, trades

def _snapshot_event(snap, ts=0):
    lv = lambda xs: tuple((float(p), float(q)) for p, q in xs)
    return BookUpdate(SYM, ts, lv(snap['bids']), lv(snap['asks']), is_snapshot=True, sequence=snap['lastUpdateId'])

def _tick(t):
    return TradeTick(SYM, t['T'], float(t['p']), float(t['q']), Side.SELL if t['m'] else Side.BUY, str(t['t']))

def _walk(levels, amount):
    "Level-weighted fills of `amount` over raw [price, qty] strings, in exact decimals."
    left, fills = D(amount), []
    for p, q in levels:
        take = min(D(q), left)
        if take > 0: fills.append((D(p), take)); left -= take
        if left == 0: break
    return fills

async def _venue(snap, balances, **kw):
    clock = SimClock(start=1_723_161_254.0)
    ex = PaperExchange(balances=balances, clock=clock, **kw)
    ex.on_market(_snapshot_event(snap, clock.ms()))
    return ex

# --- the book walk ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('amount', ['2', '10', '25.5'])
async def test_market_buy_fills_at_level_weighted_price(tape, amount):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 2_000_000.0})
    fills = _walk(snap['asks'], amount)
    cost = sum(p * q for p, q in fills)
    o = await ex.create_order(SYM, 'market', 'buy', float(amount))
    assert o['status'] == 'closed' and o['filled'] == pytest.approx(float(amount), rel=1e-12)
    assert len(o['trades']) == len(fills) > 1                      # several levels taken
    assert [(t['price'], t['amount']) for t in o['trades']] == [(float(p), pytest.approx(float(q), rel=1e-12)) for p, q in fills]
    assert o['average'] == pytest.approx(float(cost / D(amount)), rel=1e-12)
    assert o['cost'] == pytest.approx(float(cost), rel=1e-12)
    assert o['fee'] == {'cost': pytest.approx(float(cost * TAKER), rel=1e-12), 'currency': 'USDT'}
    assert all(t['takerOrMaker'] == 'taker' and t['fee']['rate'] == 0.001 for t in o['trades'])
    bal = await ex.fetch_balance()
    assert bal['USDT']['total'] == pytest.approx(float(D(2_000_000) - cost * (1 + TAKER)), rel=1e-13)
    assert bal['BTC'] == {'free': pytest.approx(float(amount)), 'used': 0.0, 'total': pytest.approx(float(amount))}

async def test_market_sell_beyond_depth_is_partial_and_expires(tape):
    snap, _ = tape
    depth = sum(D(q) for _, q in snap['bids'])
    markets = load_markets('binance'); markets[SYM]['limits']['market']['max'] = 10_000
    ex = await _venue(snap, {'BTC': 1000.0}, markets=markets)
    o = await ex.create_order(SYM, 'market', 'sell', 1000)
    assert o['status'] == 'expired' and o['filled'] == pytest.approx(float(depth)) and len(o['trades']) == 1000
    assert o['remaining'] == pytest.approx(1000 - float(depth))
    assert (await ex.fetch_order_book(SYM))['bids'] == []          # what we took is gone from the local book
    assert (await ex.fetch_balance())['BTC']['total'] == pytest.approx(1000 - float(depth))

async def test_walk_consumes_local_book_until_next_update(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0})
    o1 = await ex.create_order(SYM, 'market', 'buy', 1.54698)     # exactly the best ask level
    o2 = await ex.create_order(SYM, 'market', 'buy', 0.001)
    assert [t['price'] for t in o1['trades']] == [61837.64]
    assert [t['price'] for t in o2['trades']] == [61837.65]        # the next level, not the one we emptied

# --- balances ----------------------------------------------------------------------------------------------------

async def test_balances_add_up_after_a_sequence_of_orders(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 100_000.0})
    buy = _walk(snap['asks'], '0.5'); sell = _walk(snap['bids'], '0.1')
    c_buy, c_sell = sum(p * q for p, q in buy), sum(p * q for p, q in sell)
    await ex.create_order(SYM, 'market', 'buy', 0.5)
    ask = await ex.create_order(SYM, 'limit', 'sell', 0.2, 61_900)
    bid = await ex.create_order(SYM, 'limit', 'buy', 0.1, 61_000)
    b = await ex.fetch_balance()
    assert b['USDT']['used'] == pytest.approx(0.1 * 61_000 * 1.001) and b['BTC']['used'] == pytest.approx(0.2)
    assert b['BTC']['free'] == pytest.approx(0.3)
    await ex.create_order(SYM, 'market', 'sell', 0.1)
    assert (await ex.cancel_order(bid['id']))['status'] == 'canceled'
    ex.on_market(TradeTick(SYM, ex.clock.ms(), 61_950.0, 0.05, Side.BUY))          # through our ask, capped at 0.05
    exp_usdt = D(100_000) - c_buy * (1 + TAKER) + c_sell * (1 - TAKER) + D('0.05') * 61_900 * (1 - TAKER)
    b = await ex.fetch_balance()
    assert b['USDT'] == {'free': pytest.approx(float(exp_usdt), rel=1e-13), 'used': 0.0, 'total': pytest.approx(float(exp_usdt), rel=1e-13)}
    assert b['BTC'] == {'free': pytest.approx(0.2), 'used': pytest.approx(0.15), 'total': pytest.approx(0.35)}
    assert b['total'] == {'USDT': b['USDT']['total'], 'BTC': b['BTC']['total']}
    o = await ex.fetch_order(ask['id'])
    assert (o['status'], o['filled'], o['remaining'], o['trades'][0]['takerOrMaker']) == ('open', 0.05, pytest.approx(0.15), 'maker')
    assert [x['id'] for x in await ex.fetch_open_orders(SYM)] == [ask['id']]
    assert {x['id'] for x in await ex.fetch_canceled_orders()} == {bid['id']}
    assert len(await ex.fetch_closed_orders(SYM)) == 2 and len(await ex.fetch_my_trades(SYM)) == len(buy) + len(sell) + 1

# --- the tape ----------------------------------------------------------------------------------------------------

def _expected_tape_fills(trades, side, price, amount, queue):
    "The documented rule, applied to the raw strings: through-trades fill up to their size; at-price trades eat the queue first."
    P, left, queue, out = D(price), D(amount), D(queue), []
    for t in trades:
        p, q = D(t['p']), D(t['q'])
        through = p < P if side == 'buy' else p > P
        if through: take = min(left, q)
        elif p == P: eaten = min(queue, q); queue -= eaten; take = min(left, q - eaten)
        else: continue
        if take > 0: out.append((t['T'], take)); left -= take
        if left == 0: break
    return out

@pytest.mark.parametrize('side,price,amount', [('buy', '61800.00', '0.5'), ('buy', '61837.63', '4'), ('sell', '61845.00', '1.2')])
async def test_resting_limit_fills_only_when_tape_trades_through(tape, side, price, amount):
    snap, trades = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0, 'BTC': 10.0})
    o = await ex.create_order(SYM, 'limit', side, float(amount), float(price))
    assert o['status'] == 'open' and o['filled'] == 0
    queue = dict(snap['bids' if side == 'buy' else 'asks']).get(f"{D(price):.8f}", '0')
    assert o['info']['queueAhead'] == float(queue)
    expected = _expected_tape_fills(trades, side, price, amount, queue)
    assert expected, 'the tape should reach this price'
    seen, left = [], []
    ex.subscribe(lambda kind, x: seen.append((x['timestamp'], x['amount'])) if kind == 'trade' else left.append(x['remaining']))
    for t in trades:
        await ex.clock.advance_to(max(ex.clock.time(), t['T'] / 1000))
        ex.on_market(_tick(t))
        if (await ex.fetch_order(o['id']))['status'] == 'closed': break
    # exactly the decimals a venue reports: fills, filled and remaining on the 0.00001 lot grid, no float residue
    assert seen == [(ts, float(a)) for ts, a in expected]
    assert left == [float(D(amount) - sum(a for _, a in expected[:k + 1])) for k in range(len(expected))]
    final = await ex.fetch_order(o['id'])
    assert final['filled'] == float(sum(a for _, a in expected))
    assert final['status'] == ('closed' if sum(a for _, a in expected) == D(amount) else 'open')
    assert all(t['price'] == float(price) and t['takerOrMaker'] == 'maker' for t in final['trades'])
    assert final['fee']['cost'] == pytest.approx(float(D(price) * D(str(final['filled'])) * TAKER), rel=1e-9)

async def test_depth_update_shrinks_queue(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0})
    o = await ex.create_order(SYM, 'limit', 'buy', 1, 61837.63)             # behind 3.78826 displayed
    ex.on_market(BookUpdate(SYM, 1, ((61837.63, 0.5),), (), sequence=snap['lastUpdateId'] + 1, first_sequence=snap['lastUpdateId'] + 1))
    ex.on_market(TradeTick(SYM, 2, 61837.63, 0.7, Side.SELL))
    assert (await ex.fetch_order(o['id']))['filled'] == pytest.approx(0.2)

async def test_bars_only_fill_strictly_through():
    ex = PaperExchange(balances={'USDT': 10_000.0}, clock=SimClock(start=1_000.0))
    ex.on_market(Bar(SYM, 0, 100.0, 101.0, 99.0, 100.0, 5.0))
    o = await ex.create_order(SYM, 'limit', 'buy', 0.2, 98.0)
    ex.on_market(Bar(SYM, 60_000, 100.0, 100.0, 98.0, 99.0, 5.0))
    assert (await ex.fetch_order(o['id']))['filled'] == 0
    ex.on_market(Bar(SYM, 120_000, 99.0, 99.0, 97.99, 98.5, 0.05))
    assert (await ex.fetch_order(o['id']))['filled'] == pytest.approx(0.05)     # capped at the bar's volume
    rows = await ex.fetch_ohlcv(SYM, '3m')
    assert rows == [[0, 100.0, 101.0, 97.99, 98.5, pytest.approx(10.05)]]

# --- rejections --------------------------------------------------------------------------------------------------

async def test_rejections_use_ccxt_classes(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 1_000.0})
    with pytest.raises(InvalidOrder, match='minimum amount precision'): await ex.create_order(SYM, 'limit', 'buy', 0.000009, 60_000)
    with pytest.raises(InvalidOrder, match=r'minimum notional \(limits.cost.min\) 5'): await ex.create_order(SYM, 'limit', 'buy', 0.00008, 60_000)
    with pytest.raises(InvalidOrder, match='minimum notional'): await ex.create_order(SYM, 'market', 'buy', 0.00008)
    with pytest.raises(InsufficientFunds, match='needs 1002.001 USDT free, have 1000'): await ex.create_order(SYM, 'limit', 'buy', 0.02, 50_050)
    with pytest.raises(InsufficientFunds): await ex.create_order(SYM, 'market', 'buy', 0.02)
    with pytest.raises(InsufficientFunds, match='BTC'): await ex.create_order(SYM, 'market', 'sell', 0.001)
    with pytest.raises(InvalidOrder, match='market-order maximum'): await ex.create_order(SYM, 'market', 'buy', 200)
    with pytest.raises(BadSymbol): await ex.create_order('FOO/USDT', 'market', 'buy', 1)
    with pytest.raises(NotSupported, match='inverse swap'): await ex.create_order('BTC/USD:BTC', 'market', 'buy', 1)
    with pytest.raises(NotSupported, match='future'): await ex.create_order('BTC/USDT:USDT-231229', 'market', 'buy', 1)
    with pytest.raises(InvalidOrder, match='reduceOnly'): await ex.create_order(SYM, 'market', 'sell', 0.001, params={'reduceOnly': True})
    with pytest.raises(InvalidOrder, match='positive price'): await ex.create_order(SYM, 'limit', 'buy', 0.001)
    with pytest.raises(InvalidOrder, match='timeInForce'): await ex.create_order(SYM, 'limit', 'buy', 0.001, 60_000, {'timeInForce': 'DAY'})
    with pytest.raises(OrderImmediatelyFillable): await ex.create_order(SYM, 'limit', 'buy', 0.001, 61_900, {'postOnly': True})
    with pytest.raises(OrderNotFound): await ex.fetch_order('42')
    assert await ex.fetch_orders() == [] and (await ex.fetch_balance())['USDT'] == {'free': 1000.0, 'used': 0.0, 'total': 1000.0}
    # rounding happens before the checks: 0.0160999 truncates to 0.01609 (ccxt), which at 60,000 fits in 1,000 USDT
    o = await ex.create_order(SYM, 'limit', 'buy', 0.0160999, 60_000.004)
    assert (o['amount'], o['price']) == (0.01609, 60_000.0)
    with pytest.raises(DuplicateOrderId): await ex.create_order(SYM, 'limit', 'buy', 0.0001, 60_000, {'clientOrderId': o['clientOrderId']})

async def test_amount_min_above_step_and_market_without_data():
    markets = load_markets('binance'); markets[SYM]['limits']['amount']['min'] = 0.001
    ex = PaperExchange(markets=markets, clock=SimClock(1.0))
    with pytest.raises(InvalidOrder, match='below the minimum amount 0.001'): await ex.create_order(SYM, 'limit', 'buy', 0.0009, 60_000)
    with pytest.raises(OrderNotFillable, match='nothing to fill against'): await ex.create_order(SYM, 'market', 'buy', 0.01)

def test_precision_matches_ccxt():
    ex, ref = PaperExchange(), ccxt.binance()
    ref.set_markets(load_markets('binance'))
    for a in (0.123456789, 1.000009, 3):
        assert ex.amount_to_precision(SYM, a) == ref.amount_to_precision(SYM, a)
    assert ex.amount_to_precision(SYM, 0.123456789) == '0.12345' and ex.price_to_precision(SYM, 61837.635001) == '61837.64'

ROUNDING = []   # (venue, reference), made once

@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(1e-9, 1e7), st.integers(1, 10**6), st.sampled_from([0.1, 0.3, 1.0, 1, 61837.635, 0.00001, -0.0, 0.0])),
                min_size=1, max_size=30))
def test_remembered_rounding_is_ccxts(xs):
    "Each call, first or remembered (one venue across all examples), gives what ccxt's binance gives; 1 and 1.0, 0.0 and -0.0 are not conflated."
    if not ROUNDING: ROUNDING.append(PaperExchange()); ROUNDING.append(ccxt.binance()); ROUNDING[1].set_markets(load_markets('binance'))
    ex, ref = ROUNDING
    for x in xs + xs:
        for mine, theirs in ((ex.amount_to_precision, ref.amount_to_precision), (ex.price_to_precision, ref.price_to_precision)):
            try: want = theirs(SYM, x)
            except Exception as e: want = type(e)
            try: got = mine(SYM, x)
            except Exception as e: got = type(e)
            assert got == want, (x, got, want)
    assert all(type(k[2]) is float and k[2] != 0 for k in ex._rounding)

def test_iso_timestamps_are_ccxts():
    from trader.paper import _iso
    for ts in [0, 1_723_161_600_000, 1_723_161_600_000, 1_723_161_600_001, True, 1.5, None, 1_723_161_600_001, -5, 1]:
        assert _iso(ts) == ccxt.Exchange.iso8601(ts), ts

async def test_lean_report_says_what_the_full_structure_says(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0, 'BTC': 10.0})
    ex.on_market(_tick({'T': ex.clock.ms(), 'p': '61837.64', 'q': '0.5', 'm': False, 't': 1}))
    orders = [('market', 'buy', 3, None, {}), ('limit', 'sell', 0.5, 61900.0, {}), ('limit', 'buy', 2, 61837.65, {'timeInForce': 'IOC'}),
              ('market', 'sell', 1.5, None, {})]
    for type_, side, amount, price, params in orders:
        lean = await ex.create_order(SYM, type_, side, amount, price, {**params, 'leanReport': True})
        full = await ex.fetch_order(lean['id'])
        assert set(lean) < set(full) and 'datetime' not in lean and 'info' not in lean
        for k in lean:
            if k == 'trades': assert [{**t} for t in lean[k]] == [{**t} for t in full[k]]
            elif k == 'fee': assert lean[k] == {'cost': full[k]['cost'], 'currency': full[k]['currency']}
            else: assert lean[k] == full[k], k
    statuses = [(await ex.fetch_order(str(i)))['status'] for i in range(1, 5)]
    assert statuses == ['closed', 'open', 'expired', 'closed']

# --- time in force, latency, watchers, structures ---------------------------------------------------------------

async def test_time_in_force(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0})
    ioc = await ex.create_order(SYM, 'limit', 'buy', 2, 61837.65, {'timeInForce': 'IOC'})
    assert (ioc['status'], ioc['filled']) == ('expired', pytest.approx(1.54698 + 0.00843))
    fok = await ex.create_order(SYM, 'limit', 'buy', 2, 61837.70, {'timeInForce': 'FOK'})
    assert (fok['status'], fok['filled'], fok['trades']) == ('expired', 0, [])
    (p3, q3) = snap['asks'][2]                                   # the only level left at or below 61837.68
    assert float(p3) == 61837.68
    gtc = await ex.create_order(SYM, 'limit', 'buy', 0.01, 61837.68)
    assert (gtc['status'], gtc['filled'], gtc['average']) == ('open', float(q3), 61837.68)
    assert (await ex.fetch_balance())['USDT']['used'] == pytest.approx((0.01 - float(q3)) * 61837.68 * 1.001)

async def test_latency_and_a_cancel_that_loses_the_race():
    clock = SimClock(start=100.0)
    ex = PaperExchange(balances={'BTC': 1.0}, clock=clock, latency=0.5, jitter=0.5, seed=7)
    ex.on_market(Quote(SYM, 100_000, 59_990.0, 1.0, 60_000.0, 1.0))
    o = await clock.run(ex.create_order(SYM, 'limit', 'sell', 0.5, 60_100))
    assert 100_500 <= o['timestamp'] < 101_000
    again = PaperExchange(balances={'BTC': 1.0}, clock=SimClock(start=100.0), latency=0.5, jitter=0.5, seed=7)
    again.on_market(Quote(SYM, 100_000, 59_990.0, 1.0, 60_000.0, 1.0))
    assert (await again.clock.run(again.create_order(SYM, 'limit', 'sell', 0.5, 60_100)))['timestamp'] == o['timestamp']
    task = asyncio.ensure_future(ex.cancel_order(o['id']))
    await clock.settle()
    ex.on_market(TradeTick(SYM, clock.ms(), 60_200.0, 1.0, Side.BUY))
    await clock.advance(1.0)
    with pytest.raises(OrderNotFound, match='became closed'): await task

async def test_watch_orders_and_trades(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0})
    orders = asyncio.ensure_future(ex.watch_orders(SYM)); trades = asyncio.ensure_future(ex.watch_my_trades())
    await asyncio.sleep(0)
    await ex.create_order(SYM, 'market', 'buy', 1.6)
    got_o, got_t = await orders, await trades
    fills = _walk(snap['asks'], '1.6')
    assert [x['status'] for x in got_o] == ['open'] * len(fills) + ['closed'] and got_o[-1]['filled'] == pytest.approx(1.6)
    assert [(t['price'], t['amount']) for t in got_t] == [(float(p), pytest.approx(float(q))) for p, q in fills]

async def test_order_listeners_see_every_change_and_a_failing_one_stops_nothing(tape):
    snap, trades = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0})
    seen = []
    undo = ex.listen_orders(lambda o: seen.append((o.client_order_id, o.status, o.filled)))
    ex.listen_orders(lambda o: 1 / 0)
    bid = float(snap['bids'][0][0])
    o = await ex.create_order(SYM, 'limit', 'buy', 0.01, bid, {'clientOrderId': 'L1'})
    assert seen == [('L1', 'open', 0.0)] and ex.callback_errors == 1
    ex.on_market(TradeTick(SYM, 1, bid - 1.0, 1e6, Side.SELL))   # a print through our bid fills it
    assert seen[-1] == ('L1', 'closed', pytest.approx(0.01)) and (await ex.fetch_order(o['id']))['status'] == 'closed'
    undo(); await ex.create_order(SYM, 'market', 'buy', 0.01)
    assert len(seen) == 2

async def test_structures_have_ccxt_keys(tape):
    snap, _ = tape
    ex = await _venue(snap, {'USDT': 1_000_000.0})
    base = ccxt.Exchange()
    o = await ex.create_order(SYM, 'market', 'buy', 1)
    assert set(base.safe_order({'symbol': SYM, 'amount': 1, 'filled': 0, 'status': 'open'})) <= set(o)
    t = o['trades'][0]
    assert set(base.safe_trade({'price': 1, 'amount': 1, 'symbol': SYM})) | {'id', 'order', 'timestamp', 'side', 'takerOrMaker'} <= set(t)
    tk = await ex.fetch_ticker(SYM)
    assert set(base.safe_ticker({'symbol': SYM})) <= set(tk)
    assert (tk['bid'], tk['ask'], tk['askVolume']) == (61837.63, 61837.64, pytest.approx(1.54698 - 1))   # 1 BTC taken from the best ask
    ob = await ex.fetch_order_book(SYM, 5)
    assert len(ob['bids']) == 5 and ob['nonce'] == snap['lastUpdateId'] and {'bids', 'asks', 'timestamp', 'datetime', 'nonce'} <= set(ob)
    b = await ex.fetch_balance()
    assert {'free', 'used', 'total', 'BTC', 'USDT'} <= set(b)
    o['trades'][0]['fee']['cost'] = -1                                     # callers get copies
    assert (await ex.fetch_my_trades())[0]['fee']['cost'] > 0

# --- properties --------------------------------------------------------------------------------------------------

MAKER, TAKER_F = 0.0002, 0.0007
actions = st.lists(st.one_of(
    st.tuples(st.just('limit'), st.sampled_from(['buy', 'sell']), st.integers(1, 40), st.integers(-30, 30), st.sampled_from(['GTC', 'IOC', 'FOK', 'PO'])),
    st.tuples(st.just('market'), st.sampled_from(['buy', 'sell']), st.integers(1, 40)),
    st.tuples(st.just('cancel'), st.integers(0, 50)),
    st.tuples(st.just('trade'), st.integers(-40, 40), st.integers(1, 30)),
    st.tuples(st.just('quote'), st.integers(-20, 20)),
), min_size=1, max_size=40)

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_balance_conservation_and_consistent_states(acts):
    asyncio.run(_run_property(acts))

async def _run_property(acts):
    q0, b0 = 3_000.0, 0.05
    ex = PaperExchange(balances={'USDT': q0, 'BTC': b0}, clock=SimClock(start=1_000.0), fees={'maker': MAKER, 'taker': TAKER_F})
    mid, tick, ids, terminal = 60_000.0, 5.0, [], {}
    ex.on_market(Quote(SYM, 0, mid - tick, 0.02, mid + tick, 0.02))
    for a in acts:
        try:
            if a[0] == 'limit': ids.append((await ex.create_order(SYM, 'limit', a[1], a[2] / 1000, mid + a[3] * tick, {'timeInForce': a[4]}))['id'])
            elif a[0] == 'market': ids.append((await ex.create_order(SYM, 'market', a[1], a[2] / 1000))['id'])
            elif a[0] == 'cancel' and ids: await ex.cancel_order(ids[a[1] % len(ids)])
            elif a[0] == 'trade': ex.on_market(TradeTick(SYM, ex.clock.ms(), mid + a[1] * tick, a[2] / 1000, Side.BUY))
            elif a[0] == 'quote':
                mid += a[1] * tick
                ex.on_market(Quote(SYM, ex.clock.ms(), mid - tick, 0.02, mid + tick, 0.02))
        except (InsufficientFunds, OrderImmediatelyFillable, OrderNotFound):
            pass
        await _invariants(ex, q0, b0, terminal)

async def _invariants(ex, q0, b0, terminal):
    bal, orders, trades = await ex.fetch_balance(), await ex.fetch_orders(), await ex.fetch_my_trades()
    for c in ('USDT', 'BTC', 'ETH'):
        assert ex.free(c) == bal.get(c, {'free': 0.0})['free']     # exactly what fetch_balance says (the order manager's balance check)
    assert list(ex.holdings().items()) == list(holdings({'paper': bal})['paper'].items())   # what the engine's equity reads, with or without orders on hold
    for c in ('USDT', 'BTC'):
        assert bal[c]['free'] >= -1e-9 and bal[c]['used'] >= -1e-12
        assert bal[c]['free'] + bal[c]['used'] == pytest.approx(bal[c]['total'], abs=1e-9)
    sgn = lambda t: 1 if t['side'] == 'buy' else -1
    fees = sum(t['fee']['cost'] for t in trades)
    # conservation: quote + base valued at each fill's own price changes only by the fees
    assert bal['USDT']['total'] - q0 + sum(sgn(t) * t['price'] * t['amount'] for t in trades) == pytest.approx(-fees, abs=1e-7)
    assert bal['BTC']['total'] == pytest.approx(b0 + sum(sgn(t) * t['amount'] for t in trades), abs=1e-12)
    for t in trades:
        rate = MAKER if t['takerOrMaker'] == 'maker' else TAKER_F
        assert t['fee']['cost'] == pytest.approx(t['price'] * t['amount'] * rate, rel=1e-12)
    used_q = used_b = 0.0
    for o in orders:
        own = [t for t in trades if t['order'] == o['id']]
        assert o['filled'] == pytest.approx(sum(t['amount'] for t in own), abs=1e-12)
        assert o['filled'] + o['remaining'] == pytest.approx(o['amount'], abs=1e-12) and o['filled'] <= o['amount'] + 1e-12
        assert o['status'] in ('open', 'closed', 'canceled', 'expired')
        assert (o['status'] == 'closed') == (o['remaining'] == 0)
        if o['type'] == 'limit':
            assert all((t['price'] <= o['price']) if o['side'] == 'buy' else (t['price'] >= o['price']) for t in own)
        if o['timeInForce'] == 'FOK': assert o['filled'] in (0, o['amount'])
        if o['timeInForce'] == 'PO': assert all(t['takerOrMaker'] == 'maker' for t in own)
        if o['id'] in terminal: assert (o['status'], o['filled']) == terminal[o['id']]
        if o['status'] != 'open': terminal[o['id']] = (o['status'], o['filled'])
        elif o['side'] == 'buy': used_q += o['remaining'] * o['price'] * (1 + TAKER_F)
        else: used_b += o['remaining']
    assert bal['USDT']['used'] == pytest.approx(used_q, abs=1e-9) and bal['BTC']['used'] == pytest.approx(used_b, abs=1e-12)
    assert {o['id'] for o in await ex.fetch_open_orders()} == {o['id'] for o in orders if o['status'] == 'open'}

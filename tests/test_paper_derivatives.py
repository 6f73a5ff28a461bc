"""PaperExchange on linear perpetuals (kucoinfutures BTC/USDT:USDT: 1 contract = 0.001 BTC, taker 0.0006, maker 0.0002).
Every expectation is worked by hand here (Decimal where sums matter) or from the raw candles, never by the code under test."""
import asyncio, dataclasses
from decimal import Decimal as D
import ccxt
import pytest
from ccxt.base.errors import (BadRequest, InsufficientFunds, InvalidOrder, NotSupported, OrderImmediatelyFillable,
                              OrderNotFound)
from hypothesis import HealthCheck, given, settings, strategies as st
from trader.clock import SimClock
from trader.core import Bar, BookUpdate, Quote, Side, TradeTick
from trader.data import candles_to_bars, load_candles
from trader.paper import PaperExchange
from trader.paper_derivatives import DerivativesBook, LinearPosition, to_contract_event

S = 'BTC/USDT:USDT'
CS, TAKER, MAKER = D('0.001'), D('0.0006'), D('0.0002')
f = float

def _venue(usdt=10_000.0, exchange='kucoinfutures', **kw):
    return PaperExchange(exchange, balances={'USDT': usdt}, clock=SimClock(start=1_723_161_600.0), **kw)

def _book(ex, bids, asks, sym=S):
    ex.on_market(BookUpdate(sym, ex.clock.ms(), tuple(bids), tuple(asks), is_snapshot=True, sequence=1))

def _mark(ex, price, sym=S):
    "A trade print: the venue's last price, hence the mark."
    ex.on_market(TradeTick(sym, ex.clock.ms(), price, 1.0, Side.BUY))

async def _usdt(ex):
    return (await ex.fetch_balance())['USDT']

def _seed_book(ex, mid=60_000):
    "One deep level a side, 10 USDT apart: buys fill at `mid`, sells at `mid - 10`."
    _book(ex, [(mid - 10.0, 10_000.0)], [(float(mid), 10_000.0)])

# --- opening, scaling, closing -------------------------------------------------------------------------------------

async def test_open_long_10_contracts_at_a_known_book():
    ex = _venue()
    _book(ex, [(59_990.0, 50.0)], [(60_000.0, 6.0), (60_010.0, 20.0)])      # sizes in contracts
    o = await ex.create_order(S, 'market', 'buy', 10)
    notional = 6 * CS * 60_000 + 4 * CS * 60_010                         # 360 + 240.04
    assert notional == D('600.04')
    assert o['status'] == 'closed' and o['filled'] == 10 and o['amount'] == 10
    assert [(t['price'], t['amount']) for t in o['trades']] == [(60_000.0, 6.0), (60_010.0, 4.0)]
    assert o['cost'] == pytest.approx(f(notional), rel=1e-12)
    assert o['average'] == pytest.approx(f(notional / 10 / CS), rel=1e-12)  # per BTC: 60,004
    assert o['fee'] == {'cost': pytest.approx(f(notional * TAKER), rel=1e-12), 'currency': 'USDT'}
    assert [t['cost'] for t in o['trades']] == [pytest.approx(360.0), pytest.approx(240.04)]
    pos = await ex.fetch_position(S)
    assert (pos['side'], pos['contracts'], pos['contractSize']) == ('long', 10, 0.001)
    assert pos['entryPrice'] == pytest.approx(60_004.0, rel=1e-12)
    # no balance in BTC: a perp fill moves only USDT, by the fee
    bal = await ex.fetch_balance()
    assert 'BTC' not in bal and bal['info']['walletBalance']['USDT'] == pytest.approx(f(10_000 - notional * TAKER), rel=1e-14)
    assert ex.books[S].asks() == [(60_010.0, 16.0)]                    # the walk consumed the local book

async def test_fee_is_contracts_times_size_times_price_times_taker():
    ex = _venue()
    _seed_book(ex, 60_000)
    o = await ex.create_order(S, 'market', 'buy', 10)
    assert o['fee']['cost'] == pytest.approx(f(10 * CS * 60_000 * TAKER), rel=1e-12) == pytest.approx(0.36)
    assert o['trades'][0]['fee']['rate'] == 0.0006 and o['trades'][0]['info']['realizedPnl'] == 0

async def test_scale_in_averages_entry_and_partial_close_realizes():
    ex = _venue()
    _seed_book(ex, 60_000)
    await ex.create_order(S, 'market', 'buy', 10)
    _seed_book(ex, 61_000)
    await ex.create_order(S, 'market', 'buy', 20)
    entry = (D(10) * 60_000 + D(20) * 61_000) / 30                         # 60,666.67
    pos = await ex.fetch_position(S)
    assert pos['contracts'] == 30 and pos['entryPrice'] == pytest.approx(f(entry), rel=1e-12)
    _seed_book(ex, 62_010)                                              # sells fill at the bid, 62,000
    o = await ex.create_order(S, 'market', 'sell', 12)
    realized = (D(62_000) - entry) * 12 * CS
    assert o['trades'][0]['info']['realizedPnl'] == pytest.approx(f(realized), rel=1e-12)
    pos = await ex.fetch_position(S)
    assert (pos['side'], pos['contracts']) == ('long', 18) and pos['entryPrice'] == pytest.approx(f(entry), rel=1e-12)
    assert pos['realizedPnl'] == pos['info']['realizedPnl'] == pytest.approx(f(realized), rel=1e-12)
    fees = (10 * CS * 60_000 + 20 * CS * 61_000 + 12 * CS * 62_000) * TAKER
    assert pos['info']['fees'] == pytest.approx(f(fees), rel=1e-12)
    wallet = 10_000 + realized - fees
    assert (await ex.fetch_balance())['info']['walletBalance']['USDT'] == pytest.approx(f(wallet), rel=1e-14)

async def test_short_mirrors_long():
    ex = _venue()
    _seed_book(ex, 60_010)                                              # bid 60,000
    await ex.create_order(S, 'market', 'sell', 10)
    pos = await ex.fetch_position(S)
    assert (pos['side'], pos['contracts'], pos['entryPrice']) == ('short', 10, 60_000.0)
    _mark(ex, 58_000.0)
    pos = await ex.fetch_position(S)
    assert pos['unrealizedPnl'] == pytest.approx(f(10 * CS * (60_000 - 58_000)))      # +20: a short gains as price falls
    _seed_book(ex, 59_000)                                              # buys fill at the ask, 59,000
    o = await ex.create_order(S, 'market', 'buy', 4)
    assert o['trades'][0]['info']['realizedPnl'] == pytest.approx(f((D(60_000) - 59_000) * 4 * CS))   # +4
    pos = await ex.fetch_position(S)
    assert (pos['side'], pos['contracts'], pos['entryPrice']) == ('short', 6, 60_000.0)

async def test_flip_through_zero():
    ex = _venue()
    _seed_book(ex, 60_000)
    await ex.create_order(S, 'market', 'buy', 10)
    _seed_book(ex, 59_010)                                              # bid 59,000
    o = await ex.create_order(S, 'market', 'sell', 25)
    assert o['trades'][0]['info']['realizedPnl'] == pytest.approx(f((D(59_000) - 60_000) * 10 * CS))   # -10 on the 10 closed
    pos = await ex.fetch_position(S)
    assert (pos['side'], pos['contracts'], pos['entryPrice']) == ('short', 15, 59_000.0)
    _seed_book(ex, 58_000)
    await ex.create_order(S, 'market', 'buy', 15)
    assert await ex.fetch_positions() == []
    flat = await ex.fetch_position(S)
    assert (flat['side'], flat['contracts'], flat['entryPrice'], flat['unrealizedPnl']) == (None, 0, None, 0)
    realized = (D(59_000) - 60_000) * 10 * CS + (D(59_000) - 58_000) * 15 * CS                       # -10 + 15
    fees = (10 * CS * 60_000 + 25 * CS * 59_000 + 15 * CS * 58_000) * TAKER
    bal = await _usdt(ex)
    assert bal == {'free': pytest.approx(f(10_000 + realized - fees)), 'used': 0.0, 'total': pytest.approx(f(10_000 + realized - fees))}

# --- margin, leverage, funds -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('lev, ok', [(1, 16), (5, 83)])
async def test_margin_and_insufficient_funds(lev, ok):
    # 1 contract at 60,000 is 60 USDT of notional; it needs 60/lev of margin plus 60 x 0.0006 of fee.
    # 1,000 USDT buys n with n x 60 x (1/lev + 0.0006) <= 1,000: lev 1 -> 16 (960.576), 17 -> 1,020.612;
    # lev 5 -> 83 (998.988), 84 -> 1,011.024.
    for n, fits in ((ok, True), (ok + 1, False)):
        ex = _venue(1_000.0)
        _seed_book(ex, 60_000); _mark(ex, 60_000.0)
        if lev != 1: await ex.set_leverage(lev, S)
        if not fits:
            with pytest.raises(InsufficientFunds, match=f'at leverage {lev} needs'): await ex.create_order(S, 'market', 'buy', n)
            assert await ex.fetch_orders() == [] and await ex.fetch_positions() == []
            continue
        await ex.create_order(S, 'market', 'buy', n)
        margin, fee = D(n) * 60 / lev, D(n) * 60 * TAKER
        bal = await _usdt(ex)
        assert bal['used'] == pytest.approx(f(margin), rel=1e-12) and bal['total'] == pytest.approx(f(1_000 - fee), rel=1e-14)
        assert bal['free'] == pytest.approx(f(1_000 - fee - margin), rel=1e-9)
        pos = await ex.fetch_position(S)
        assert (pos['leverage'], pos['initialMargin'], pos['initialMarginPercentage']) == (lev, pytest.approx(f(margin)), pytest.approx(1 / lev))
        with pytest.raises(InsufficientFunds): await ex.create_order(S, 'market', 'buy', 1)

async def test_resting_limit_holds_margin_and_fee_and_reducing_orders_hold_less():
    ex = _venue(1_000.0)
    _seed_book(ex, 60_000); _mark(ex, 60_000.0)
    await ex.set_leverage(5, S)
    await ex.create_order(S, 'limit', 'buy', 50, 59_000)                    # rests below the ask
    hold = 50 * CS * 59_000 * (MAKER.max(TAKER) + D(1) / 5)               # 2,950 x 0.2006 = 591.77
    assert (await _usdt(ex))['used'] == pytest.approx(f(hold), rel=1e-12)
    with pytest.raises(InsufficientFunds): await ex.create_order(S, 'limit', 'buy', 40, 59_000)   # 40 x 59 x 0.2006 = 473.4 > 408.23
    await ex.cancel_all_orders()
    await ex.create_order(S, 'market', 'buy', 10)                           # long 10 at 60,000
    wallet = 1_000 - 10 * CS * 60_000 * TAKER
    await ex.create_order(S, 'limit', 'sell', 14, 61_000)                   # 10 reduce, 4 open a short
    hold_sell = 14 * CS * 61_000 * TAKER + 4 * CS * 61_000 / 5
    bal = await _usdt(ex)
    assert bal['used'] == pytest.approx(f(10 * CS * 60_000 / 5 + hold_sell), rel=1e-12)
    assert bal['total'] == pytest.approx(f(wallet), rel=1e-14)
    # the tape trades through 61,000: the sell fills as maker, flips to short 4 at 61,000
    ex.on_market(TradeTick(S, ex.clock.ms(), 61_001.0, 100.0, Side.BUY))
    pos = await ex.fetch_position(S)
    assert (pos['side'], pos['contracts'], pos['entryPrice']) == ('short', 4, 61_000.0)
    trades = await ex.fetch_my_trades()
    assert trades[-1]['takerOrMaker'] == 'maker' and trades[-1]['fee']['cost'] == pytest.approx(f(14 * CS * 61_000 * MAKER))
    assert trades[-1]['info']['realizedPnl'] == pytest.approx(f(10 * CS * 1_000))

async def test_set_leverage_limits_and_lowering_needs_margin():
    ex = _venue(1_000.0)
    _seed_book(ex, 60_000); _mark(ex, 60_000.0)
    assert await ex.fetch_leverage(S) == {'info': {'venue': 'paper'}, 'symbol': S, 'marginMode': 'cross', 'longLeverage': 1.0, 'shortLeverage': 1.0}
    with pytest.raises(BadRequest, match=r'\[1, 125\], got 126'): await ex.set_leverage(126, S)   # kucoin's limits.leverage.max
    with pytest.raises(BadRequest): await ex.set_leverage(0.5, S)
    with pytest.raises(NotSupported): await ex.set_leverage(2, 'BTC/USD:BTC')
    assert (await ex.set_leverage(5, S))['longLeverage'] == 5
    await ex.create_order(S, 'market', 'buy', 80)                           # margin 960
    with pytest.raises(InsufficientFunds, match='leverage 1'): await ex.set_leverage(1, S)          # would need 4,800
    assert (await ex.fetch_leverage(S))['longLeverage'] == 5 and (await ex.fetch_position(S))['leverage'] == 5
    await ex.set_leverage(10, S)
    assert (await _usdt(ex))['used'] == pytest.approx(80 * 60 / 10)

# --- reduceOnly ------------------------------------------------------------------------------------------------------

async def test_reduce_only_rejects_opening_increasing_and_oversized():
    ex = _venue()
    _seed_book(ex, 60_000)
    with pytest.raises(InvalidOrder, match='open a position from flat'): await ex.create_order(S, 'market', 'buy', 1, params={'reduceOnly': True})
    await ex.create_order(S, 'market', 'buy', 10)
    with pytest.raises(InvalidOrder, match='increase the long position'): await ex.create_order(S, 'limit', 'buy', 1, 59_000, {'reduceOnly': True})
    with pytest.raises(InvalidOrder, match='exceeds the position of 10'): await ex.create_order(S, 'market', 'sell', 11, params={'reduceOnly': True})
    o = await ex.create_order(S, 'market', 'sell', 10, params={'reduceOnly': True})
    assert o['reduceOnly'] is True and o['filled'] == 10 and await ex.fetch_positions() == []

async def test_resting_reduce_only_is_capped_then_canceled():
    ex = _venue()
    _seed_book(ex, 60_000)
    await ex.create_order(S, 'market', 'buy', 10)
    ro = await ex.create_order(S, 'limit', 'sell', 10, 61_000, {'reduceOnly': True})
    mark = (D(59_990) + 60_000) / 2                                     # no trade yet: the mid
    assert (await _usdt(ex))['used'] == pytest.approx(f(10 * CS * mark + 10 * CS * 61_000 * TAKER))   # the fee only
    await ex.create_order(S, 'market', 'sell', 6)                           # the position shrinks to 4 under it
    ex.on_market(TradeTick(S, ex.clock.ms(), 61_500.0, 100.0, Side.BUY))  # trades through 61,000
    ro = await ex.fetch_order(ro['id'])
    assert (ro['status'], ro['filled'], ro['remaining']) == ('canceled', 4, 6)
    assert await ex.fetch_positions() == [] and await ex.fetch_open_orders() == []
    # a resting reduce-only order whose position closes (or flips) under it is canceled at once, unfilled
    await ex.create_order(S, 'market', 'buy', 3)
    ro = await ex.create_order(S, 'limit', 'sell', 3, 62_000, {'reduceOnly': True})
    keep = await ex.create_order(S, 'limit', 'sell', 3, 62_000)
    await ex.create_order(S, 'market', 'sell', 5)                           # long 3 -> short 2
    ro = await ex.fetch_order(ro['id'])
    assert (ro['status'], ro['filled']) == ('canceled', 0) and (await ex.fetch_order(keep['id']))['status'] == 'open'
    assert [(p['side'], p['contracts']) for p in await ex.fetch_positions()] == [('short', 2)]

# --- marking ---------------------------------------------------------------------------------------------------------

async def test_unrealized_pnl_at_a_mark_and_the_balance():
    ex = _venue()
    _seed_book(ex, 60_000)
    await ex.create_order(S, 'market', 'buy', 10)
    _mark(ex, 63_000.0)
    upnl, margin, fee = 10 * CS * 3_000, 10 * CS * 63_000, 10 * CS * 60_000 * TAKER
    pos = (await ex.fetch_positions([S]))[0]
    assert (pos['markPrice'], pos['lastPrice'], pos['notional']) == (63_000.0, 63_000.0, pytest.approx(630.0))
    assert pos['unrealizedPnl'] == pytest.approx(f(upnl)) and pos['percentage'] == pytest.approx(f(upnl / margin * 100))
    bal = await ex.fetch_balance()
    assert bal['info']['unrealizedPnl'] == {'USDT': pytest.approx(30.0)}
    assert bal['USDT'] == {'total': pytest.approx(f(10_000 - fee + upnl)), 'used': pytest.approx(630.0),
                           'free': pytest.approx(f(10_000 - fee + upnl - margin))}
    assert ex.equity('USDT') == pytest.approx(f(10_000 - fee + upnl))

def test_position_structure_has_ccxt_keys():
    from ccxt.base.types import Position
    ex = _venue()
    _seed_book(ex, 60_000)
    asyncio.run(ex.create_order(S, 'market', 'buy', 10))
    pos = asyncio.run(ex.fetch_position(S))
    assert set(Position.__annotations__) <= set(pos)
    assert pos['marginMode'] == 'cross' and pos['hedged'] is False and pos['timestamp'] == 1_723_161_600_000
    assert ex.has['fetchPositions'] and ex.has['swap'] and ex.has['setLeverage']

# --- precision, limits and other venues ----------------------------------------------------------------------------

async def test_contract_precision_and_limits():
    ex = _venue()
    _seed_book(ex, 60_000)
    o = await ex.create_order(S, 'limit', 'buy', 10.7, 59_000.04)        # 1-contract grid truncates, 0.1 tick rounds
    assert (o['amount'], o['price']) == (10, 59_000.0)
    with pytest.raises(InvalidOrder): await ex.create_order(S, 'market', 'buy', 0.5)
    with pytest.raises(InvalidOrder, match='positive number'): await ex.create_order(S, 'market', 'buy', -1)
    with pytest.raises(NotSupported, match='inverse swap'): await ex.create_order('BTC/USD:BTC', 'market', 'buy', 1)
    # binance's perp: contractSize 1, step 0.001, minimum notional 5 USDT on the notional
    bn = _venue(exchange='binance')
    _book(bn, [(3_999.0, 5.0)], [(4_000.0, 5.0)])
    with pytest.raises(InvalidOrder, match=r'notional 4 USDT .* minimum notional'): await bn.create_order(S, 'market', 'buy', 0.001)
    o = await bn.create_order(S, 'market', 'buy', 0.002)
    assert o['cost'] == pytest.approx(8.0) and o['fee']['cost'] == pytest.approx(8 * 0.0004)

async def test_okx_contract_size():
    ex = _venue(exchange='okx')                                             # 1 contract = 0.01 BTC, step 0.1, taker 0.0005
    _seed_book(ex, 60_000)
    o = await ex.create_order(S, 'market', 'buy', 1.5)
    assert o['cost'] == pytest.approx(f(D('1.5') * D('0.01') * 60_000)) and o['fee']['cost'] == pytest.approx(f(D(900) * D('0.0005')))
    _mark(ex, 61_000.0)
    assert (await ex.fetch_position(S))['unrealizedPnl'] == pytest.approx(f(D('1.5') * D('0.01') * 1_000))

async def test_spot_and_perp_share_one_wallet_on_binance():
    ex = _venue(10_000.0, exchange='binance')
    _book(ex, [(59_990.0, 5.0)], [(60_000.0, 5.0)], sym='BTC/USDT')
    _book(ex, [(59_990.0, 5.0)], [(60_000.0, 5.0)])
    await ex.create_order('BTC/USDT', 'market', 'buy', 0.1)                 # spot: 6,000 + 0.1% fee
    await ex.create_order(S, 'market', 'sell', 0.05)                        # perp short from flat: allowed
    with pytest.raises(InsufficientFunds, match='BTC'): await ex.create_order('BTC/USDT', 'market', 'sell', 0.2)   # no spot shorts
    bal = await ex.fetch_balance()
    assert bal['BTC']['total'] == pytest.approx(0.1)
    wallet = 10_000 - 6_000 * 1.001 - 0.05 * 59_990 * 0.0004
    assert bal['info']['walletBalance']['USDT'] == pytest.approx(wallet)
    mid = (59_990 + 60_000) / 2
    assert bal['USDT']['used'] == pytest.approx(0.05 * mid) and bal['USDT']['total'] == pytest.approx(wallet + 0.05 * (59_990 - mid))

# --- bars replayed as the perp ---------------------------------------------------------------------------------------

async def test_bundled_bars_relabelled_fill_market_orders_at_the_last_close():
    df = load_candles('BTC/USDT').iloc[:120]
    bars = [dataclasses.replace(b, symbol=S) for b in candles_to_bars(df, 'BTC/USDT')]
    ex = PaperExchange('kucoinfutures', balances={'USDT': 10_000.0}, clock=SimClock(start=bars[0].timestamp / 1000))
    for b in bars[:60]: ex.on_market(b)
    close = float(df['close'].iloc[59])                                   # read from the raw frame
    o = await ex.create_order(S, 'market', 'buy', 10)
    assert o['average'] == close and [t['price'] for t in o['trades']] == [close]
    assert o['fee']['cost'] == pytest.approx(10 * 0.001 * close * 0.0006, rel=1e-12)
    for b in bars[60:]: ex.on_market(b)
    last = float(df['close'].iloc[-1])
    pos = await ex.fetch_position(S)
    assert pos['markPrice'] == last and pos['unrealizedPnl'] == pytest.approx(10 * 0.001 * (last - close), rel=1e-9)
    o = await ex.create_order(S, 'market', 'sell', 10, params={'reduceOnly': True})
    assert o['average'] == last and o['trades'][0]['info']['realizedPnl'] == pytest.approx(10 * 0.001 * (last - close), rel=1e-9)

def test_to_contract_event_converts_sizes():
    b = to_contract_event(Bar('BTC/USDT', 0, 1, 2, 0.5, 1.5, 3.0), S, 0.001)
    q = to_contract_event(Quote('BTC/USDT', 0, 1.0, 0.5, 2.0, 0.25), S, 0.001)
    u = to_contract_event(BookUpdate('BTC/USDT', 0, ((1.0, 0.002),), ((2.0, 0.004),), True), S, 0.001)
    assert (b.symbol, b.volume, b.close) == (S, 3_000.0, 1.5) and (q.bid_size, q.ask_size) == (500.0, 250.0)
    assert (u.bids, u.asks) == (((1.0, 2.0),), ((2.0, 4.0),))
    with pytest.raises(TypeError): to_contract_event(object(), S, 0.001)

# --- the accounting alone --------------------------------------------------------------------------------------------

def test_linear_position_dust_closes_flat():
    p = LinearPosition(S, 0.001, 'USDT')
    p.apply(0.3, 100.0); p.apply(-0.1, 100.0); p.apply(-0.2, 100.0)      # 0.3 - 0.1 - 0.2 != 0 in floats
    assert (p.contracts, p.entry_price, p.side) == (0.0, 0.0, None)

# --- property: equity moves only by price moves on the position, minus fees ----------------------------------------

actions = st.lists(st.one_of(
    st.tuples(st.just('market'), st.sampled_from(['buy', 'sell']), st.integers(1, 40), st.booleans()),
    st.tuples(st.just('limit'), st.sampled_from(['buy', 'sell']), st.integers(1, 40), st.integers(-30, 30), st.booleans()),
    st.tuples(st.just('cancel'), st.integers(0, 50)),
    st.tuples(st.just('trade'), st.integers(-40, 40), st.integers(1, 60)),
    st.tuples(st.just('quote'), st.integers(-20, 20)),
    st.tuples(st.just('leverage'), st.sampled_from([1, 2, 3, 5, 10, 20])),
), min_size=1, max_size=40)

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_equity_changes_only_by_price_moves_minus_fees(acts):
    asyncio.run(_run_property(acts))

async def _run_property(acts):
    q0, tick = 1_500.0, 5.0
    ex = _venue(q0)
    mid, last_trade, ids, lev = 60_000.0, None, [], {S: 1.0}
    ex.on_market(Quote(S, 0, mid - tick, 400.0, mid + tick, 400.0))
    for a in acts:
        try:
            if a[0] == 'market': ids.append((await ex.create_order(S, 'market', a[1], a[2], params={'reduceOnly': a[3]}))['id'])
            elif a[0] == 'limit': ids.append((await ex.create_order(S, 'limit', a[1], a[2], mid + a[3] * tick, {'reduceOnly': a[4]}))['id'])
            elif a[0] == 'cancel' and ids: await ex.cancel_order(ids[a[1] % len(ids)])
            elif a[0] == 'trade':
                last_trade = mid + a[1] * tick
                ex.on_market(TradeTick(S, ex.clock.ms(), last_trade, float(a[2]), Side.BUY))
            elif a[0] == 'quote':
                mid += a[1] * tick
                ex.on_market(Quote(S, ex.clock.ms(), mid - tick, 400.0, mid + tick, 400.0))
            elif a[0] == 'leverage':
                await ex.set_leverage(a[1], S); lev[S] = float(a[1])
        except (InsufficientFunds, InvalidOrder, OrderImmediatelyFillable, OrderNotFound):
            pass
        await _invariants(ex, q0, last_trade if last_trade is not None else mid, lev[S])

async def _invariants(ex, q0, mark, lev):
    bal, trades, orders = await ex.fetch_balance(), await ex.fetch_my_trades(), await ex.fetch_orders()
    u = bal['USDT']
    sgn = lambda t: 1 if t['side'] == 'buy' else -1
    q = sum(sgn(t) * t['amount'] for t in trades)                        # net contracts, from the fills alone
    flows = sum(sgn(t) * t['price'] * t['amount'] * 0.001 for t in trades)
    fees = sum(t['fee']['cost'] for t in trades)
    # equity = start - what the fills paid for base + the base held at the mark - fees (no averaging involved)
    assert u['total'] == pytest.approx(q0 - flows + q * 0.001 * mark - fees, abs=1e-6)
    assert bal['info']['walletBalance']['USDT'] == pytest.approx(q0 + sum(t['info']['realizedPnl'] for t in trades) - fees, abs=1e-6)
    for t in trades:
        rate = 0.0002 if t['takerOrMaker'] == 'maker' else 0.0006
        assert t['cost'] == pytest.approx(t['amount'] * 0.001 * t['price'], rel=1e-12)
        assert t['fee']['cost'] == pytest.approx(t['cost'] * rate, rel=1e-12)
    pos = await ex.fetch_positions()
    signed = sum((1 if p['side'] == 'long' else -1) * p['contracts'] for p in pos)
    assert signed == pytest.approx(q, abs=1e-9) and all(p['leverage'] == lev for p in pos)
    # used = position margin at the mark + each open order's fee and opening margin, offset against the position
    used = abs(q) * 0.001 * mark / lev
    for o in orders:
        if o['status'] != 'open': continue
        opposite = abs(q) if q * sgn(o) < 0 else 0.0
        opening = 0.0 if o['reduceOnly'] else max(0.0, o['remaining'] - opposite)
        used += o['remaining'] * 0.001 * o['price'] * (0.0006 + opening / o['remaining'] / lev)
        if o['reduceOnly']: assert opposite > 0
    assert u['used'] == pytest.approx(used, abs=1e-6) and u['free'] == pytest.approx(u['total'] - u['used'], abs=1e-9)
    for o in orders:
        assert o['filled'] + o['remaining'] == pytest.approx(o['amount']) and o['status'] in ('open', 'closed', 'canceled', 'expired')

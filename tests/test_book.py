"The order book and walk_book against the real Binance BTCUSDT capture, with expectations computed from the raw strings."
import gzip, json
from decimal import Decimal
import pytest
from hypothesis import given, strategies as st
from trader.book import OrderBook, walk_book, walk_book_cost, impact_bps
from trader.core import BookUpdate
from trader.data import sample_path

def _messages():
    out = []
    for name in ('binance_spot_btcusdt_20240808.gz', 'binance_spot_btcusdt_20240809.gz'):
        with gzip.open(sample_path('ticks', name), 'rt') as f:
            out += [json.loads(l.split(' ', 1)[1]) for l in f]
    return out

@pytest.fixture(scope='module')
def raw():
    msgs = _messages()
    snap = next(m for m in msgs if 'stream' not in m)
    diffs = sorted((m['data'] for m in msgs if m.get('stream', '').endswith('@depth@100ms')), key=lambda d: d['u'])
    return snap, diffs

def _lv(xs): return tuple((float(p), float(q)) for p, q in xs)

def _snapshot_book(snap):
    b = OrderBook('BTC/USDT')
    b.apply(BookUpdate('BTC/USDT', 0, _lv(snap['bids']), _lv(snap['asks']), is_snapshot=True, sequence=snap['lastUpdateId']))
    return b

@pytest.mark.parametrize('amount', ['2', '10', '50'])
def test_market_buy_walk_matches_decimal_computation(raw, amount):
    snap, _ = raw
    book = _snapshot_book(snap)
    left, cost = Decimal(amount), Decimal(0)
    for p, q in snap['asks']:            # the raw strings, exact decimals, best first as Binance sends them
        take = min(Decimal(q), left); cost += take * Decimal(p); left -= take
        if left == 0: break
    expected_avg = cost / Decimal(amount)
    mid = (Decimal(snap['bids'][0][0]) + Decimal(snap['asks'][0][0])) / 2
    w = walk_book(book.asks(), float(amount))
    assert w.filled == pytest.approx(float(amount), rel=1e-12)
    assert w.average == pytest.approx(float(expected_avg), rel=1e-12)
    assert impact_bps(w, book.mid) == pytest.approx(float((expected_avg / mid - 1) * 10_000), abs=1e-6)
    if amount == '10': assert float((expected_avg / mid - 1) * 10_000) == pytest.approx(1.7, abs=0.05)   # the data README's number

def test_walk_runs_out_of_depth(raw):
    snap, _ = raw
    total = sum(Decimal(q) for _, q in snap['asks'])
    w = walk_book(_snapshot_book(snap).asks(), 1000)
    assert w.filled == pytest.approx(float(total)) and len(w.fills) == 1000
    assert w.fills[-1][0] == float(snap['asks'][-1][0])

def test_market_sell_walks_bids(raw):
    snap, _ = raw
    w = walk_book(_snapshot_book(snap).bids(), 3.78826 + 0.617)
    assert w.fills == [(61837.63, 3.78826), (61837.62, pytest.approx(0.617))]

def test_replay_every_depth_update(raw):
    "Binance's rules: drop u <= lastUpdateId; the first kept has U <= id+1 <= u; then U = previous u + 1. Never crossed."
    snap, diffs = raw
    book, ref = _snapshot_book(snap), {'b': {}, 'a': {}}
    for side in 'ba':
        for p, q in snap['bids' if side == 'b' else 'asks']: ref[side][Decimal(p)] = Decimal(q)
    kept = [d for d in diffs if d['u'] > snap['lastUpdateId']]
    assert kept[0]['U'] <= snap['lastUpdateId'] + 1 <= kept[0]['u']
    for d in kept:
        upd = BookUpdate('BTC/USDT', d['E'], _lv(d['b']), _lv(d['a']), sequence=d['u'], first_sequence=d['U'])
        assert book.apply(upd)
        for side in 'ba':
            for p, q in d[side]:
                if Decimal(q) == 0: ref[side].pop(Decimal(p), None)
                else: ref[side][Decimal(p)] = Decimal(q)
        assert not book.crossed, d['u']
    assert len(kept) > 6000 and book.gaps == 0 and book.sequence == kept[-1]['u']
    exp_bids = sorted(((float(p), float(q)) for p, q in ref['b'].items()), reverse=True)
    exp_asks = sorted((float(p), float(q)) for p, q in ref['a'].items())
    assert book.bids() == exp_bids and book.asks() == exp_asks
    assert book.apply(BookUpdate('BTC/USDT', 0, ((1.0, 1.0),), (), sequence=kept[0]['u'])) is False   # stale

levels = st.lists(st.tuples(st.integers(1, 10_000), st.integers(1, 1000)), min_size=0, max_size=30, unique_by=lambda t: t[0])

@given(levels, st.integers(1, 50_000))
def test_walk_properties(lv, amount):
    asks = sorted((p / 100, q / 100) for p, q in lv)
    w = walk_book(asks, amount / 100)
    depth = sum(q for _, q in asks)
    assert w.filled == pytest.approx(min(depth, amount / 100), rel=1e-9, abs=1e-12)
    assert w.cost == pytest.approx(sum(p * q for p, q in w.fills))
    if w.fills:
        assert asks[0][0] - 1e-9 <= w.average <= w.fills[-1][0] + 1e-9
        if len(w.fills) == 1: assert w.average == w.fills[0][0]
        assert [p for p, _ in w.fills] == [p for p, _ in asks[:len(w.fills)]]
    wc = walk_book_cost(asks, w.cost) if w.cost > 0 else None
    if wc: assert wc.filled == pytest.approx(w.filled, rel=1e-9)

"Heavier checks of trader.data on real recorded data: trades vs candles, book replay, usdm rules, ccxt downloads."
import gzip, json
import numpy as np
import pandas as pd
import pytest
from trader.core import BookUpdate, Quote, TradeTick
from trader.data import (BookSequenceError, binance_book_updates, binance_events_from_raw, binance_market_events, binance_quotes, binance_trades,
                         candles_to_bars, load_candles, load_trades, read_binance_ws, sample_market_events, sample_path)

SPOT = [sample_path('ticks', f'binance_spot_btcusdt_2024080{d}.gz') for d in (8, 9)]

@pytest.fixture(scope='module')
def raw(): return read_binance_ws(*SPOT)

@pytest.fixture(scope='module')
def plain_messages():
    "The capture parsed with nothing but gzip + json: the independent reference."
    out = []
    for p in SPOT:
        with gzip.open(p, 'rt') as fh: out += [json.loads(line.split(' ', 1)[1]) for line in fh]
    return out

@pytest.fixture
def usdm_raw(data_dir): return read_binance_ws(data_dir / 'data_binance_usdm_btcusdt_20240808_head.gz')

# ---------------------------------------------------------------- trades

def test_trades_rebuild_the_exchange_candles(raw):
    "README cross-check 1: the trade tape aggregated to 1m equals Binance's own candles for the 10 covered minutes."
    trades = binance_trades(raw)
    minute = trades.index.floor('1min')
    agg = pd.DataFrame({'open': trades.price.groupby(minute).first(), 'high': trades.price.groupby(minute).max(),
                        'low': trades.price.groupby(minute).min(), 'close': trades.price.groupby(minute).last(),
                        'volume': trades.amount.groupby(minute).sum()})
    candles = pd.read_feather(sample_path('candles', 'binance_spot_BTC_USDT-1m_2024-07-26_2024-08-25.feather')).set_index('date')
    full = pd.date_range('2024-08-08 23:55', '2024-08-09 00:04', freq='1min', tz='UTC')
    assert len(full) == 10
    got, want = agg.reindex(full), candles.reindex(full)[['open', 'high', 'low', 'close', 'volume']]
    assert not got.isna().any().any()
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=1e-6)
    # the partial edge minutes must not match (proves the comparison can fail)
    edge = pd.Timestamp('2024-08-08 23:54', tz='UTC')
    assert abs(agg.loc[edge, 'volume'] - candles.loc[edge, 'volume']) > 1e-3

def test_trade_tape_is_complete_and_matches_the_messages(raw, plain_messages):
    trades = binance_trades(raw)
    plain = [m['data'] for m in plain_messages if m.get('stream', '').endswith('@trade')]
    assert len(trades) == len(plain) == 19_904
    assert (np.diff(trades.trade_id.to_numpy()) == 1).all()                      # consecutive ids
    assert trades.trade_id.iloc[0] == 3735683259 and trades.trade_id.iloc[-1] == 3735703162
    assert trades.index.is_monotonic_increasing and str(trades.index.tz) == 'UTC'
    assert abs(trades.amount.sum() - sum(float(m['q']) for m in plain)) < 1e-6     # ~438 BTC
    sells = sum(1 for m in plain if m['m'])
    assert (trades.side == 'sell').sum() == sells and (trades.side == 'buy').sum() == len(plain) - sells
    last = plain[-1]
    assert trades.index[-1] == pd.Timestamp(last['T'], unit='ms', tz='UTC') and trades.price.iloc[-1] == float(last['p'])

def test_duplicate_messages_are_dropped(raw):
    twice = pd.concat([raw, raw[raw.kind == 'trade'].head(50)], ignore_index=True)
    assert len(binance_trades(twice)) == 19_904

def test_load_trades_parquet_and_csv(data_dir, tmp_path):
    tape = load_trades(data_dir / 'binance_spot_BTCUSDT_trades_2021-01-08.parquet')
    src = pd.read_parquet(data_dir / 'binance_spot_BTCUSDT_trades_2021-01-08.parquet')
    assert len(tape) == 2_001 and (tape.trade_id.to_numpy() == src.trade_id.to_numpy()).all()
    assert ((tape.side == 'sell').to_numpy() == (src.buyer_maker == 'True').to_numpy()).all()
    assert tape.amount.sum() == pytest.approx(src.quantity.sum())
    # ccxt-style names and an explicit side column, shuffled rows: same tape back
    csv = tmp_path / 't.csv'
    tape.reset_index().rename(columns={'time': 'timestamp'}).sample(frac=1, random_state=0).to_csv(csv, index=False)
    back = load_trades(csv)
    pd.testing.assert_frame_equal(back, tape)
    src.drop(columns='price').to_parquet(tmp_path / 'bad.parquet')
    with pytest.raises(ValueError, match='no price column'): load_trades(tmp_path / 'bad.parquet')
    src.assign(buyer_maker='maybe').to_parquet(tmp_path / 'bad2.parquet')
    with pytest.raises(ValueError, match='buyer_maker must be true/false'): load_trades(tmp_path / 'bad2.parquet')

# ---------------------------------------------------------------- order book

def replay(updates):
    "Rebuild the book from BookUpdates with plain dicts; yield (bids, asks) after each update."
    bids, asks = {}, {}
    for u in updates:
        if u.is_snapshot: bids, asks = dict(u.bids), dict(u.asks)
        else:
            for side, levels in ((bids, u.bids), (asks, u.asks)):
                for p, q in levels:
                    if q == 0: side.pop(p, None)
                    else: side[p] = q
        yield bids, asks

def test_spot_book_replay_has_no_gaps_and_never_crosses(raw, plain_messages):
    book = binance_book_updates(raw)
    snap = next(m for m in plain_messages if 'lastUpdateId' in m)
    lid = snap['lastUpdateId']
    # independent selection: the diffs with u > lastUpdateId, sorted by u
    diffs = sorted((m['data'] for m in plain_messages if '@depth' in m.get('stream', '')), key=lambda d: d['u'])
    after = [d for d in diffs if d['u'] > lid]
    assert len(book) - 1 == len(after) == 6_493
    assert after[0]['U'] <= lid + 1 <= after[0]['u']
    assert all(b['U'] == a['u'] + 1 for a, b in zip(after, after[1:]))                        # 0 gaps
    assert [(u.first_sequence, u.sequence, u.timestamp) for u in book[1:]] == [(d['U'], d['u'], d['E']) for d in after]
    crossed = sum(1 for bids, asks in replay(book) if bids and asks and max(bids) >= min(asks))
    assert crossed == 0
    bids, asks = list(replay(book))[-1]
    assert len(bids) > 900 and len(asks) > 900

def test_diffs_written_before_the_snapshot_are_used(raw):
    "Some diffs that continue the snapshot sit before the snapshot line: selection must go by id, not position."
    snap_pos = raw.index[raw.kind == 'snapshot'][0]
    lid = raw.data[snap_pos]['lastUpdateId']
    early = [d['u'] for d in raw.data[(raw.kind == 'depth') & (raw.index < snap_pos)] if d['u'] > lid]
    assert early, "the capture should hold diffs after the snapshot id that were written before it"
    assert set(early) <= {u.sequence for u in binance_book_updates(raw)}

def test_a_lost_diff_raises_a_clear_error(raw):
    depth = raw.index[raw.kind == 'depth']
    victim = raw.data[depth[2000]]
    with pytest.raises(BookSequenceError, match=f"expected update id {victim['U']}") as e:
        binance_book_updates(raw.drop(depth[2000]))
    assert e.value.symbol == 'BTC/USDT' and e.value.expected == victim['U']
    lid = raw.data[raw.index[raw.kind == 'snapshot'][0]]['lastUpdateId']
    bridging = [i for i in depth if raw.data[i]['U'] <= lid + 1 <= raw.data[i]['u']]
    with pytest.raises(BookSequenceError, match='first update after snapshot'): binance_book_updates(raw.drop(bridging))
    with pytest.raises(ValueError, match="no 'snapshot' messages"): binance_book_updates(raw[raw.kind != 'snapshot'])

def test_usdm_rules_on_real_futures_data(usdm_raw):
    book = binance_book_updates(usdm_raw, 'BTC/USDT:USDT', venue='binanceusdm')
    snap = usdm_raw.data[usdm_raw.kind == 'snapshot'].iloc[0]
    lid = snap['lastUpdateId']
    diffs = sorted(usdm_raw.data[usdm_raw.kind == 'depth'], key=lambda d: d['u'])
    kept = [d for d in diffs if d['u'] >= lid]
    assert kept[0]['U'] <= lid <= kept[0]['u'] and kept[0]['U'] != lid + 1     # the futures rule, not the spot one
    assert all(b['pu'] == a['u'] for a, b in zip(kept, kept[1:]))
    assert [u.sequence for u in book[1:]] == [d['u'] for d in kept] and len(kept) == 230
    assert book[0].timestamp == snap['E'] and book[0].venue == 'binanceusdm'
    assert sum(1 for b, a in replay(book) if max(b) >= min(a)) == 0
    depth = usdm_raw.index[usdm_raw.kind == 'depth']
    late = [i for i in depth if usdm_raw.data[i]['u'] > kept[100]['u']][0]
    with pytest.raises(BookSequenceError, match='does not link'): binance_book_updates(usdm_raw.drop(late), 'BTC/USDT:USDT')

# ---------------------------------------------------------------- quotes and the merged stream

def test_quotes_use_exchange_time(usdm_raw, raw):
    q = binance_quotes(usdm_raw, 'BTC/USDT:USDT')
    first = usdm_raw.data[usdm_raw.kind == 'bookTicker'].iloc[0]
    assert q[0].timestamp == first['E'] and q[0].bid == float(first['b']) and q[0].ask_size == float(first['A'])
    spot = binance_quotes(raw)
    lag = np.array([qq.timestamp for qq in spot]) - raw.local_ts_ns[raw.kind == 'bookTicker'].to_numpy() // 1_000_000
    assert 1_250 < np.median(lag) < 1_300                     # shifted onto the exchange clock, not local time

def test_sample_market_events_stream(raw):
    events = sample_market_events()
    assert isinstance(events[0], BookUpdate) and events[0].is_snapshot
    t = np.array([e.timestamp for e in events])
    assert (np.diff(t) >= 0).all()
    assert {type(e) for e in events} == {BookUpdate, TradeTick, Quote}
    ticks = [e for e in events if isinstance(e, TradeTick)]
    assert len(ticks) > 19_800 and all(b.timestamp >= a.timestamp for a, b in zip(ticks, ticks[1:]))
    assert [int(x.trade_id) for x in ticks] == list(range(int(ticks[0].trade_id), int(ticks[0].trade_id) + len(ticks)))
    assert sum(isinstance(e, BookUpdate) for e in events) == 6_494
    assert events is not sample_market_events()                # a fresh list each call
    assert binance_events_from_raw(raw, "BTC/USDT") == events
    ticks_08 = binance_market_events(SPOT[0], symbol="BTC/USDT")  # the first half alone still replays
    assert ticks_08[0] == events[0] and len(ticks_08) < len(events)

def test_read_binance_ws_errors(tmp_path):
    bad = tmp_path / 'bad.txt'
    bad.write_text('1 {"stream":"btcusdt@trade","data":{"E":1}}\nnot-a-line\n')
    with pytest.raises(ValueError, match="bad.txt line 2: expected '<local_ts_ns> <json>'"): read_binance_ws(bad)
    with pytest.raises(FileNotFoundError, match='no capture file'): read_binance_ws(tmp_path / 'missing.gz')
    with pytest.raises(ValueError, match='at least one'): read_binance_ws()

def test_candles_to_bars():
    c = load_candles('BTC/USDT', '2024-08-05', '2024-08-06')
    bars = candles_to_bars(c, 'BTC/USDT', venue='binance')
    assert len(bars) == 1440 and bars[0].timeframe_ms == 60_000 and bars[-1].close_time == pd.Timestamp('2024-08-06', tz='UTC').value // 10**6
    low = min(bars, key=lambda b: b.close)
    assert pd.Timestamp(low.timestamp, unit='ms', tz='UTC') == pd.Timestamp('2024-08-05 06:24', tz='UTC')
    hourly = c.resample('1h').agg({'open': 'first', 'high': 'max', 'low': 'min', 'close': 'last', 'volume': 'sum'})
    assert candles_to_bars(hourly, 'BTC/USDT')[0].timeframe_ms == 3_600_000
    with pytest.raises(ValueError, match='fewer than 2 candles'): candles_to_bars(c.iloc[:1], 'BTC/USDT')

# ---------------------------------------------------------------- download_ohlcv through a real ccxt exchange object
import asyncio, time
from urllib.parse import parse_qs, urlsplit
import ccxt.async_support as accxt
from trader.clock import SimClock
from trader.data import download_ohlcv, load_markets, ohlcv_cache_path

MIN = 60_000
SINCE = pd.Timestamp('2024-08-08 00:00', tz='UTC').value // 10**6

class KucoinKlines:
    "Answers KuCoin Futures GET /api/v1/kline/query in KuCoin's raw format from the bundled Binance candles."
    def __init__(self, end_ms=None, overlap=False):
        c = pd.read_feather(sample_path('candles', 'binance_spot_BTC_USDT-1m_2024-07-26_2024-08-25.feather'))
        self.t = c.date.astype('datetime64[ms, UTC]').astype('int64').to_numpy()
        self.rows = c[['open', 'high', 'low', 'close', 'volume']].to_numpy()
        self.end_ms, self.overlap, self.queries = end_ms, overlap, []

    def answer(self, url:str) -> dict:
        u = urlsplit(url)
        assert u.path == '/api/v1/kline/query', u.path
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        self.queries.append(q)
        assert q['symbol'] == 'XBTUSDTM' and q['granularity'] == '1'
        lo, hi = int(q['from']) - (MIN if self.overlap else 0), int(q['to'])
        if self.end_ms is not None: hi = min(hi, self.end_ms - 1)
        sel = np.flatnonzero((self.t >= lo) & (self.t <= hi))[:200]        # inclusive window, at most 200 rows
        return {'code': '200000', 'data': [[int(self.t[i]), *self.rows[i].tolist()] for i in sel]}

    def froms(self): return [int(q['from']) for q in self.queries]

def kucoin(server:KucoinKlines, **config):
    ex = accxt.kucoinfutures(config)
    ex.set_markets(load_markets('kucoinfutures'))
    async def fetch(url, method='GET', headers=None, body=None):
        assert method == 'GET'
        return server.answer(url)
    ex.fetch = fetch
    return ex

def expected(start_ms, stop_ms):
    c = pd.read_feather(sample_path('candles', 'binance_spot_BTC_USDT-1m_2024-07-26_2024-08-25.feather')).set_index('date')
    return c[(c.index >= pd.Timestamp(start_ms, unit='ms', tz='UTC')) & (c.index < pd.Timestamp(stop_ms, unit='ms', tz='UTC'))]

def assert_same_candles(df, start_ms, stop_ms):
    want = expected(start_ms, stop_ms)
    assert len(df) == len(want) == (stop_ms - start_ms) // MIN
    assert (df.index.as_unit('ms').asi8 == want.index.as_unit('ms').asi8).all()
    np.testing.assert_array_equal(df[['open', 'high', 'low', 'close', 'volume']].to_numpy(), want.to_numpy())

async def test_recorded_kucoin_response_parses_through_ccxt(data_dir):
    rec = json.loads((data_dir / 'kucoinfutures_response.json').read_text())['methods']['fetchOHLCV'][0]
    urls = []
    ex = accxt.kucoinfutures(); ex.set_markets(load_markets('kucoinfutures'))
    async def fetch(url, method='GET', headers=None, body=None):
        urls.append(url); return rec['httpResponse'] if len(urls) == 1 else {'code': '200000', 'data': []}
    ex.fetch = fetch
    try: df = await download_ohlcv(ex, 'BTC/USDT:USDT', '1h', since=rec['input'][2], limit=rec['input'][3], progress=False)
    finally: await ex.close()
    assert [[t, *r] for t, r in zip(df.index.as_unit('ms').asi8.tolist(), df.to_numpy().tolist())] == rec['parsedResponse']
    q = [{k: v[0] for k, v in parse_qs(urlsplit(u).query).items()} for u in urls]
    assert q[0] == {'symbol': 'XBTUSDTM', 'granularity': '60', 'from': str(rec['input'][2]), 'to': str(rec['input'][2] + 3 * 3_600_000)}
    assert int(q[1]['from']) == rec['parsedResponse'][-1][0] + 3_600_000                     # pages forward from the last candle

async def test_pagination_advances_and_returns_exact_candles():
    server = KucoinKlines()
    ex = kucoin(server)
    try: df = await download_ohlcv(ex, 'BTC/USDT:USDT', '1m', since=SINCE, until=SINCE + 300 * MIN, limit=100, progress=False)
    finally: await ex.close()
    assert_same_candles(df, SINCE, SINCE + 300 * MIN)
    froms = server.froms()
    assert len(froms) == 3 and froms[0] == SINCE and all(b > a for a, b in zip(froms, froms[1:]))
    assert all(int(q['to']) == int(q['from']) + 100 * MIN for q in server.queries)          # ccxt's window for limit=100
    assert froms == [SINCE, SINCE + 100 * MIN, SINCE + 200 * MIN]   # the server's inclusive window gave 101, ccxt kept `limit`

async def test_overlapping_pages_are_deduplicated():
    server = KucoinKlines(overlap=True)
    ex = kucoin(server)
    try: df = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=SINCE + 250 * MIN, limit=60, progress=False)
    finally: await ex.close()
    assert df.index.is_unique and len(server.queries) >= 4
    assert_same_candles(df, SINCE, SINCE + 250 * MIN)

async def test_open_ended_download_stops_when_the_exchange_has_nothing_newer():
    end = SINCE + 130 * MIN
    server = KucoinKlines(end_ms=end)
    ex = kucoin(server)
    try: df = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, progress=False)
    finally: await ex.close()
    assert_same_candles(df, SINCE, end)
    assert len(server.queries) == 2 and server.froms()[-1] == end                               # 1 page (window 200) + 1 empty

async def test_unclosed_candles_are_dropped():
    now = SINCE + 10 * MIN + 30_000          # 00:10:30: the 00:10 candle is still forming
    ex = kucoin(KucoinKlines())
    try: df = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=SINCE + 60 * MIN, progress=False, clock=SimClock(now / 1000))
    finally: await ex.close()
    assert_same_candles(df, SINCE, SINCE + 10 * MIN)

async def test_cache_fetches_only_the_missing_range(tmp_path):
    server = KucoinKlines()
    ex = kucoin(server)
    until = SINCE + 300 * MIN
    try:
        first = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=until, cache_dir=tmp_path, limit=100, progress=False)
        path = ohlcv_cache_path(tmp_path, 'kucoinfutures', 'BTC/USDT:USDT', '1m')
        assert path == tmp_path / 'kucoinfutures' / 'BTC-USDT_USDT_1m.parquet' and path.exists()
        n = len(server.queries)
        again = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=until, cache_dir=tmp_path, limit=100, progress=False)
        assert len(server.queries) == n                                                           # all from the cache
        pd.testing.assert_frame_equal(again, first)
        inner = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE + 50 * MIN, until=SINCE + 70 * MIN, cache_dir=tmp_path, progress=False)
        assert len(server.queries) == n and len(inner) == 20
        later = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=until + 50 * MIN, cache_dir=tmp_path, limit=100, progress=False)
        assert server.froms()[n:] == [until]                                                     # only the new tail
        assert_same_candles(later, SINCE, until + 50 * MIN)
        m = len(server.queries)
        earlier = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE - 30 * MIN, until=SINCE + 10 * MIN, cache_dir=tmp_path, limit=100, progress=False)
        assert server.froms()[m:] == [SINCE - 30 * MIN]                                          # only the new head
        assert_same_candles(earlier, SINCE - 30 * MIN, SINCE + 10 * MIN)
    finally: await ex.close()
    cached = pd.read_parquet(path)
    assert len(cached) == 380 and (np.diff(cached.index.as_unit('ms').asi8) == MIN).all()          # one contiguous run

async def test_requests_go_through_the_exchange_rate_limiter():
    server = KucoinKlines()
    ex = kucoin(server, rateLimit=50)
    calls = []
    real = ex.throttle
    async def counting(cost=None): calls.append(cost); return await real(cost)
    ex.throttle = counting
    t0 = time.monotonic()
    try: await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=SINCE + 400 * MIN, limit=100, progress=False)
    finally: await ex.close()
    elapsed = time.monotonic() - t0
    assert len(calls) == len(server.queries) == 4
    assert elapsed >= 3 * 0.050 * 0.9, elapsed                      # ccxt spaced the 4 requests by rateLimit
    ex = kucoin(KucoinKlines(), enableRateLimit=False)
    calls.clear(); ex.throttle = counting                            # switched off in ccxt: we still throttle
    try: await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=SINCE + 200 * MIN, limit=100, progress=False)
    finally: await ex.close()
    assert len(calls) == 2

async def test_progress_bar(capsys):
    ex = kucoin(KucoinKlines())
    try: await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=SINCE + 150 * MIN, limit=100, progress=True)
    finally: await ex.close()
    err = capsys.readouterr().err
    assert 'kucoinfutures BTC/USDT:USDT 1m' in err and '150/150' in err
    ex = kucoin(KucoinKlines())
    try: await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=SINCE + 150 * MIN, limit=100, progress=False)
    finally: await ex.close()
    assert capsys.readouterr().err == ''

async def test_through_a_local_http_server():
    "The whole ccxt HTTP path (aiohttp session, headers, JSON decoding, error checks) against 127.0.0.1."
    from aiohttp import web
    server = KucoinKlines()
    async def kline(request): return web.json_response(server.answer(str(request.rel_url)))
    app = web.Application(); app.router.add_get('/api/v1/kline/query', kline)
    runner = web.AppRunner(app); await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', 0); await site.start()
    port = site._server.sockets[0].getsockname()[1]
    ex = accxt.kucoinfutures(); ex.set_markets(load_markets('kucoinfutures'))
    ex.urls['api']['futuresPublic'] = f'http://127.0.0.1:{port}'
    try: df = await download_ohlcv(ex, 'BTC/USDT:USDT', since=SINCE, until=SINCE + 250 * MIN, limit=100, progress=False)
    finally: await ex.close(); await runner.cleanup()
    assert_same_candles(df, SINCE, SINCE + 250 * MIN)
    assert server.froms() == [SINCE, SINCE + 100 * MIN, SINCE + 200 * MIN]

# ---------------------------------------------------------------- the id rules at their edges, on hand-made messages

def capture(tmp_path, lines):
    p = tmp_path / 'c.txt'
    p.write_text('\n'.join(f"{i} {json.dumps(m, separators=(',', ':'))}" for i, m in enumerate(lines, 1)) + '\n')
    return read_binance_ws(p)

def diff(U, u, E, pu=None, b=(), a=()):
    d = {'e': 'depthUpdate', 'E': E, 's': 'BTCUSDT', 'U': U, 'u': u, 'b': [list(x) for x in b], 'a': [list(x) for x in a]}
    if pu is not None: d['pu'] = pu
    return {'stream': 'btcusdt@depth@100ms', 'data': d}

SNAP = {'lastUpdateId': 100, 'bids': [['10.0', '1.0']], 'asks': [['11.0', '2.0']]}

def test_spot_rule_drops_u_equal_to_last_update_id(tmp_path):
    raw = capture(tmp_path, [diff(101, 105, 2000, b=[('10.5', '3')]), diff(90, 100, 1000), SNAP, diff(106, 110, 3000, a=[('11.0', '0')])])
    book = binance_book_updates(raw)
    assert [(u.first_sequence, u.sequence) for u in book] == [(None, 100), (101, 105), (106, 110)]
    assert book[1].bids == ((10.5, 3.0),) and book[2].asks == ((11.0, 0.0),)
    assert book[0].timestamp <= 2000                                   # the snapshot is not stamped after its first diff

def test_futures_rule_uses_pu(tmp_path):
    raw = capture(tmp_path, [SNAP, diff(90, 99, 1000, pu=89), diff(100, 104, 2000, pu=99), diff(105, 108, 3000, pu=104)])
    assert [u.sequence for u in binance_book_updates(raw)] == [100, 104, 108]      # u == lastUpdateId is kept for usdm
    broken = capture(tmp_path, [SNAP, diff(100, 104, 2000, pu=99), diff(106, 108, 3000, pu=103)])
    with pytest.raises(BookSequenceError, match='update after id 104 does not link'): binance_book_updates(broken)

def test_spot_gap_right_after_the_snapshot(tmp_path):
    raw = capture(tmp_path, [SNAP, diff(102, 105, 2000), diff(106, 110, 3000)])
    with pytest.raises(BookSequenceError, match='first update after snapshot 100 does not contain id 101'): binance_book_updates(raw)

async def test_nothing_to_download(tmp_path):
    server = KucoinKlines(end_ms=SINCE)                   # the exchange has nothing from SINCE on
    ex = kucoin(server)
    try:
        df = await download_ohlcv(ex, 'BTC/USDT:USDT', since=pd.Timestamp(SINCE, unit='ms'), until='2024-08-08 01:00', cache_dir=tmp_path, progress=False)
        df2 = await download_ohlcv(ex, 'BTC/USDT:USDT', since=float(SINCE), until=SINCE + 60 * MIN, progress=False)
    finally: await ex.close()
    assert df.empty and list(df.columns) == ['open', 'high', 'low', 'close', 'volume'] and str(df.index.tz) == 'UTC'
    assert df2.empty and server.froms() == [SINCE, SINCE]
    assert not ohlcv_cache_path(tmp_path, 'kucoinfutures', 'BTC/USDT:USDT', '1m').exists()

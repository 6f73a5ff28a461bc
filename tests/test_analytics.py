"""ExecutionAnalytics: hand-worked shortfalls, a hypothesis property, algorithm-choice directions, persistence,
and a report over a session replayed on the real Binance BTCUSDT capture bundled in trader/sample/ticks."""
import gzip, json, math
from decimal import Decimal
from fractions import Fraction
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from trader.analytics import (ExecutionAnalytics, ExecutionRecord, ImplementationShortfall, MarketSnapshot, SelectionPolicy,
                              implementation_shortfall, estimate_market_impact, market_conditions, choose_by_rules, JOURNAL_KIND)
from trader.book import OrderBook, walk_book
from trader.clock import SimClock
from trader.store import Journal
from trader.core import BookUpdate, Fill, Side, TradeTick, ExecutionAlgo
from trader.data import sample_path, load_candles
from trader.execution_figures import slippage_distribution_figure, shortfall_waterfall_figure, fills_over_price_figure

SYM = 'BTC/USDT'
def F(oid, side, price, amount, fee=0.0, cur=None, ts=0, n=0):
    return Fill(oid, f'{oid}-{n}', SYM, Side(side), price, amount, fee, cur, ts)

def parts(IS): return (IS.delay, IS.execution, IS.opportunity, IS.fees, IS.total)

# ---------------------------------------------------------------- initialization

def test_initialization_empty():
    ea = ExecutionAnalytics()
    assert len(ea) == 0 and ea.clock is None and ea.journal is None and ea.to_records() == []
    rep = ea.generate_execution_report('1d')
    assert rep['orders'].empty and rep['by_algo'].empty and rep['recommendations'] == []
    assert 'shortfall_bps' in rep['by_venue'].columns and 'efficiency' in rep['orders'].columns
    assert isinstance(ea.policy, SelectionPolicy) and ea.policy.min_history == 10

def test_initialization_from_journal_and_records():
    rec = ExecutionRecord('a', SYM, 'buy', 1.0, 100.0, 0, 100.0, 10, 100.0, 20, [F('a', 'buy', 100.5, 1.0, ts=15)])
    j = Journal()                                                    # the SQLite journal, in memory
    j.append('other', {'x': 1}); j.append(JOURNAL_KIND, rec.to_dict())
    ea = ExecutionAnalytics(clock=SimClock(1.0), journal=j)
    assert ea.records == {'a': rec} and len(j.load()) == 2          # loading does not re-append
    ea.record(rec.__class__(**{**rec.__dict__, 'order_id': 'b'}))
    assert [e.kind for e in j.load()] == ['other', JOURNAL_KIND, JOURNAL_KIND]
    again = ExecutionAnalytics(journal=j)
    assert list(again.records) == ['a', 'b']
    assert ExecutionAnalytics.from_records(again.to_records()).records == again.records
    with pytest.raises(TypeError, match='expected an ExecutionRecord'): ea.record({'order_id': 'x'})
    assert ea.on_execution_completed(rec.to_dict()) == rec          # the event-bus alias takes a dict too

# ---------------------------------------------------------------- hand-worked shortfalls

def test_buy_partial_fill_then_cancel_fees_in_quote():
    """Buy 2 BTC. Decision 60,000; arrival mid 60,030; fills 0.5 @ 60,050 (fee 30.025 USDT) and 0.7 @ 60,080
    (fee 42.056 USDT); cancelled with the mid at 60,200.
      filled x = 1.2, cost C = 0.5*60050 + 0.7*60080 = 30,025 + 42,056 = 72,081
      delay       = +2 * (60,030 - 60,000)          = 60
      execution   = 72,081 - 1.2 * 60,030           = 72,081 - 72,036 = 45
      opportunity = (2 - 1.2) * (60,200 - 60,030)   = 0.8 * 170 = 136
      fees        = 30.025 + 42.056                 = 72.081
      total       = 313.081
    Check against paper minus real: paper = 2 * (60,200 - 60,000) = 400;
      real = 1.2 * 60,200 - 72,081 - 72.081 = 72,240 - 72,081 - 72.081 = 86.919; 400 - 86.919 = 313.081.
    Paper notional 2 * 60,000 = 120,000, so the total is 313.081 / 120,000 * 1e4 = 26.0900833 bps."""
    r = ExecutionRecord('b1', SYM, 'buy', 2.0, 60_000.0, 0, 60_030.0, 100, 60_200.0, 9_000,
                        [F('b1', 'buy', 60_050.0, 0.5, 30.025, 'USDT', 1_000, 1), F('b1', 'buy', 60_080.0, 0.7, 42.056, None, 2_000, 2)],
                        status='canceled', ask=60_031.0)
    IS = implementation_shortfall(r)
    assert parts(IS) == pytest.approx((60.0, 45.0, 136.0, 72.081, 313.081), abs=1e-9)
    assert (IS.paper_return, IS.real_return) == pytest.approx((400.0, 86.919))
    assert IS.bps() == pytest.approx(26.0900833, abs=1e-6) and IS.bps('delay') == pytest.approx(5.0)
    m = ExecutionAnalytics.from_records([r.to_dict()]).orders().loc['b1']
    assert m.fill_rate == pytest.approx(0.6) and m.average_price == pytest.approx(60_067.5)      # 72,081 / 1.2
    assert m.slippage_arrival_bps == pytest.approx((60_067.5 - 60_030) / 60_030 * 1e4)           # 6.2469 bps
    assert m.slippage_decision_bps == pytest.approx(11.25)                                       # 67.5 / 60,000
    assert m.improvement_quote_bps == pytest.approx(-(60_067.5 - 60_031) / 60_031 * 1e4)         # paid above the ask
    assert (m.time_to_first_fill_s, m.time_to_completion_s) == (0.9, 8.9)
    assert m.efficiency == pytest.approx(100 / (1 + 26.0900833 / 10))

def test_sell_filled_fees_in_base():
    """Sell 1.5 BTC. Decision 50,000; the mid fell to 49,980 by arrival; fills 1.0 @ 49,970 (fee 0.001 BTC)
    and 0.5 @ 49,960 (fee 0.0005 BTC); end mid 49,950. Sells have s = -1.
      C = 49,970 + 24,980 = 74,950
      delay       = -1.5 * (49,980 - 50,000)        = 30    (sold lower because of the wait: a cost)
      execution   = -(74,950 - 1.5 * 49,980)        = -(74,950 - 74,970) = 20
      opportunity = -(1.5 - 1.5) * (...)            = 0
      fees        = 0.001 * 49,970 + 0.0005 * 49,960 = 49.97 + 24.98 = 74.95   (base fees at each fill's price)
      total       = 124.95
    Paper = -1.5 * (49,950 - 50,000) = 75; real = -(1.5 * 49,950 - 74,950) - 74.95 = 25 - 74.95 = -49.95;
    75 - (-49.95) = 124.95. Paper notional 75,000: 16.66 bps."""
    r = ExecutionRecord('s1', SYM, 'sell', 1.5, 50_000.0, 0, 49_980.0, 50, 49_950.0, 500,
                        [F('s1', 'sell', 49_970.0, 1.0, 0.001, 'BTC', 100, 1), F('s1', 'sell', 49_960.0, 0.5, 0.0005, 'BTC', 200, 2)])
    IS = implementation_shortfall(r)
    assert parts(IS) == pytest.approx((30.0, 20.0, 0.0, 74.95, 124.95), abs=1e-9)
    assert (IS.paper_return, IS.real_return) == pytest.approx((75.0, -49.95))
    assert IS.bps() == pytest.approx(124.95 / 75_000 * 1e4)

def test_sell_partial_cancel_unfilled_part_gains():
    """Sell 2 at a limit of 100.2 decided and arrived at mid 100; 0.5 fills (fee 0.05 USDT); cancelled with the mid at 101.
      delay = -2 * (100 - 100) = 0; execution = -(0.5 * 100.2 - 0.5 * 100) = -0.1 (sold above the mid)
      opportunity = -(2 - 0.5) * (101 - 100) = -1.5 (the unsold BTC rose: a gain); fees 0.05; total -1.55.
    Paper = -2 * (101 - 100) = -2; real = -(0.5 * 101 - 50.1) - 0.05 = -0.45; -2 - (-0.45) = -1.55."""
    r = ExecutionRecord('s2', SYM, 'sell', 2.0, 100.0, 0, 100.0, 0, 101.0, 60_000, [F('s2', 'sell', 100.2, 0.5, 0.05, 'USDT', 10)],
                        algo='limit', limit_price=100.2, status='canceled')
    assert parts(implementation_shortfall(r)) == pytest.approx((0.0, -0.1, -1.5, 0.05, -1.55), abs=1e-12)
    m = ExecutionAnalytics.from_records([r.to_dict()]).orders().loc['s2']
    assert m.improvement_limit_bps == pytest.approx(0.0) and m.efficiency == 100.0

def test_buy_fee_in_base_and_unfilled_order():
    """Buy 1: decision 100, arrival 100.5, one fill 1 @ 101 with fee 0.001 BTC (= 0.101 USDT at 101), end 102.
      delay 0.5, execution 0.5, opportunity 0, fees 0.101, total 1.101 = paper 2 - real (102 - 101 - 0.101).
    An order that never fills: all of the move after arrival is opportunity: buy 3, decision 10, arrival 10.2, end 11
      delay = 3 * 0.2 = 0.6, opportunity = 3 * (11 - 10.2) = 2.4, total 3.0 = paper 3 * (11 - 10) - real 0."""
    r = ExecutionRecord('b2', SYM, 'buy', 1.0, 100.0, 0, 100.5, 0, 102.0, 10, [F('b2', 'buy', 101.0, 1.0, 0.001, 'BTC', 5)])
    assert parts(implementation_shortfall(r)) == pytest.approx((0.5, 0.5, 0.0, 0.101, 1.101), abs=1e-12)
    u = ExecutionRecord('u', SYM, 'buy', 3.0, 10.0, 0, 10.2, 0, 11.0, 10, status='expired')
    assert parts(implementation_shortfall(u)) == pytest.approx((0.6, 0.0, 2.4, 0.0, 3.0), abs=1e-12)
    row = ExecutionAnalytics.from_records([u.to_dict()]).orders().loc['u']
    assert row.fill_rate == 0 and math.isnan(row.slippage_arrival_bps) and math.isnan(row.time_to_first_fill_s)

def test_record_validation_names_the_field():
    ok = dict(order_id='v', symbol=SYM, side='buy', amount=1.0, decision_price=1.0, decision_time=0, arrival_price=1.0,
              arrival_time=0, end_price=1.0, end_time=0)
    for field, bad, msg in [('side', 'long', "v.side: must be 'buy' or 'sell'"), ('decision_price', -1.0, 'v.decision_price: must be a positive'),
                            ('end_time', -5, 'decision_time <= arrival_time <= end_time'), ('symbol', 'BTCUSDT', 'BASE/QUOTE'),
                            ('bid', float('nan'), 'v.bid: must be a positive finite')]:
        with pytest.raises(ValueError, match=msg.replace('(', r'\(')): ExecutionRecord(**{**ok, field: bad})
    with pytest.raises(ValueError, match='fill v-0 is sell BTC/USDT, the order is buy'):
        ExecutionRecord(**ok, fills=(F('v', 'sell', 1.0, 0.1),))
    # a fee in a third coin is charged at its mark, and is 0 while it has none (unvalued, never an exception after a fill)
    unvalued = implementation_shortfall(ExecutionRecord(**ok, fills=(F('v', 'buy', 1.0, 0.1, 0.01, 'BNB'),)))
    assert unvalued.fees == 0
    fill = F('v', 'buy', 1.0, 0.1, 0.01, 'BNB')
    valued = implementation_shortfall(ExecutionRecord(**ok, fills=(Fill(**{**{k: getattr(fill, k) for k in fill.__slots__}, 'fee_mark': 500.0}),)))
    assert valued.fees == pytest.approx(5.0)

# ---------------------------------------------------------------- the property

@st.composite
def records(draw):
    side = draw(st.sampled_from(['buy', 'sell']))
    price = st.floats(1.0, 1e5, allow_nan=False, allow_infinity=False)
    X = draw(st.floats(1e-4, 1e3))
    n = draw(st.integers(0, 5))
    shares = draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
    scale = draw(st.floats(0.0, 1.0)) / max(sum(shares), 1.0)
    fills = [F('p', side, draw(price), X * s * scale, draw(st.floats(0, 10)), draw(st.sampled_from([None, 'USDT', 'BTC'])), 0, i)
             for i, s in enumerate(shares) if X * s * scale > 0]
    return ExecutionRecord('p', SYM, side, X, draw(price), 0, draw(price), 1, draw(price), 2, fills)

@settings(max_examples=300, deadline=None)
@given(records())
def test_parts_sum_to_total(r):
    IS = implementation_shortfall(r)
    s = Side(r.side).sign
    # paper minus real, from first principles in exact arithmetic
    X, Pd, Pe = map(Fraction, (r.amount, r.decision_price, r.end_price))
    x = sum(Fraction(f.amount) for f in r.fills)
    C = sum(Fraction(f.price) * Fraction(f.amount) for f in r.fills)
    fees = sum(Fraction(f.fee) * (Fraction(f.price) if f.fee_currency == 'BTC' else 1) for f in r.fills)
    assert IS.total == float(s * X * (Pe - Pd) - (s * (x * Pe - C) - fees))
    ps = (IS.delay, IS.execution, IS.opportunity, IS.fees)
    assert abs(math.fsum(ps) - IS.total) <= 3 * max(math.ulp(v) for v in ps + (IS.total,))   # exact up to rounding each part once
    assert IS.bps() == pytest.approx(IS.total / (r.amount * r.decision_price) * 1e4, rel=1e-12, abs=1e-12)

# ---------------------------------------------------------------- pre-trade

def test_square_root_law_by_hand():
    # 1% daily vol, 100 of 10,000 traded a day = 1% participation: 1.0 * 0.01 * sqrt(0.01) = 0.001 = 10 bps
    e = estimate_market_impact(100, 50.0, 10_000, 0.01)
    assert e.impact_bps == pytest.approx(10.0) and e.cost == pytest.approx(0.001 * 100 * 50.0) and e.participation == 0.01
    assert estimate_market_impact(400, 50.0, 10_000, 0.01).impact_bps == pytest.approx(20.0)     # 4x size, 2x impact
    assert estimate_market_impact(100, 50.0, 10_000, 0.01, coefficient=0.5).impact_bps == pytest.approx(5.0)
    with pytest.raises(ValueError, match='estimate_market_impact.daily_volume'): estimate_market_impact(1, 1, 0, 0.01)

def test_market_conditions_from_recorded_candles():
    c = load_candles(SYM, '2024-08-01 23:54', '2024-08-08 23:54')
    mc = market_conditions(SYM, end='2024-08-08 23:54', lookback='7d')
    r = np.diff(np.log(c.close.to_numpy()))                       # numpy on the raw closes, sample std
    assert len(c) == 7 * 1440
    assert mc['volatility'] == pytest.approx(r.std(ddof=1) * math.sqrt(1440))
    assert mc['daily_volume'] == pytest.approx(c.volume.sum() / 7)
    assert mc['price'] == c.close.iloc[-1]

# ---------------------------------------------------------------- algorithm choice: directions

PATIENCE = {'market': 0, 'limit': 1, 'iceberg': 1, 'pov': 2, 'twap': 3}
BASE = dict(mid=60_000.0, spread_bps=0.5, top_depth=2.0, depth=20.0, volume_per_minute=10.0, volatility=0.03)

def choose(amount, urgency='normal', ea=None, symbol=SYM, **market):
    return (ea or ExecutionAnalytics()).get_best_execution_algorithm(symbol, 'buy', amount, urgency, {**BASE, **market})

def test_bigger_orders_are_worked_more_patiently():
    algos = [choose(q).algo.value for q in (0.5, 1.9, 5, 19, 25, 200)]
    assert algos == ['market', 'market', 'iceberg', 'iceberg', 'twap', 'twap']
    assert [PATIENCE[a] for a in algos] == sorted(PATIENCE[a] for a in algos)
    assert choose(25).params['duration_s'] < choose(200).params['duration_s']

def test_more_urgency_trades_faster():
    assert [choose(80, u).algo.value for u in ('low', 'normal', 'high', 'critical')] == ['twap', 'twap', 'pov', 'market']
    assert choose(80, 'low').params['duration_s'] > choose(80, 'normal').params['duration_s']     # lower participation
    assert [choose(8, u).algo.value for u in ('low', 'normal', 'high')] == ['iceberg', 'iceberg', 'market']
    assert choose(0.5, 'low').algo is ExecutionAlgo.LIMIT and choose(0.5, 'high').algo is ExecutionAlgo.MARKET

def test_less_liquidity_trades_more_patiently():
    deep, medium, thin = (dict(top_depth=10, depth=50), dict(top_depth=2, depth=20), dict(top_depth=0.5, depth=3))
    assert [choose(5, **m).algo.value for m in (deep, medium, thin)] == ['market', 'iceberg', 'twap']
    d = [choose(100, volume_per_minute=v).params['duration_s'] for v in (50, 10, 2)]
    assert d[0] < d[1] < d[2]                                     # less traded volume, a longer TWAP
    assert choose(100, volume_per_minute=10).params['duration_s'] == 100 / (10 * 0.10) * 60

def test_wide_spread_rests_and_volatility_hurries():
    assert choose(0.5, spread_bps=0.5).algo is ExecutionAlgo.MARKET
    assert choose(0.5, spread_bps=3.0).algo is ExecutionAlgo.LIMIT        # between tight and wide
    wide = choose(0.5, spread_bps=10.0)
    assert wide.algo is ExecutionAlgo.LIMIT and '10.00 bps' in wide.reasons[0]
    assert wide.params['price'] == pytest.approx(60_000 * (1 - 10 / 2e4))  # the best bid
    assert choose(0.5, spread_bps=10.0, volatility=0.10).algo is ExecutionAlgo.MARKET
    assert choose(80, volatility=0.10).algo is ExecutionAlgo.POV

def _history(ea, algo, cost_bps, n, amount=5.0, symbol=SYM):
    "n filled buys whose execution cost is exactly `cost_bps` (fill above an arrival at 60,000)."
    for i in range(n):
        px = 60_000 * (1 + cost_bps / 1e4)
        ea.record(ExecutionRecord(f'{algo}{i}', symbol, 'buy', amount, 60_000.0, i, 60_000.0, i, 60_000.0, i,
                                  [Fill(f'{algo}{i}', 't', symbol, Side.BUY, px, amount)], algo=algo))

def test_history_overrides_the_rules_once_enough_orders_exist():
    ea = ExecutionAnalytics(policy=SelectionPolicy(min_history=5))
    deep = dict(top_depth=10, depth=50)
    _history(ea, 'market', 9.0, 4); _history(ea, 'twap', 2.0, 5)
    c = choose(5, ea=ea, **deep)
    assert c.algo is ExecutionAlgo.MARKET and 'fewer than 5' in c.reasons[-1]          # market has only 4
    _history(ea, 'market', 9.0, 5)
    c = choose(5, ea=ea, **deep)
    assert c.algo is ExecutionAlgo.TWAP and c.numbers['history'] == {'market': (5, 9.0), 'twap': (5, 2.0)}
    assert 'twap cost 2.0 bps over 5 BTC/USDT orders vs 9.0 bps for market over 5' in c.reasons[-1]
    assert choose(5, 'critical', ea=ea, **deep).algo is ExecutionAlgo.MARKET             # urgency still rules
    assert choose(5, 'high', ea=ea, **deep).algo is ExecutionAlgo.MARKET                 # twap too slow when in a hurry
    assert choose(100, ea=ea, **deep).algo is ExecutionAlgo.TWAP and 'fewer than' in choose(100, ea=ea, **deep).reasons[-1]
    assert choose(5, ea=ea, symbol='ETH/USDT', **deep).algo is ExecutionAlgo.MARKET       # history is per symbol
    _history(ea, 'market', 2.5, 20)                                                      # now market is within 1 bps
    assert choose(5, ea=ea, **deep).algo is ExecutionAlgo.MARKET

def test_market_snapshot_errors_name_the_field():
    with pytest.raises(ValueError, match=r"missing \['depth'"): MarketSnapshot.from_dict({'mid': 1, 'spread_bps': 1, 'top_depth': 1})
    with pytest.raises(ValueError, match='MarketSnapshot.volatility'): MarketSnapshot(**{**BASE, 'volatility': 0})
    with pytest.raises(ValueError, match='get_best_execution_algorithm.amount'): choose(-1)

# ---------------------------------------------------------------- a session replayed on the real capture

TAKER = MAKER = 0.001    # Binance spot base tier; the fee comes out of what is received: base for a buy, quote for a sell

@pytest.fixture(scope='module')
def tape():
    msgs = []
    for name in ('binance_spot_btcusdt_20240808.gz', 'binance_spot_btcusdt_20240809.gz'):
        with gzip.open(sample_path('ticks', name), 'rt') as f: msgs += [json.loads(l.split(' ', 1)[1]) for l in f]
    snap = next(m for m in msgs if 'lastUpdateId' in m)
    diffs = sorted((m['data'] for m in msgs if m.get('stream', '').endswith('@depth@100ms') and m['data']['u'] > snap['lastUpdateId']),
                   key=lambda d: d['u'])
    trades = sorted((m['data'] for m in msgs if m.get('stream', '').endswith('@trade')), key=lambda t: (t['T'], t['t']))
    trades = [t for t in trades if t['T'] >= diffs[0]['E']]
    return snap, diffs, trades

def _lv(xs): return tuple((float(p), float(q)) for p, q in xs)

class Working:
    "One simulated parent order: decides, arrives after a latency, then runs its algorithm against the real book and tape."
    def __init__(self, oid, algo, side, amount, t0, strategy, urgency, **params):
        self.oid, self.algo, self.side, self.amount, self.strategy, self.urgency, self.p = oid, algo, Side(side), amount, strategy, urgency, params
        self.wake, self.stage, self.fills, self.done, self.limit = t0, 'decide', [], False, None
    @property
    def remaining(self): return self.amount - math.fsum(f.amount for f in self.fills)
    def fill(self, now, price, amount, liquidity):
        fee, cur = (amount * TAKER, 'BTC') if self.side is Side.BUY else (price * amount * MAKER, 'USDT')
        self.fills.append(Fill(self.oid, f'{self.oid}-{len(self.fills)}', SYM, self.side, price, amount, fee, cur, now, liquidity, 'binance'))
    def take(self, s, amount):
        for px, q in walk_book(s.book.levels(self.side.value), amount).fills: self.fill(s.now, px, q, 'taker')
    def touch(self, s): return s.book.best_bid if self.side is Side.BUY else s.book.best_ask
    def step(self, s):
        if self.stage == 'decide':
            self.decision = (s.now, s.book.mid); self.stage, self.wake = 'arrive', s.now + 200; return
        if self.stage == 'arrive':
            self.arrival, self.quote = (s.now, s.book.mid), (s.book.best_bid, s.book.best_ask)
            self.start = s.now; self.stage = 'work'; self.slice = 0; self.seen = len(s.tape); self.limit_price = None
            if self.algo == 'market': self.take(s, self.amount); return self.finish(s, 'filled')
            if self.algo in ('limit', 'iceberg'):
                self.limit, self.shown = self.touch(s), min(self.p.get('clip', self.amount), self.amount)
                self.limit_price = self.limit
        self.work(s)
    def work(self, s):
        if s.now >= self.start + self.p['timeout']: return self.finish(s, 'canceled')
        if self.algo == 'twap':
            self.take(s, self.amount / self.p['slices']); self.slice += 1
            if self.slice == self.p['slices']: return self.finish(s, 'filled')
            self.wake = self.start + self.slice * self.p['timeout'] // self.p['slices']
        elif self.algo == 'pov':
            volume = math.fsum(q for _, q in s.tape[self.seen:]); self.seen = len(s.tape)
            q = min(volume * self.p['rate'], self.remaining)
            if q >= 1e-5: self.take(s, q)
            if self.remaining <= 1e-9 * self.amount: return self.finish(s, 'filled')
            self.wake = s.now + 1000
        else: self.wake = self.start + self.p['timeout']
    def on_trade(self, s, price, qty, aggressor):
        if self.stage != 'work' or self.limit is None or aggressor == self.side.value: return
        if (price - self.limit) * self.side.sign > 0: return               # did not reach our price
        q = min(qty, self.shown, self.remaining)
        self.fill(s.now, self.limit, q, 'maker'); self.shown -= q
        if self.remaining <= 1e-9 * self.amount: return self.finish(s, 'filled')
        if self.shown <= 1e-12: self.limit, self.shown = self.touch(s), min(self.p['clip'], self.remaining)   # iceberg reloads at the touch
    def finish(self, s, status):
        self.done, self.end, self.status = True, (s.now, s.book.mid), status
        s.completed.append(self)

class Session:
    "Replays the capture event by event: depth diffs into an OrderBook, trades to the analytics and to resting orders."
    def __init__(self, snap, ea):
        self.book, self.ea, self.tape, self.completed, self.mids, self.now = OrderBook(SYM), ea, [], [], [], 0
        self.book.apply(BookUpdate(SYM, 0, _lv(snap['bids']), _lv(snap['asks']), is_snapshot=True, sequence=snap['lastUpdateId']))
    def flush(self, before):
        for w in [w for w in self.completed if w.end[0] < before]:
            self.completed.remove(w); self.ea.record(to_record(w))
    def run(self, diffs, trades, orders):
        events = sorted([(d['E'], 0, i, d) for i, d in enumerate(diffs)] + [(t['T'], 1, i, t) for i, t in enumerate(trades)], key=lambda e: e[:3])
        for t, kind, _, e in events:
            for w in sorted((w for w in orders if not w.done and w.wake < t), key=lambda w: w.wake):
                while not w.done and w.wake < t: self.now = w.wake; w.step(self)
            self.flush(t); self.now = t
            if kind == 0:
                self.book.apply(BookUpdate(SYM, t, _lv(e['b']), _lv(e['a']), sequence=e['u'], first_sequence=e['U']))
                self.mids.append((t, self.book.mid))
            else:
                price, qty, aggressor = float(e['p']), float(e['q']), 'sell' if e['m'] else 'buy'
                self.tape.append((t, qty)); self.ea.on_trade(TradeTick(SYM, t, price, qty, Side(aggressor), str(e['t']), 'binance'))
                for w in orders:
                    if not w.done: w.on_trade(self, price, qty, aggressor)
        for w in orders:
            if not w.done: w.finish(self, 'canceled')      # the capture ended
        self.flush(math.inf)

def to_record(w):
    return ExecutionRecord(w.oid, SYM, w.side, w.amount, w.decision[1], w.decision[0], w.arrival[1], w.arrival[0], w.end[1], w.end[0],
                           tuple(w.fills), venue='binance', algo=w.algo, strategy=w.strategy, limit_price=w.limit_price,
                           bid=w.quote[0], ask=w.quote[1], status=w.status, urgency=w.urgency)

def make_orders(t0):
    rng = np.random.default_rng(7)
    spec = {'market': ((0.2, 3.0), 'high', {}), 'limit': ((0.3, 1.5), 'low', dict(timeout=45_000)),
            'twap': ((2.0, 6.0), 'normal', dict(timeout=60_000, slices=6)), 'iceberg': ((1.0, 3.0), 'normal', dict(timeout=60_000, clip=0.25)),
            'pov': ((1.0, 3.0), 'normal', dict(timeout=60_000, rate=0.2))}
    out = []
    for i in range(30):
        algo = list(spec)[i % 5]; (lo, hi), urgency, params = spec[algo]
        out.append(Working(f'o{i:02d}', algo, ('buy', 'sell')[i % 2], round(float(rng.uniform(lo, hi)), 3), t0 + 5_000 + i * 20_000,
                           ('momentum', 'meanrev', 'breakout')[i % 3], urgency, **params))
    return out

@pytest.fixture(scope='module')
def session(tape):
    snap, diffs, trades = tape
    ea = ExecutionAnalytics()
    orders = make_orders(diffs[0]['E'])
    s = Session(snap, ea); s.run(diffs, trades, orders)
    return s, ea, orders

def _paper_minus_real(w):
    "Shortfall of a simulated order from its own fills: paper (all at decision, marked at end) minus real."
    s, X, Pd, Pe = w.side.sign, w.amount, w.decision[1], w.end[1]
    x, C = sum(f.amount for f in w.fills), sum(f.price * f.amount for f in w.fills)
    fees = sum(f.fee * (f.price if f.fee_currency == 'BTC' else 1) for f in w.fills)
    return s * X * (Pe - Pd) - (s * (x * Pe - C) - fees)

def test_replayed_session_accounts_for_every_order(session, tape):
    s, ea, orders = session
    rep = ea.generate_execution_report('1d')
    t = rep['orders']
    assert sorted(t.order_id) == sorted(w.oid for w in orders) and len(t) == 30
    assert rep['by_algo'].orders.to_dict() == {'iceberg': 6, 'limit': 6, 'market': 6, 'pov': 6, 'twap': 6}
    assert rep['by_strategy'].orders.sum() == rep['by_venue'].orders.sum() == rep['by_symbol'].orders.sum() == 30
    for algo, row in rep['by_algo'].iterrows():   # filled amounts and fees straight from the simulated fills
        ws = [w for w in orders if w.algo == algo]
        assert row.filled_amount == pytest.approx(sum(f.amount for w in ws for f in w.fills), rel=1e-12)
        assert row.fees == pytest.approx(sum(f.fee * (f.price if f.fee_currency == 'BTC' else 1) for w in ws for f in w.fills), rel=1e-12)
        assert row.shortfall_bps == pytest.approx(sum(map(_paper_minus_real, ws)) / sum(w.amount * w.decision[1] for w in ws) * 1e4, rel=1e-9, abs=1e-9)
    for w in orders:
        r = t.loc[w.oid]
        assert r.shortfall == pytest.approx(_paper_minus_real(w), rel=1e-9, abs=1e-6)
        assert r.delay_cost + r.execution_cost + r.opportunity_cost + r.fees == pytest.approx(r.shortfall, rel=1e-12, abs=1e-9)
    # what the replay produced is realistic: market orders fill at once, resting orders sometimes only in part
    assert np.allclose(t[t.algo.isin(['market', 'twap'])].fill_rate, 1, rtol=0, atol=1e-12)
    assert t[t.algo.isin(['limit', 'iceberg'])].fill_rate.lt(1).any() and t.status.eq('canceled').any()
    assert t[t.algo == 'market'].slippage_arrival_bps.gt(0).all()          # crossing the spread costs
    assert set(rep['summary'].index) == {'1d'} and rep['summary'].orders.iloc[0] == 30

def test_replayed_vwap_matches_the_raw_tape(session, tape):
    _, ea, orders = session
    trades = tape[2]
    checked = 0
    for w in orders:
        sel = [t for t in trades if w.arrival[0] <= t['T'] <= w.end[0]]
        rec = ea.records[w.oid]
        if not sel: assert rec.market_vwap is None; continue
        v = sum(Decimal(t['q']) for t in sel)
        assert rec.market_vwap == pytest.approx(float(sum(Decimal(t['p']) * Decimal(t['q']) for t in sel) / v), rel=1e-12)
        checked += 1
    assert checked >= 24

def test_replayed_report_windows(session):
    _, ea, orders = session
    last = max(w.end[0] for w in orders)
    clocked = ExecutionAnalytics.from_records(ea.to_records(), clock=SimClock(last / 1000))
    assert len(clocked.generate_execution_report('1h')['orders']) == 30
    assert len(ExecutionAnalytics.from_records(ea.to_records(), clock=SimClock(last / 1000 + 7200)).generate_execution_report('1h')['orders']) == 0
    assert len(clocked.generate_execution_report('7d')['orders']) == 30
    mid = (min(w.end[0] for w in orders) + last) // 2
    first = clocked.generate_execution_report((0, mid))['orders']
    assert sorted(first.order_id) == sorted(w.oid for w in orders if w.end[0] < mid) and 0 < len(first) < 30
    five = clocked.generate_execution_report('5m')['orders']
    assert sorted(five.order_id) == sorted(w.oid for w in orders if w.end[0] >= last + 1 - 300_000)

def test_replayed_recommendations_cite_their_numbers(session):
    _, ea, orders = session
    recs = ea.generate_execution_report('1d')['recommendations']
    algo_recs = [r for r in recs if r['kind'] == 'algorithm']
    assert algo_recs, recs
    for r in recs: assert isinstance(r['text'], str) and r['text']
    for r in algo_recs:
        for algo, key in ((r['prefer'], 'cost_bps'), (r['over'], 'other_bps')):
            ws = [w for w in orders if w.algo == algo]
            expected = sum(map(_paper_minus_real, ws)) / sum(w.amount * w.decision[1] for w in ws) * 1e4
            assert r[key] == pytest.approx(expected, abs=0.006)
            assert f"{r[key]:.1f} bps" in r['text'] or f"{expected:.1f} bps" in r['text']
        assert f"over {len([w for w in orders if w.algo == r['prefer']])} orders vs" in r['text'] and r['cost_bps'] < r['other_bps']
    for r in recs:
        if r['kind'] == 'fill_rate':
            ws = [w for w in orders if w.algo == r['algo']]
            rate = sum(sum(f.amount for f in w.fills) * w.decision[1] for w in ws) / sum(w.amount * w.decision[1] for w in ws)
            assert r['fill_rate'] == pytest.approx(rate, abs=5e-5) and f"{rate:.0%}" in r['text']
    print(*(r['text'] for r in recs), sep='\n')

def test_replayed_figures_render(session):
    s, ea, orders = session
    rep = ea.generate_execution_report('1d')
    fig = slippage_distribution_figure(rep['orders'])
    assert [tr.type for tr in fig.data] == ['box'] * 5
    assert [tr.name for tr in fig.data] == [f"{a} ({6 - (rep['orders'][rep['orders'].algo == a].filled == 0).sum()})" for a in sorted(PATIENCE)]
    assert sum(len(tr.y) for tr in fig.data) == (rep['orders'].filled > 0).sum()
    wf = shortfall_waterfall_figure(rep['summary'].iloc[0])
    y = list(wf.data[0].y)
    assert y[:4] == pytest.approx([rep['summary'][f'{p}_bps'].iloc[0] for p in ('delay', 'execution', 'opportunity', 'fees')])
    assert y[4] == pytest.approx(rep['summary'].shortfall_bps.iloc[0], rel=1e-9)
    w = next(w for w in orders if w.algo == 'twap')
    mids = pd.Series(dict(m for m in s.mids if w.decision[0] - 5_000 <= m[0] <= w.end[0] + 5_000))
    ff = fills_over_price_figure(ea.records[w.oid], mids)
    assert [tr.name for tr in ff.data] == ['market', 'reference', f'fills ({len(w.fills)})', 'average fill', 'market VWAP']
    assert list(ff.data[2].y) == [f.price for f in w.fills] and len(ff.data[0].y) == len(mids)
    assert list(ff.data[1].y) == [w.decision[1], w.arrival[1], w.end[1]]
    for f in (fig, wf, ff): assert f.to_json()                       # serializes: a browser can draw it

def test_replayed_pretrade_choice_on_the_real_book(session):
    s, ea, orders = session
    mc = market_conditions(SYM, end='2024-08-08 23:54')
    vpm = sum(q for t, q in s.tape if t >= s.now - 60_000)               # BTC traded in the last minute of the capture
    m = MarketSnapshot.from_book(s.book, 'buy', vpm, mc['volatility'])
    assert m.top_depth == s.book.asks()[0][1] and m.spread_bps == pytest.approx((s.book.best_ask - s.book.best_bid) / s.book.mid * 1e4)
    assert m.depth == pytest.approx(sum(q for p, q in s.book.asks() if (p / s.book.mid - 1) * 1e4 <= 10))
    small, big = (ea.get_best_execution_algorithm(SYM, 'buy', q, 'normal', m) for q in (m.top_depth / 2, m.depth * 3))
    assert PATIENCE[small.algo.value] < PATIENCE[big.algo.value]
    assert big.numbers['impact_bps'] > small.numbers['impact_bps'] > 0
    history = ExecutionAnalytics.from_records(ea.to_records(), policy=SelectionPolicy(min_history=3, size_band=100))
    c = history.get_best_execution_algorithm(SYM, 'buy', 2.0, 'normal', m)
    assert c.reasons[-1].startswith('history') and set(c.numbers['history']) == set(PATIENCE)

def test_trade_memory_and_event_alias():
    "Trades older than the memory are dropped; out-of-order trades are placed in time; an event's `.record` is taken."
    ea = ExecutionAnalytics(trade_memory_s=1)
    for t in (0, 500, 300, 2_500):                 # 300 arrives late; 2,500 pushes 0..500 out of a 1 s memory
        ea.on_trade(TradeTick(SYM, t, 100.0 + t / 100, 1.0, Side.BUY))
    assert [ts for ts, _, _ in ea._trades[SYM]] == [2_500]
    ea2 = ExecutionAnalytics()
    for t in (0, 500, 300): ea2.on_trade(TradeTick(SYM, t, 100.0 + t / 100, 1.0, Side.BUY))
    assert [ts for ts, _, _ in ea2._trades[SYM]] == [0, 300, 500]
    class ExecutionCompleted:                      # what an event bus might carry
        def __init__(self, record): self.record = record
    r = ExecutionRecord('e', SYM, 'buy', 1.0, 100.0, 0, 100.0, 250, 100.0, 500)
    stored = ea2.on_execution_completed(ExecutionCompleted(r))
    assert stored.market_vwap == pytest.approx((103.0 + 105.0) / 2)     # trades at 300 and 500 ms, 1 BTC each
    frame = pd.DataFrame({'timestamp': [250, 400, 900], 'price': [10.0, 20.0, 30.0], 'amount': [1.0, 3.0, 5.0]})
    assert ExecutionAnalytics().record(r, trades=frame).market_vwap == pytest.approx((10 + 60) / 4)

"""Generated signal dicts against `ProductionCoordinator.submit_signal`, in simulation and in paper mode.

Each example takes a valid signal and breaks exactly one known field (missing and extra keys, wrong types, NaN, inf,
huge and negative numbers, wrong-side stops and targets, unknown venues and symbols, big strings, nested containers,
non-string keys). Its rejection must be a result, not an exception, and name that field; no order may reach the paper
venue (counted on the venue's side); afterwards the journal still flushes and a valid signal fills."""
import asyncio, math
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from trader.config import build_config
from trader.coordinator import ProductionCoordinator
from trader.core import Signal, known_venues

EXAMPLES_PER_MODE = 2600   # 5,200 in all
FIELDS = set(Signal.__dataclass_fields__)

class Manual:
    "A registered strategy that trades only what is submitted by hand."
    symbols: list = []
    exit_policy = None

def is_number(s:str) -> bool:
    try: return math.isfinite(float(s))
    except (ValueError, OverflowError): return False

# ------------------------------------------------------------------ one broken field per example
nested = st.recursive(st.integers() | st.text(max_size=5) | st.none(), lambda x: st.lists(x, max_size=3) | st.dictionaries(st.text(max_size=3), x, max_size=3), max_leaves=6)
containers = st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2) | st.tuples(st.integers()) | nested.filter(lambda v: isinstance(v, (list, dict)))
not_text = st.integers() | st.floats(allow_nan=True) | st.booleans() | containers | st.binary(max_size=4)
big_text = st.text(min_size=65, max_size=3000)
not_a_number = st.text(max_size=40).filter(lambda s: not is_number(s)) | containers | st.booleans() | st.binary(max_size=4)
bad_positive = (st.floats(max_value=0) | st.integers(max_value=0) | st.just(math.nan) | st.just(math.inf) | st.just(-math.inf)
                | st.floats(min_value=1.01e15, allow_infinity=False) | st.integers(min_value=10**15 + 1, max_value=10**500) | st.integers(max_value=-1))

def without(key): return st.just(('drop', key))
def value(v): return v.map(lambda x: ('set', x))

BROKEN = {
    'symbol': value(not_text | st.none() | big_text | st.just('') | st.text(max_size=20).filter(lambda s: '/' not in s)
                    | st.sampled_from([' BTC/USDT', 'BTC/USDT ', 'BTC /USDT', 'BTC/', '/USDT', 'A/B/C', 'ETH/BTC', 'FOO/USDT', 'BTC/EUR',
                                       'DOGE/USDT', 'ADA/USDT'])) | without('symbol'),   # the last two: listed, but no data to price them
    'side': value(not_text | st.none() | st.text(max_size=20).filter(lambda s: s.lower() not in ('buy', 'sell'))) | without('side'),
    'entry': value(not_a_number | bad_positive | st.none()) | without('entry'),
    'stop': value(not_a_number | bad_positive) | st.floats(min_value=1.0, max_value=1e9).map(lambda f: ('times_entry', f)),      # at or above a buy's entry
    'target': value(not_a_number | bad_positive) | st.floats(min_value=1e-9, max_value=1.0).map(lambda f: ('times_entry', f)),   # at or below it
    'strategy': value(not_text | st.none() | big_text | st.just('') | st.just(' manual') | st.text(min_size=1, max_size=20).filter(lambda s: s != 'manual')),
    'exchange': value(not_text | st.none() | big_text | st.just('') | st.sampled_from(['kraken', 'okx', 'mtgox', 'Binance'])
                      | st.text(min_size=1, max_size=20).filter(lambda s: s not in known_venues())),
    'size': value(not_a_number | bad_positive),
    'priority': value(st.floats(allow_nan=True).filter(lambda x: not float(x).is_integer()) | st.integers(min_value=10**6 + 1) | st.integers(max_value=-10**6 - 1)
                      | st.booleans() | st.text(max_size=5) | containers | st.none()),
    'urgency': value(not_text | st.none() | st.text(max_size=10).filter(lambda s: s not in ('low', 'normal', 'high', 'critical'))),
    'algo': value(not_text | st.text(max_size=10).filter(lambda s: s not in ('market', 'limit', 'iceberg', 'twap', 'pov', 'stop_limit', 'oco'))),
    'time_in_force': value(not_text | st.none() | st.text(max_size=5).filter(lambda s: s not in ('GTC', 'IOC', 'FOK', 'PO'))),
    'client_id': value(not_text | big_text | st.just('') | st.just(' id') | st.just('id\n') | st.just('a\x00b')),
    'intent': value(not_text | st.none() | st.text(max_size=10).filter(lambda s: s not in ('entry', 'exit'))),
    'timestamp': value(st.floats(allow_nan=True) | st.integers(max_value=-1) | st.integers(min_value=32_503_680_000_001) | st.booleans()
                       | st.text(max_size=15) | containers),
}
unknown_key = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, categories=('L', 'N', 'P', 'S')), min_size=1, max_size=30).filter(lambda k: k not in FIELDS)
small = st.integers(-10**6, 10**6)
non_string_key = small | st.none() | st.booleans() | st.tuples(small, st.text(max_size=3)) | st.floats(allow_nan=False) | st.frozensets(small, max_size=2)

@st.composite
def broken_signal(draw, base):
    "(the dict, the field its rejection must name)."
    kind = draw(st.sampled_from(['field'] * 8 + ['extra', 'non_string']))
    d = dict(base)
    if kind == 'extra':
        k = draw(unknown_key); d[k] = draw(nested); return d, k
    if kind == 'non_string':
        k = draw(non_string_key); d[k] = draw(nested); return d, repr(k)
    field = draw(st.sampled_from(sorted(BROKEN)))
    op, v = draw(BROKEN[field])
    if op == 'drop': del d[v]
    elif op == 'times_entry': d[field] = base['entry'] * v
    else: d[field] = v
    return d, field

# ------------------------------------------------------------------ the sessions
async def session(mode:str) -> ProductionCoordinator:
    c = ProductionCoordinator(build_config({'mode': mode}), start='2024-08-05', end='2024-08-08', symbols=['BTC/USDT'], regimes=False, speed=1.0)
    await c.initialize_production_system(None, {'equity_usd': 10_000})
    c.register_strategy('manual', Manual(), 0.5)
    return c

@pytest.mark.parametrize('mode', ['simulation', 'paper'])
def test_every_broken_field_is_a_rejection_naming_it_and_sends_nothing(mode):
    loop = asyncio.new_event_loop()
    try:
        c = loop.run_until_complete(session(mode))
        eng, venue = c.trading_engine, c.venues['binance']
        primer = loop.run_until_complete(c.submit_signal({'symbol': 'BTC/USDT', 'side': 'buy'}))   # delivers the first prices
        assert primer.field == 'entry'
        px = eng.marks['BTC/USDT']
        base = {'symbol': 'BTC/USDT', 'side': 'buy', 'entry': px, 'stop': px * 0.98, 'target': px * 1.04, 'strategy': 'manual',
                'exchange': 'binance', 'size': 0.001, 'priority': 1, 'urgency': 'normal', 'algo': 'market', 'time_in_force': 'GTC',
                'client_id': 'base-1', 'intent': 'entry', 'timestamp': 1_722_816_000_000}
        assert Signal.from_dict(base)   # valid as it stands: every rejection below is the broken field's
        seen = {'n': 0, 'fields': set()}

        @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
        @given(broken_signal(base))
        def rejected(case):
            d, field = case
            r = loop.run_until_complete(c.submit_signal(d))
            assert r.status == 'rejected' and r.field == field, (d, field, r)
            assert field in r.reasons[0] and r.parent is None and r.size == 0, r.reasons
            seen['n'] += 1; seen['fields'].add(field if field in FIELDS else 'extra key')

        rejected()
        assert seen['n'] == EXAMPLES_PER_MODE and seen['fields'] >= FIELDS, seen['fields'] ^ FIELDS
        assert loop.run_until_complete(venue.fetch_orders()) == []              # nothing reached the venue
        eng.journal.flush()                                                      # the journal is not wedged
        assert len(eng.journal.load('signal_rejected')) == EXAMPLES_PER_MODE + 1
        assert eng.risk.breaker.errors == 0 and eng.counts['errors'] == 0 and eng.risk.killed is None   # rejections are not faults
        px = eng.marks['BTC/USDT']   # the simulation's market moved on as the examples were submitted
        good = loop.run_until_complete(c.submit_signal({'symbol': 'BTC/USDT', 'side': 'buy', 'entry': px, 'stop': px * 0.98, 'target': px * 1.04,
                                                        'strategy': 'manual', 'exchange': 'binance', 'size': 0.001, 'algo': 'market'}))
        assert good.status == 'filled', good
        orders = loop.run_until_complete(venue.fetch_orders())
        assert len(orders) == 1 and orders[0]['status'] == 'closed' and orders[0]['filled'] == 0.001
        assert len(eng.journal.load('position_opened')) == 1
    finally:
        loop.close()

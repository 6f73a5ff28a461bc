"PortfolioManager: equity from ccxt-parsed balances, allocations, capital per strategy, allocate."
import ccxt, pytest
from hypothesis import given, settings, strategies as st
from trader.core import Signal
from trader.clock import SimClock
from trader.portfolio import PortfolioManager, PortfolioError, value_balances

def binance_balance(assets):
    "A balance exactly as ccxt's binance parser builds it from a raw /api/v3/account response."
    raw = {'balances': [{'asset': a, 'free': str(f), 'locked': str(l)} for a, (f, l) in assets.items()]}
    return ccxt.binance().parse_balance_custom(raw, 'spot')

def test_equity_from_a_ccxt_balance_and_marks():
    bal = binance_balance({'BTC': (0.5, 0.1), 'ETH': (2, 0), 'USDT': (1_000.5, 0), 'DOGE': (0, 0)})
    pm = PortfolioManager()
    with pytest.raises(PortfolioError, match='equity: unknown yet'): pm.equity
    eq = pm.update_from_balances(bal, {'BTC/USDT': 60_000, 'ETH': 2_500})   # DOGE is 0: no mark needed
    assert eq == pytest.approx(0.6 * 60_000 + 2 * 2_500 + 1_000.5) and pm.equity == eq
    with pytest.raises(PortfolioError, match=r"no mark for ETH \(total 2 on default\)"): pm.update_from_balances(bal, {'BTC': 60_000})

def test_equity_over_several_venues():
    balances = {'binance': binance_balance({'BTC': (1, 0), 'USDT': (500, 0)}),
                'okx': {'total': {'USDC': 300, 'BTC': 0.25}, 'free': {}, 'used': {}}}
    pm = PortfolioManager()
    eq = pm.update_from_balances(balances, {'BTC': 50_000, 'USDT/USDC': 1.0})
    assert eq == pytest.approx(50_500 + 300 + 12_500) and pm.venue_equity == {'binance': 50_500, 'okx': 12_800}
    with pytest.raises(PortfolioError, match=r"balances\['kraken'\]: not a ccxt balance"):
        value_balances({'binance': balances['binance'], 'kraken': {'BTC': 1}}, {'BTC': 1})

def test_register_strategy_weights_sum_to_at_most_one():
    pm = PortfolioManager(10_000)
    pm.register_strategy('a', 0.6); pm.register_strategy('b', 0.4)   # exactly 1 is allowed
    with pytest.raises(PortfolioError, match=r"register_strategy 'c': allocations would sum to 1.1 > 1 \(a 0.6, b 0.4, c 0.1\)"):
        pm.register_strategy('c', 0.1)
    pm.register_strategy('a', 0.5); pm.register_strategy('c', 0.1)   # re-registering changes the weight
    assert pm.allocations == {'a': 0.5, 'b': 0.4, 'c': 0.1}
    for bad in (0, -0.1, 1.5, float('nan'), 'half'):
        with pytest.raises(PortfolioError, match="register_strategy 'd': allocation"): pm.register_strategy('d', bad)
    pm.unregister_strategy('c'); pm.register_strategy('d', 0.1)

def test_capital_for_follows_equity_and_deployment():
    pm = PortfolioManager(100_000)
    pm.register_strategy('trend', 0.4); pm.register_strategy('mr', 0.2)
    assert (pm.capital_for('trend'), pm.capital_for('mr')) == (40_000, 20_000)
    pm.update_deployed([('BTC/USDT', 'trend', 'buy', 15_000), ('ETH/USDT', 'trend', 'sell', -10_000), ('ETH/USDT', 'mr', 'buy', 25_000)])
    assert (pm.capital_for('trend'), pm.capital_for('mr')) == (15_000, 0)   # mr is over its budget: nothing left, not negative
    pm.update_equity(80_000)
    assert pm.capital_for('trend') == pytest.approx(32_000 - 25_000)
    pm.set_deployed('mr', 0); assert pm.capital_for('mr') == pytest.approx(16_000)
    with pytest.raises(PortfolioError, match="strategy 'x': not registered"): pm.capital_for('x')
    t = pm.allocation_table()
    assert t.loc['trend'].tolist() == pytest.approx([0.4, 32_000, 25_000, 7_000])

def test_allocate_caps_by_capital_and_the_override():
    pm = PortfolioManager(100_000); pm.register_strategy('trend', 0.3)
    s = Signal('BTC/USDT', 'buy', 60_000, stop=58_000, strategy='trend')
    assert pm.allocate(s, 0.25) == 0.25                         # 15,000 of 30,000
    assert pm.allocate(s, 1.0) == pytest.approx(0.5)            # 30,000 / 60,000
    assert pm.allocate(s, 1.0, allocation_size=6_000) == pytest.approx(0.1)
    assert pm.allocate(s, 0.05, allocation_size=6_000) == 0.05  # the override only caps
    assert pm.allocate(s, None, allocation_size=12_000) == pytest.approx(0.2)
    assert pm.allocate(s, None, allocation_size=1e9) == pytest.approx(0.5)
    exit_ = Signal('BTC/USDT', 'sell', 60_000, strategy='trend', intent='exit')
    assert pm.allocate(exit_, 3.0) == 3.0
    with pytest.raises(PortfolioError, match="strategy 'other': not registered"): pm.allocate(Signal('BTC/USDT', 'buy', 1, strategy='other'), 1)
    with pytest.raises(PortfolioError, match='allocation_size: must be a positive number'): pm.allocate(s, 1, allocation_size=-5)

async def test_high_water_mark_and_day_start_on_the_clock():
    clock = SimClock(86_400 * 20_000 + 60)
    pm = PortfolioManager(50_000, clock=clock)
    for eq in (52_000, 49_000): pm.update_equity(eq)
    assert (pm.high_water_mark, pm.day_start_equity) == (52_000, 50_000)
    await clock.advance(86_400 - 61); pm.update_equity(48_000); assert pm.day_start_equity == 50_000
    await clock.advance(1); pm.update_equity(47_000); assert pm.day_start_equity == 47_000
    with pytest.raises(PortfolioError, match='equity: must be a positive number'): pm.update_equity(-1)

@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(0.01, 0.5), min_size=1, max_size=8), equity=st.floats(1, 1e9),
       deployed=st.lists(st.floats(0, 1e9), min_size=8, max_size=8))
def test_available_capital_never_exceeds_equity(weights, equity, deployed):
    pm = PortfolioManager(equity)
    registered = []
    for k, w in enumerate(weights):
        try: pm.register_strategy(f's{k}', w); registered.append(f's{k}')
        except PortfolioError: assert sum(pm.allocations.values()) + w > 1
    assert sum(pm.allocations.values()) <= 1 + 1e-9
    pm.update_deployed([('BTC/USDT', n, 'buy', d) for n, d in zip(registered, deployed)])
    caps = [pm.capital_for(n) for n in registered]
    assert all(c >= 0 for c in caps) and sum(caps) <= equity * (1 + 1e-9)

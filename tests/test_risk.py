"RiskManager: every rule trips and passes, sizing with real Binance precision, the circuit breaker and the kill switch."
from decimal import Decimal, ROUND_FLOOR
import ccxt, pytest
from trader.core import Signal
from trader.clock import SimClock
from trader.config import RiskConfig, EmergencyConfig
from trader.data import load_markets
from trader.risk import (RiskManager, RiskState, RiskDecision, RiskError, CircuitBreaker, CircuitBreakerTripped,
                         CircuitBreakerReset, TradingHalted, TradingResumed)

# Limits wide enough that only the rule under test binds.
LOOSE = dict(risk_per_trade=0.01, max_position_fraction=1.0, max_total_exposure=10.0, max_symbol_exposure=10.0,
             max_strategy_exposure=10.0, max_open_positions=100, min_reward_risk=0.0)

def manager(clock=None, **risk):
    emergency = {k: risk.pop(k) for k in list(risk) if k in EmergencyConfig.__dataclass_fields__}
    return RiskManager(RiskConfig(**{**LOOSE, **risk}), EmergencyConfig(**emergency), clock=clock or SimClock(0))

def sig(entry=100.0, stop=95.0, target=110.0, side='buy', symbol='BTC/USDT', strategy='s', **kw):
    return Signal(symbol, side, entry, stop=stop, target=target, strategy=strategy, **kw)

EXIT = Signal('BTC/USDT', 'sell', 100.0, intent='exit', strategy='s')

@pytest.fixture(scope='module')
def binance():
    ex = ccxt.binance(); ex.set_markets(load_markets('binance'))
    return ex

def floor_to(x: Decimal, step: str) -> float:
    return float((x / Decimal(step)).to_integral_value(ROUND_FLOOR) * Decimal(step))

# ---------------------------------------------------------------------------------------------------------------
# Sizing

def test_risk_per_trade_sizes_from_the_stop():
    d = manager().validate(sig(100, 95), RiskState(10_000))
    assert (d.action, d.size) == ('approve', pytest.approx(10_000 * 0.01 / 5))   # 20 units risk 100 = 1 % at the stop
    assert d.reasons[0] == 'risk_per_trade: equity 10,000.00 x 1.00% / |100 - 95| = 20 BTC'

def test_risk_per_trade_cuts_a_requested_size_that_risks_too_much():
    assert manager().validate(sig(100, 95, size=10), RiskState(10_000)).action == 'approve'
    d = manager().validate(sig(100, 95, size=30), RiskState(10_000))
    assert (d.action, d.size) == ('resize', pytest.approx(20)) and d.reasons[0].startswith('risk_per_trade: size 30 would risk 150.00')

def test_no_stop_is_rejected():
    d = manager().validate(sig(stop=None, target=None), RiskState(10_000))
    assert d.action == 'reject' and 'no stop' in d.reasons[0]

def test_size_multiplier_from_the_regime():
    d = manager().validate(sig(100, 95), RiskState(10_000, size_multiplier=0.5))
    assert d.size == pytest.approx(10) and 'x size_multiplier 0.5' in d.reasons[0]

@pytest.mark.parametrize('equity,entry,stop,symbol,step', [
    ('12345.67', '61837.64', '55000.00', 'BTC/USDT', '0.00001'),
    ('50000', '61837.64', '61200.13', 'BTC/USDT', '0.00001'),
    ('7777.77', '2683.81', '2611.47', 'ETH/USDT', '0.0001'),
])
def test_sizing_rounds_down_with_real_binance_precision(binance, equity, entry, stop, symbol, step):
    "Expected by hand: equity x 1 % / |entry - stop|, floored to the market's step (Binance's LOT_SIZE)."
    raw = Decimal(equity) * Decimal('0.01') / (Decimal(entry) - Decimal(stop))
    expected = floor_to(raw, step)
    st = RiskState(float(equity), amount_to_precision=binance.amount_to_precision, markets=binance.markets)
    d = manager().validate(sig(float(entry), float(stop), float(entry) * 1.1, symbol=symbol), st)
    assert d.action == 'approve' and d.size == expected and d.size <= float(raw)
    assert float(raw) - d.size < float(step)

def test_below_the_venue_minimums_is_rejected(binance):
    st = lambda eq: RiskState(eq, amount_to_precision=binance.amount_to_precision, markets=binance.markets)
    # 30 x 1 % / 6837.64 = 0.0000438 -> 0.00004 BTC, worth 2.47 USDT < the 5 USDT NOTIONAL minimum
    d = manager().validate(sig(61_837.64, 55_000, 70_000), st(30))
    assert d.action == 'reject' and d.reasons[-1] == 'min_cost: 4e-05 x 61837.6 = 2.47 is below the market minimum cost 5'
    # 0.5 x 1 % / 6837.64 = 7.3e-7 BTC: below one step, ccxt refuses to round it
    d = manager().validate(sig(61_837.64, 55_000, 70_000), st(0.5))
    assert d.action == 'reject' and d.reasons[-1].startswith('precision: BTC/USDT size 7.3124645e-07 cannot be rounded')
    assert manager().validate(sig(61_837.64, 55_000, 70_000), st(100)).action == 'approve'

# ---------------------------------------------------------------------------------------------------------------
# Caps

def test_max_position_fraction():
    assert manager(max_position_fraction=0.25).validate(sig(100, 95), RiskState(10_000)).action == 'approve'  # 2,000 <= 2,500
    d = manager(max_position_fraction=0.1).validate(sig(100, 95), RiskState(10_000))
    assert (d.action, d.size) == ('resize', pytest.approx(10))  # 1,000 / 100
    assert d.reasons[1] == 'max_position_fraction: one position would reach 2,000.00 > limit 1,000.00; size cut from 20 to 10'

@pytest.mark.parametrize('rule,rows', [
    ('max_total_exposure', [('ETH/USDT', 'x', 'buy', 4_500), ('XRP/USDT', 'y', 'sell', -4_000)]),
    ('max_symbol_exposure', [('BTC/USDT', 'x', 'buy', 8_500)]),
    ('max_strategy_exposure', [('ETH/USDT', 's', 'buy', 8_500)]),
])
def test_exposure_limits_resize_then_reject(rule, rows):
    rm = manager(**{rule: 1.0})
    assert rm.validate(sig(100, 95), RiskState(10_000)).action == 'approve'   # 2,000 of room 10,000
    d = rm.validate(sig(100, 95), RiskState(10_000, positions=rows))         # 1,500 of room left: 15 units
    assert (d.action, d.size) == ('resize', pytest.approx(15)) and d.reasons[-1].startswith(f'{rule}: ')
    assert d.checks[rule] == dict(passed=False, value=pytest.approx(10_500), limit=10_000)
    full = rows + [('BTC/USDT', 's', 'buy', 1_500)]
    d = rm.validate(sig(100, 95), RiskState(10_000, positions=full))
    assert d.action == 'reject' and d.size == 0 and f'{rule}: ' in d.reasons[-1] and 'nothing fits' in d.reasons[-1]

def test_max_open_positions():
    rm = manager(max_open_positions=3)
    assert rm.validate(sig(), RiskState(10_000, open_positions=2)).action == 'approve'
    d = rm.validate(sig(), RiskState(10_000, open_positions=3))
    assert d.action == 'reject' and d.reasons == ['max_open_positions: 3 open, limit 3']

def test_min_reward_risk():
    rm = manager(min_reward_risk=1.5)
    assert rm.validate(sig(100, 95, 107.5), RiskState(10_000)).action == 'approve'   # exactly 1.5
    d = rm.validate(sig(100, 95, 107), RiskState(10_000))
    assert d.action == 'reject' and d.reasons == ['min_reward_risk: reward-to-risk 1.40 = |107 - 100| / |100 - 95| is below 1.5']
    assert 'no target' in rm.validate(sig(target=None), RiskState(10_000)).reasons[0]
    assert manager(min_reward_risk=0).validate(sig(target=None), RiskState(10_000)).action == 'approve'

# ---------------------------------------------------------------------------------------------------------------
# Loss limits, the circuit breaker, the kill switch

def test_daily_loss_limit():
    rm = manager(max_daily_loss=0.05)
    assert rm.validate(sig(), RiskState(95_001, day_start_equity=100_000)).action == 'approve'
    d = rm.validate(sig(), RiskState(95_000, day_start_equity=100_000))   # exactly 5 % down trips
    assert d.action == 'reject' and d.reasons[0] == "max_daily_loss: equity 95,000.00 is down 5.00% from the day's start 100,000.00, limit 5.00%"

def test_max_drawdown():
    rm = manager(max_drawdown=0.10)
    assert rm.validate(sig(), RiskState(90_500, high_water_mark=100_000)).action == 'approve'
    d = rm.validate(sig(), RiskState(89_000, high_water_mark=100_000))
    assert d.action == 'reject' and d.reasons[0] == 'max_drawdown: equity 89,000.00 is 11.00% below its high-water mark 100,000.00, limit 10.00%'
    assert isinstance(rm.events[0], CircuitBreakerTripped)

async def test_breaker_trips_at_max_daily_loss_blocks_entries_not_exits():
    clock = SimClock(1_000)
    rm, seen = manager(clock, max_daily_loss=0.05, circuit_breaker_cooldown=600), []
    rm.on_event = seen.append
    ok = RiskState(100_000)
    assert rm.validate(sig(), RiskState(96_000, day_start_equity=100_000)).approved   # 4 %: under the limit
    assert rm.validate(sig(), RiskState(94_900, day_start_equity=100_000)).action == 'reject'
    assert rm.breaker.is_tripped and isinstance(seen[0], CircuitBreakerTripped) and seen[0].time == 1_000_000
    assert seen[0].reason.startswith('max_daily_loss: equity 94,900.00 is down 5.10%')
    d = rm.validate(sig(), ok)   # equity recovered, but the breaker still blocks entries
    assert d.action == 'reject' and d.reasons == [f'circuit_breaker: tripped ({seen[0].reason}); entries blocked for 600 s more or until reset()']
    x = rm.validate(EXIT, RiskState(94_900, day_start_equity=100_000))
    assert x.action == 'approve'
    await clock.advance(599); assert rm.validate(sig(), ok).action == 'reject'
    await clock.advance(1); assert rm.validate(sig(), ok).action == 'approve'
    assert isinstance(seen[-1], CircuitBreakerReset) and 'cooldown of 600 s passed' in seen[-1].reason
    rm.validate(sig(), RiskState(94_900, day_start_equity=100_000)); assert rm.breaker.is_tripped
    rm.reset(); assert rm.validate(sig(), ok).approved and seen[-1].reason == 'by hand'

def test_breaker_trips_on_consecutive_errors_and_can_be_disabled():
    rm = manager(max_consecutive_errors=3)
    for _ in range(2): rm.record_error('NetworkError')
    rm.record_success()
    for _ in range(2): rm.record_error('InsufficientFunds')
    assert rm.validate(sig(), RiskState(10_000)).approved
    rm.record_error('InsufficientFunds')
    d = rm.validate(sig(), RiskState(10_000))
    assert d.action == 'reject' and '3 consecutive errors or rejects (max_consecutive_errors 3); last: InsufficientFunds' in d.reasons[0]
    off = manager(enable_circuit_breaker=False, max_consecutive_errors=1)
    off.record_error('x'); assert off.validate(sig(), RiskState(10_000)).approved and not off.breaker.is_tripped
    assert off.validate(sig(), RiskState(90_000, day_start_equity=100_000)).action == 'reject'   # the limit still rejects
    assert off.events == []

def test_kill_switch():
    rm = manager()
    rm.kill('operator pressed stop')
    d = rm.validate(sig(), RiskState(10_000))
    assert d.action == 'reject' and d.reasons == ['kill_switch: trading halted (operator pressed stop); only exits pass until revive()']
    assert rm.validate(EXIT, RiskState(10_000)).action == 'approve'
    rm.revive()
    assert rm.validate(sig(), RiskState(10_000)).approved
    assert [type(e) for e in rm.events] == [TradingHalted, TradingResumed]

def test_check_limits_for_the_risk_loop():
    rm = manager()
    assert rm.check_limits(RiskState(99_000, day_start_equity=100_000)) == [] and not rm.breaker.is_tripped
    assert rm.check_limits(RiskState(80_000, day_start_equity=100_000))[0].startswith('max_daily_loss')
    assert rm.breaker.is_tripped

def test_state_and_decision_are_checked_values():
    with pytest.raises(RiskError, match='risk_state.equity: must be a positive number'): RiskState(float('nan'))
    with pytest.raises(RiskError, match='size_multiplier'): RiskState(1, size_multiplier=-1)
    d = manager().validate(sig(), RiskState(10_000))
    with pytest.raises(AttributeError): d.action = 'reject'
    assert isinstance(d, RiskDecision) and d.reasons and all(isinstance(r, str) for r in d.reasons)

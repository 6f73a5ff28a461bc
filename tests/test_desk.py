"""The trading desk's callbacks without a browser: widget values in, engine calls out.

Each test builds a desk on the bundled candles (August 5th, 2024 from 06:00) replayed in paper mode at 600 times real
time, sets widget values, clicks buttons in Python (`Button.click()` runs the same handlers a browser click does) and
checks what reached the engine (through spies that record and pass the call on) and what the desk shows."""
import asyncio, math
import pandas as pd
import pytest
from trader.core import Bar, Signal, SignalError, Side
from trader.data import load_candles
from trader.desk import TradingDesk, ManualStrategy, form_signal, DESK_EXIT_REASON
from trader.positions import EXIT_REASONS

FORM = dict(symbol='BTC/USDT', side='buy', sizing='size', amount='0.01', entry='', stop='', target='', algo='market',
            urgency='normal', strategy='manual', exchange='binance')

# ---------------------------------------------------------------- form_signal, by hand

def test_form_signal_size_and_blank_fields():
    d = form_signal({**FORM, 'stop': ' 49000 ', 'target': '53000'}, mark=50_000.0)
    assert d == {'symbol': 'BTC/USDT', 'side': 'buy', 'strategy': 'manual', 'exchange': 'binance', 'urgency': 'normal',
                 'entry': 50_000.0, 'stop': '49000', 'target': '53000', 'algo': 'market', 'size': '0.01'}
    s = Signal.from_dict(d)
    assert (s.entry, s.stop, s.target, s.size) == (50_000.0, 49_000.0, 53_000.0, 0.01)
    assert 'size' not in form_signal({**FORM, 'amount': ''}, 50_000.0)        # blank: the risk manager sizes it
    assert 'algo' not in form_signal({**FORM, 'algo': 'default'}, 50_000.0)   # default: the configured algorithm
    assert form_signal({**FORM, 'entry': '48000'}, 50_000.0)['entry'] == '48000'   # a typed entry wins over the mark

def test_form_signal_risk_sizing():
    # 50 USDT at risk, 1,000 between entry and stop: 0.05 BTC; a short the same way round
    assert form_signal({**FORM, 'sizing': 'risk', 'amount': '50', 'stop': '49000'}, 50_000.0)['size'] == pytest.approx(0.05)
    assert form_signal({**FORM, 'side': 'sell', 'sizing': 'risk', 'amount': '30', 'entry': '2500', 'stop': '2560'})['size'] == pytest.approx(0.5)

@pytest.mark.parametrize('change, field, words', [
    ({'sizing': 'risk', 'amount': 'lots', 'stop': '49000'}, 'risk', 'must be a number'),
    ({'sizing': 'risk', 'amount': '-5', 'stop': '49000'}, 'risk', 'must be a positive number'),
    ({'sizing': 'risk', 'amount': '50'}, 'stop', 'is required to size by risk'),
    ({'sizing': 'risk', 'amount': '50', 'entry': '49000', 'stop': '49000'}, 'stop', 'must differ from the entry'),
])
def test_form_signal_errors_name_the_field(change, field, words):
    with pytest.raises(SignalError) as e: form_signal({**FORM, **change}, 50_000.0)
    assert e.value.field == field and words in str(e.value)

def test_form_signal_needs_a_price():
    with pytest.raises(SignalError, match=r'signal\.entry: is required: no price for BTC/USDT yet'): form_signal(FORM, None)

def test_close_reason_is_a_position_exit_reason():
    assert DESK_EXIT_REASON in EXIT_REASONS

# ---------------------------------------------------------------- the desk on a replay

class Spy:
    "Record the calls of an object's method and pass them on."
    def __init__(self, obj, name):
        self.calls, real = [], getattr(obj, name)
        if asyncio.iscoroutinefunction(real):
            async def wrapper(*a, **k): self.calls.append((a, k)); return await real(*a, **k)
        else:
            def wrapper(*a, **k): self.calls.append((a, k)); return real(*a, **k)
        setattr(obj, name, wrapper)

@pytest.fixture
async def desk():
    d = await TradingDesk.replay(start='2024-08-05 06:00', end='2024-08-05 09:00', speed=600)
    yield d
    await d.close()
    assert d.errors == 0, f"{d.errors} desk errors"

async def started(d):
    await d.start()
    assert await d.wait_for(lambda: d.engine.counts['events'] >= 4, timeout=5)
    return d

async def submit_twap_entry(d):
    "Start the desk and submit a 0.02 BTC TWAP buy from the form (stop 10 % under the mark, target 20 % over); the submission's task."
    await started(d)
    mark = d.engine.marks['BTC/USDT']
    d.algo.value, d.amount.value = 'twap', '0.02'
    d.stop_price.value, d.target_price.value = f'{mark * 0.9:.2f}', f'{mark * 1.2:.2f}'
    return d.on_submit()

def closes_before(ts_ms:int, n:int=2) -> list[float]:
    "Closes of the last `n` BTC/USDT minute bars complete at `ts_ms`, read from the raw candles."
    raw = load_candles('BTC/USDT', '2024-08-05 06:00', '2024-08-05 09:00')
    done = raw[raw.index + pd.Timedelta('1min') <= pd.Timestamp(ts_ms, unit='ms', tz='UTC')]
    return [float(x) for x in done.close.iloc[-n:]]

async def test_builds_with_a_manual_strategy_and_the_venues(desk):
    assert desk.mode.value == 'paper' and list(desk.venue.options) == ['binance']
    assert desk.strategy.value == 'manual' and isinstance(desk.engine.strategies['manual'], ManualStrategy)
    assert desk.engine.portfolio.allocations == {'manual': 1.0}       # nothing else registered: all the capital
    assert set(desk.symbol.options) == {'BTC/USDT', 'ETH/USDT'}
    assert 'stopped' in desk.status.value and not desk.engine.running

@pytest.mark.parametrize('change, field', [({'stop_price': 'abc'}, 'stop'), ({'target_price': '1'}, 'target'),
                                           ({'amount': '-1'}, 'size'), ({'entry_price': 'NaN'}, 'entry')])
async def test_a_bad_form_shows_the_field_and_calls_nothing(desk, change, field):
    await started(desk)
    spy = Spy(desk.engine, 'execute_signal')
    for name, value in change.items(): getattr(desk, name).value = value
    assert desk.on_submit() is None
    assert f'signal.{field}:' in desk.form_error.value
    assert 'desk-invalid' in desk.fields[field]._dom_classes
    assert spy.calls == [] and desk.engine.counts['signals'] == 0 and desk.engine.results == []

async def test_a_rejection_after_the_form_outlines_the_field_it_names(desk):
    "A stop the form accepts but the market is already through: the engine rejects it, and the desk outlines the stop."
    await started(desk)
    mark = desk.engine.marks['BTC/USDT']
    desk.entry_price.value, desk.stop_price.value, desk.target_price.value = f'{mark * 1.2:.2f}', f'{mark * 1.1:.2f}', f'{mark * 1.5:.2f}'
    desk.amount.value = '0.01'
    r = await desk.on_submit()
    assert r.status == 'rejected' and r.field == 'stop', r
    assert 'desk-invalid' in desk.fields['stop']._dom_classes and 'rejected' in desk.form_result.value
    assert await desk.engine.orders.clients['binance'].fetch_open_orders() == [] and desk.engine.positions.open_positions() == []

async def test_submit_sends_the_form_as_a_signal_and_shows_the_fill(desk):
    await started(desk)
    spy = Spy(desk.engine, 'execute_signal')
    mark = desk.engine.marks['BTC/USDT']
    desk.stop_price.value, desk.target_price.value = f'{mark - 1000:.2f}', f'{mark + 3000:.2f}'
    desk.stop_price.add_class('desk-invalid')                       # an old error is cleared by the next submit
    desk.urgency.value, desk.amount.value = 'high', '0.01'
    r = await desk.on_submit()
    (sig,), _ = spy.calls[0]
    assert len(spy.calls) == 1 and isinstance(sig, Signal)
    assert (sig.symbol, sig.side, sig.size, sig.algo, sig.urgency, sig.strategy, sig.exchange) == ('BTC/USDT', Side.BUY, 0.01, 'market', 'high', 'manual', 'binance')
    assert sig.stop == pytest.approx(mark - 1000, abs=0.006) and sig.target == pytest.approx(mark + 3000, abs=0.006)
    assert r.status == 'filled' and r.size == 0.01 and sum(f.amount for f in r.fills) == pytest.approx(0.01)
    assert r.fills[0].price in closes_before(r.fills[0].timestamp)   # a market order on bars fills at the last close
    assert 'desk-invalid' not in desk.stop_price._dom_classes and desk.form_error.value == ''
    assert f'position {r.position_id}' in desk.form_result.value and 'filled: buy 0.01 BTC/USDT' in desk.form_result.value
    row = desk._position_rows[r.position_id].children[0].value
    assert r.position_id in row and 'BTC/USDT' in row and '0.01' in row
    assert list(desk.price_chart.data[1].y) == [f.price for f in r.fills]     # the entry on the chart
    assert 'filled' in repr(desk.results[-1])

async def test_risk_sizing_reaches_the_engine(desk):
    await started(desk)
    spy = Spy(desk.engine, 'execute_signal')
    mark = desk.engine.marks['BTC/USDT']
    desk.sizing.value, desk.amount.value = 'risk', '20'
    desk.stop_price.value, desk.target_price.value = f'{mark - 500:.2f}', f'{mark + 1000:.2f}'
    assert desk.amount.description == 'risk USDT'
    r = await desk.on_submit()
    (sig,), _ = spy.calls[0]
    # 20 USDT over the distance to the stop typed with 2 decimals (0.04 BTC, under the 25 % position cap)
    assert sig.size == pytest.approx(20 / (mark - float(f'{mark - 500:.2f}')), rel=1e-12)
    assert r.status == 'filled' and r.size == pytest.approx(0.04, abs=1e-5)

async def test_a_rejection_shows_the_reasons(desk):
    await started(desk)
    mark = desk.engine.marks['BTC/USDT']
    desk.stop_price.value = f'{mark - 100:.2f}'                     # no target: the risk manager wants one
    r = await desk.on_submit()
    assert r.status == 'rejected' and 'min_reward_risk' in desk.form_result.value and desk.engine.counts['orders'] == 0

async def test_close_button_requests_an_exit_through_the_engine(desk):
    await started(desk)
    mark = desk.engine.marks['BTC/USDT']
    desk.amount.value, desk.stop_price.value, desk.target_price.value = '0.01', f'{mark * 0.9:.2f}', f'{mark * 1.2:.2f}'
    r = await desk.on_submit()
    pid = r.position_id
    spy = Spy(desk.engine.positions, 'request_exit')
    desk._position_rows[pid].children[1].click()
    assert [c[0] for c in spy.calls] == [(pid, 'exit_signal')]
    pos = desk.engine.positions.positions[pid]
    assert await desk.wait_for(lambda: pos.amount == 0, timeout=5)
    exit_fills = [f for f in pos.fills if f.side is Side.SELL]
    assert sum(f.amount for f in exit_fills) == pytest.approx(0.01) and pos.exit_reason == 'exit_signal'
    assert desk.engine.counts['exits'] == 1                          # through the order manager, not a shortcut
    desk.refresh(force=True)
    assert pid not in desk._position_rows and len(desk.positions_box.children) == 1
    assert 'exit_signal' in desk.closed_box.value
    assert desk.close_position(pid) is None                           # closed: nothing more to do

async def test_cancel_button_cancels_a_working_order(desk):
    task = await submit_twap_entry(desk)
    assert await desk.wait_for(lambda: desk.engine.orders.active_orders, timeout=5)
    parent = desk.engine.orders.active_orders[0]
    desk.refresh(force=True)
    row = desk._order_rows[parent.id]
    assert parent.id in row.children[0].value and 'twap' in row.children[0].value
    spy = Spy(desk.engine.orders, 'cancel_order')
    row.children[1].click()
    r = await task
    assert spy.calls[0][0][0] == parent.id and parent.status == 'canceled'
    assert parent.filled < parent.amount and r.status in ('partial', 'failed')
    desk.refresh(force=True)
    assert parent.id not in desk._order_rows

async def test_emergency_stop_asks_then_halts_and_closes(desk):
    await started(desk)
    mark = desk.engine.marks['BTC/USDT']
    desk.stop_price.value, desk.target_price.value = f'{mark * 0.9:.2f}', f'{mark * 1.2:.2f}'
    r = await desk.on_submit()
    spy = Spy(desk.engine, 'emergency_stop')
    desk.emergency_button.click()
    assert desk.confirm_box.layout.display == 'flex' and spy.calls == []
    desk.dismiss_button.click()
    assert desk.confirm_box.layout.display == 'none' and spy.calls == [] and not desk.engine.halted
    desk.emergency_button.click(); desk.confirm_button.click()
    assert await desk.idle(10)
    assert len(spy.calls) == 1 and desk.confirm_box.layout.display == 'none'
    s = desk.last_summary
    assert s['exit_requests'] == 1 and s['open_positions_left'] == [] and desk.engine.positions.positions[r.position_id].amount == 0
    assert desk.engine.halted and 'HALTED' in desk.status.value and 'EMERGENCY STOP done' in desk.form_result.value
    assert 'EMERGENCY STOP' in desk.alerts_box.value
    again = await desk.on_submit()
    assert again.status == 'rejected'

async def test_start_stop_own_their_tasks(desk):
    desk.start_button.click()
    assert await desk.wait_for(lambda: desk.running and desk.engine.running, timeout=5)
    assert await desk.wait_for(lambda: desk.coordinator.feed.position >= 6, timeout=5)
    assert 'running' in desk.status.value
    desk.stop_button.click()
    assert await desk.wait_for(lambda: not desk.running and not desk.engine.running, timeout=10)
    assert await desk.idle(5) and not desk._tasks and not desk.engine._loops
    n = desk.coordinator.feed.position
    await asyncio.sleep(0.3)
    assert desk.coordinator.feed.position == n                        # nothing runs after stop

async def test_redraws_are_throttled(desk):
    calls = []
    real = desk.refresh
    desk.refresh = lambda force=False: (calls.append(force), real(force))
    await started(desk)
    calls.clear()
    await asyncio.sleep(1.6)
    assert 2 <= len(calls) <= 4, calls                                 # every 0.5 s, not every bar (about 16 bars went by)
    assert desk.engine.counts['events'] > 2 * len(calls)
    desk.refresh(force=True)                                           # the tabs drew from what the engine holds
    import plotly.graph_objects as go
    assert isinstance(desk.regime_box.children[0], go.FigureWidget)
    eq = desk.engine.performance.equity()
    assert len(eq) >= 2 and list(desk.equity_chart.data[0].y) == list(eq.values)
    assert len(desk.price_chart.data[0].y) == len(desk.prices['BTC/USDT']) >= 10

async def test_mode_switch_only_while_stopped(desk):
    await started(desk)
    assert desk.on_mode('simulation') is None
    assert desk.mode.value == 'paper' and desk.coordinator.mode == 'paper'
    await desk.stop()
    old = desk.engine
    desk.mode.value = 'simulation'
    assert await desk.idle(10)
    assert desk.coordinator.mode == 'simulation' and desk.engine is not old
    assert 'manual' in desk.engine.strategies and desk.strategy.value == 'manual'
    assert 'simulation' in desk.status.value

async def test_emergency_stop_closes_an_entry_it_canceled_part_filled(desk):
    task = await submit_twap_entry(desk)
    assert await desk.wait_for(lambda: desk.engine.orders.active_orders and desk.engine.orders.active_orders[0].filled > 0, timeout=5)
    s = await desk.emergency_stop()
    r = await task
    assert r.status == 'partial' and s['canceled_orders'] == [r.parent.id]
    pos = desk.engine.positions.positions[r.position_id]
    assert sum(f.amount for f in pos.fills if f.side is Side.SELL) == pytest.approx(r.parent.filled)   # sold what was bought
    assert pos.amount == 0 and pos.exit_reason == 'emergency' and s['open_positions_left'] == []
    assert desk.engine.positions.open_positions() == []

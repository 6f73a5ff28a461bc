"The journal: secrets refused, WAL mode, state rebuilt after a restart (a partial fill; an order still working)."
import asyncio, sqlite3
import pytest
from trader.alerts import Alerts
from trader.clock import SimClock
from trader.config import build_config
from trader.core import TradeTick, Side
from trader.data import load_candles, load_markets
from trader.feed import candle_events
from trader.paper import PaperExchange
from trader.orders import SmartOrderManager
from trader.positions import AdvancedPositionManager
from trader.risk import RiskManager
from trader.portfolio import PortfolioManager
from trader.store import Journal, JournalError, rebuild_state
from trader.engine import LiveTradingEngine

SECRET = 'sk-live-0123456789abcdef'

def raw_bytes(path) -> bytes:
    "Everything SQLite wrote for the journal: the database and its WAL."
    return b''.join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))

# ------------------------------------------------------------------ secrets
@pytest.mark.parametrize('payload,where', [
    ({'venue': 'binance', 'apiKey': SECRET}, 'payload.apiKey'),
    ({'exchange': {'name': 'kucoin', 'passphrase': SECRET}}, 'payload.exchange.passphrase'),
    ({'clients': [{'id': 'okx', 'Secret': SECRET}]}, 'payload.clients.Secret'),
    ({'auth': {'private_key': SECRET}}, 'payload.auth.private_key'),
])
def test_secrets_are_refused_and_never_written(tmp_path, payload, where):
    "Input with a credential is stored summarised (the value redacted); a state row with one is refused; neither writes it."
    path = tmp_path / 'j.sqlite'
    j = Journal(path)
    j.append('equity', {'equity': 1.0}, ts=1)
    why = j.append('signal', payload, ts=2)
    assert where in why and SECRET not in why
    with pytest.raises(JournalError) as e: j.append('order_submitted', {'client_order_id': 'c1', **payload}, ts=3)
    assert where in str(e.value) and SECRET not in str(e.value)
    j.append('order_submitted', {'client_order_id': 'c1'}, ts=3)   # the journal still works
    assert [x.kind for x in j.load()] == ['equity', 'signal', 'order_submitted']
    assert j.load('signal')[0].payload['unstorable'].startswith('journal: refusing to store')
    j.close()
    assert SECRET.encode() not in raw_bytes(path)

async def test_an_alert_with_a_secret_is_masked_in_the_journal(tmp_path):
    path = tmp_path / 'j.sqlite'
    j = Journal(path)
    class Null:
        async def send(self, alert): pass
    alerts = Alerts([Null()], clock=SimClock(0), journal=j)
    alerts.emit('critical', f"auth failed with apiKey={SECRET}", source='exchange')
    await alerts.drain(); j.close()
    assert SECRET.encode() not in raw_bytes(path)
    (a,) = rebuild_state(Journal(path)).alerts
    assert a['message'] == 'auth failed with apiKey=***'

# ------------------------------------------------------------------ WAL
def test_wal_mode_and_a_reader_sees_durable_events_while_the_writer_is_open(tmp_path):
    path = tmp_path / 'j.sqlite'
    j = Journal(path)
    reader = sqlite3.connect(path)
    assert reader.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    assert (tmp_path / 'j.sqlite-wal').exists()
    count = lambda kind: reader.execute('SELECT COUNT(*) FROM events WHERE kind = ?', (kind,)).fetchone()[0]
    j.append('equity', {'equity': 1.0}, ts=1)            # buffered until flush
    j.append('fill', {'client_order_id': 'c1', 'price': 1.0}, ts=2)   # durable: committed at once (with what was buffered)
    assert count('fill') == 1 and count('equity') == 1
    j.append('equity', {'equity': 2.0}, ts=3)
    assert count('equity') == 1
    j.flush()
    assert count('equity') == 2
    assert [x.seq for x in j.load()] == [1, 2, 3]
    reader.close(); j.close()

def test_a_flush_is_one_transaction_and_a_failed_one_loses_and_repeats_nothing(tmp_path):
    path = tmp_path / 'j.sqlite'
    j = Journal(path, group_commit=True)
    statements = []; j.db.set_trace_callback(statements.append)
    for ts in (1, 2, 3): j.append('equity', {'equity': float(ts)}, ts=ts)
    j.flush()
    assert [s.split()[0] for s in statements] == ['BEGIN', 'INSERT', 'INSERT', 'INSERT', 'COMMIT']   # not a transaction a row
    j.db.set_trace_callback(None)
    # the disk refuses the third row of the next batch: the batch is rolled back whole and stays pending
    j.db.execute("CREATE TEMP TRIGGER refuse BEFORE INSERT ON events WHEN NEW.ts = 6 BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    for ts in (4, 5, 6): j.append('equity', {'equity': float(ts)}, ts=ts)
    with pytest.raises(JournalError, match='3 rows not committed: IntegrityError: disk full'): j.flush()
    reader = sqlite3.connect(path)
    assert [t for t, in reader.execute('SELECT ts FROM events ORDER BY seq')] == [1, 2, 3]
    j.db.execute('DROP TRIGGER refuse')
    j.flush()                                   # the same rows again, each once
    assert [t for t, in reader.execute('SELECT ts FROM events ORDER BY seq')] == [1, 2, 3, 4, 5, 6]
    reader.close(); j.close()

# ------------------------------------------------------------------ rebuilding from an engine's journal
class Manual:
    symbols, exchange = [], 'binance'

async def build(path):
    events = candle_events({'BTC/USDT': load_candles('BTC/USDT', '2024-08-05 00:00', '2024-08-05 00:05')}, venue='binance')
    clock = SimClock(events[0].close_time / 1000)
    cfg = build_config({'execution': {'default_execution_algo': 'limit', 'timeout_action': 'cancel', 'order_timeout': 300}})
    paper = PaperExchange('binance', balances={'USDT': 10_000.0}, clock=clock)
    orders = SmartOrderManager({'binance': paper}, clock, cfg.execution, cfg.algorithms)
    eng = LiveTradingEngine(orders, AdvancedPositionManager(clock), RiskManager(cfg.risk, cfg.emergency, clock),
                            PortfolioManager(clock=clock), clock=clock, config=cfg, journal=Journal(path), paper_venues={'binance': paper})
    eng.register_strategy('s', Manual(), 0.5)
    for ev in events:
        await clock.advance_to(ev.close_time / 1000); eng.handle(ev)
    await eng.update_pnl()
    return eng, paper, clock

SIGNAL = {'symbol': 'BTC/USDT', 'side': 'buy', 'entry': 58_000.0, 'stop': 57_000.0, 'target': 60_000.0, 'strategy': 's',
          'exchange': 'binance', 'size': 0.03, 'algo': 'limit'}

async def _resting_limit(eng, paper, clock):
    "Start the signal's limit entry; return its task and the venue's record of the resting order."
    task = asyncio.ensure_future(eng.execute_signal(SIGNAL))
    while not await paper.fetch_open_orders(): await clock.settle()
    (o,) = await paper.fetch_open_orders()
    return task, o

async def test_rebuild_after_a_partial_fill(tmp_path):
    path = tmp_path / 'session.sqlite'
    eng, paper, clock = await build(path)
    task, o = await _resting_limit(eng, paper, clock)
    bid = o['price']
    # one real-looking trade through our bid, smaller than the order: a partial fill of 0.02 at our price
    await clock.advance(10)
    eng.handle(TradeTick('BTC/USDT', clock.ms(), bid - 5.0, 0.02, Side.SELL, 't1', 'binance'))
    r = await clock.run(task)            # the rest times out after order_timeout and is cancelled
    assert r.status == 'partial' and r.parent.filled == pytest.approx(0.02), r
    maker = load_markets('binance')['BTC/USDT']['maker']
    eng.journal.close()
    st = rebuild_state(Journal(path))
    (child,) = [x for x in st.orders.values() if x.client_order_id == o['clientOrderId']]
    assert child.status.value == 'canceled' and child.filled == pytest.approx(0.02) and child.remaining == pytest.approx(0.01) and child.amount == 0.03
    assert child.venue_order_id == o['id'] and child.price == bid
    assert st.open_orders == []
    (pos,) = st.positions.values()
    assert pos.id == r.position_id and pos.amount == pytest.approx(0.02) and pos.entry_price == pytest.approx(bid, rel=1e-12)
    assert pos.realized_pnl == pytest.approx(-0.02 * bid * maker, rel=1e-9)      # the maker fee, by hand
    live = eng.positions.positions[r.position_id]
    assert (pos.amount, pos.realized_pnl) == (pytest.approx(live.amount), pytest.approx(live.realized_pnl, abs=1e-9))
    assert [p.id for p in st.open_positions] == [r.position_id]

async def test_a_restart_while_an_order_rests_on_the_venue_finds_it_in_the_journal(tmp_path):
    "The client order id is journaled before the order is sent: a crash with an order working must be recoverable."
    path = tmp_path / 'session.sqlite'
    eng, paper, clock = await build(path)
    task, o = await _resting_limit(eng, paper, clock)
    try:
        st = rebuild_state(Journal(path))   # the process dies here; a new one reads the journal
        assert o['clientOrderId'] in st.orders, f"the journal has orders {sorted(st.orders)}; the venue has {o['clientOrderId']} working"
        assert [x.client_order_id for x in st.open_orders] == [o['clientOrderId']]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

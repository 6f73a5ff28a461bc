"""The `trader` command at its boundary, as a user meets it: real `trader` processes, real papermill sessions.

Every mistake is one line on stderr, exit code 2, and no kernel and no notebook; a session given every option runs
without a papermill warning; a credential's value reaches no stream and no file; a failing cell keeps its partial
report and says where it is."""
import json, os, sqlite3, subprocess, sys
from pathlib import Path
import pytest
import papermill
from trader.cli import main
from trader.data import load_candles

CANARY = 'CANARY-7f3a9c-secret'

def trader(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    "`python -m trader ARGS` in a process of its own."
    return subprocess.run([sys.executable, '-m', 'trader', *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)

def files_under(d:Path) -> list[Path]: return [p for p in d.rglob('*') if p.is_file()]

# ------------------------------------------------------------------ mistakes: one line, exit 2, nothing started
MISTAKES = [
    (['run', '--start', '2030-01-01'], "--start = '2030-01-01' (str): 0 candles of BTC/USDT in [2030-01-01, the end): the bundled data covers"),
    (['run', '--start', 'notadate'], "--start = 'notadate' (str): not a date: use a UTC date as YYYY-MM-DD"),
    (['run', '--start', '2024-08-06', '--end', '2024-08-05'], "--end = '2024-08-05' (str): must be after --start 2024-08-06"),
    (['run', '--symbols', 'DOGE/USDT'], "--symbols = ['DOGE/USDT'] (list): no bundled series for ['DOGE/USDT']"),
    (['run', '--symbols', 'BTCUSDT'], "--symbols = ['BTCUSDT'] (list): 'BTCUSDT' must look like 'BASE/QUOTE'"),
    (['run', '--mode', 'yolo'], "--mode = 'yolo' (str): must be one of ['simulation', 'paper', 'live']"),
    (['run', '--equity', '-5'], '--equity = -5.0 (float): must be above 0'),
    (['run', '--duration', 'nan'], '--duration = nan (float): must be a finite number'),
    (['run', '--strategies', 'momentum=0.7,breakout=0.5'], '(dict): allocations sum to 1.2, more than 1'),
    (['run', '--strategies', 'grid=0.5'], "(dict): unknown strategies ['grid']"),
    (['run', '--strategies', 'momentum'], "argument --strategies: 'momentum' is not name=allocation"),
    (['run', '--exchanges', 'nasdaq'], "--exchanges = ['nasdaq'] (list): not a ccxt exchange id: ['nasdaq']"),
    (['run', '--exchanges', 'kraken'], "--exchanges = ['kraken'] (list): no bundled markets for ['kraken']"),
    (['run', '--config', 'missing.toml'], "--config = 'missing.toml' (str): no such file"),
    (['run', '-p', 'dur', '5'], "-p dur = 5 (int): not a parameter of production.ipynb"),
    (['run', '--speed', '0'], '--speed = 0.0 (float): must be above 0'),
    (['--live'], '--confirm-live = False (bool): live mode sends real orders with real money'),
    (['--live', '--confirm-live'], '--exchanges = None (NoneType): live mode needs the venues to trade'),
    (['--live', '--confirm-live', '--exchanges', 'binance', '--symbols', 'BTC/USDT'],
     "--exchanges = ['binance'] (list): live mode needs API keys: set TRADER_BINANCE_API_KEY and TRADER_BINANCE_SECRET for binance"),
    (['--live', '--confirm-live', '--exchanges', 'binance', '--start', '2024-08-05'], "--start = '2024-08-05' (str): applies to replays"),
    (['bench', '--repeat', '0'], '--repeat = 0 (int): must be at least 1'),
]

@pytest.mark.parametrize('argv,message', MISTAKES, ids=[' '.join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_line_exit_2_and_starts_nothing(tmp_path, monkeypatch, capsys, argv, message):
    "In process, with papermill's executor replaced by one that fails the test: nothing may reach it."
    monkeypatch.delenv('TRADER_BINANCE_API_KEY', raising=False); monkeypatch.delenv('TRADER_BINANCE_SECRET', raising=False)
    monkeypatch.setattr(papermill, 'execute_notebook', lambda *a, **k: pytest.fail('a kernel was started'))
    out = tmp_path / 'runs'
    code = main(argv + (['--output-dir', str(out)] if argv[0] != 'bench' else []))
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and message in err, err
    assert not out.exists()

def test_the_spec_entry_refuses_in_its_own_process(tmp_path):
    "`python -m trader --live` (the spec's entry) in a real process: one line, exit 2, no notebook."
    r = trader('--live', '--output-dir', str(tmp_path / 'runs'))
    assert r.returncode == 2 and r.stdout == '' and r.stderr.count('\n') == 1, r.stderr
    assert r.stderr.startswith('trader run: --confirm-live = False (bool)')
    assert not (tmp_path / 'runs').exists()

def test_each_subcommand_has_its_own_help():
    helps = {c: trader(c, '--help').stdout for c in ('run', 'bench', 'docs')}
    assert '--start' in helps['run'] and 'YYYY-MM-DD' in helps['run'] and '--repeat' not in helps['run']
    assert '--repeat' in helps['bench'] and '--docs-dir' in helps['docs'] and '--mode' not in helps['docs']
    top = trader('--help').stdout
    assert all(c in top for c in ('run', 'bench', 'docs'))

# ------------------------------------------------------------------ secrets
def test_a_credential_parameter_is_refused_without_its_value(tmp_path):
    r = trader('run', '-p', 'api_key', CANARY, '--output-dir', str(tmp_path / 'runs'))
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'api_key = <redacted> (str): refused' in r.stderr, r.stderr
    assert CANARY not in r.stderr + r.stdout and not (tmp_path / 'runs').exists()

def test_a_mistyped_key_in_the_environment_is_named_not_shown(tmp_path):
    r = trader('run', '--output-dir', str(tmp_path / 'runs'), env={'TRADER_BINANCE__API_KEY': CANARY})
    assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr
    assert 'TRADER_BINANCE__API_KEY' in r.stderr and 'exchange keys are read from TRADER_BINANCE_API_KEY' in r.stderr
    assert CANARY not in r.stderr + r.stdout and not (tmp_path / 'runs').exists()

def test_papermill_run_directly_stops_at_the_first_cell_on_a_credential_or_unknown_parameter(tmp_path):
    "Run by papermill itself (which records every parameter it is given, as the notebook says), the notebook refuses."
    nb = Path(__file__).parent.parent / 'nbs' / 'production.ipynb'
    for name, value, expected in (('api_key', CANARY, 'api_key = <redacted> (str): a credential is never a parameter'),
                                  ('dur', 5, 'dur = 5 (int): not a parameter of this notebook')):
        out = tmp_path / f'{name}.ipynb'
        with pytest.raises(papermill.PapermillExecutionError) as e:
            papermill.execute_notebook(str(nb), str(out), parameters={name: value}, kernel_name='python3', progress_bar=False, cwd=str(nb.parent))
        assert e.value.ename == 'ParameterError' and expected in e.value.evalue
        cells = json.loads(out.read_text())['cells']
        failed = next(i for i, c in enumerate(cells) if any(o.get('output_type') == 'error' for o in c.get('outputs', [])))
        assert 'session_parameters(globals()' in ''.join(cells[failed]['source'])   # the first cell after the parameters
        assert not any(c.get('outputs') for c in cells[failed + 1:])                  # nothing ran after it

# ------------------------------------------------------------------ a whole session, every option given
def test_every_option_runs_a_session_without_a_papermill_warning_and_no_secret_lands_anywhere(tmp_path):
    "Keys in the environment (as live mode reads them) must not reach the report, the journal or the streams."
    data = tmp_path / 'btc.feather'
    load_candles('BTC/USDT', '2024-08-04', '2024-08-06').reset_index().to_feather(data)
    cfg = tmp_path / 'trader.toml'; cfg.write_text('[risk]\nrisk_per_trade = 0.005\n')
    out, journal = tmp_path / 'runs', tmp_path / 'account.sqlite'
    nb = Path(__file__).parent.parent / 'nbs' / 'production.ipynb'
    r = trader('run', '--mode', 'simulation', '--duration', '86400', '--exchanges', 'binance', '--symbols', 'BTC/USDT',
               '--strategies', 'momentum=0.5,breakout=0.4', '--config', str(cfg), '--data', str(data), '--start', '2024-08-04T12:00',
               '--end', '2024-08-06', '--speed', '60', '--equity', '5000', '--journal', str(journal), '-p', 'confirm_live', 'false', '--flatten-at-end',
               '--output-dir', str(out), '--notebook', str(nb),
               env={'TRADER_BINANCE_API_KEY': CANARY, 'TRADER_BINANCE_SECRET': CANARY + '-2'})
    assert r.returncode == 0, r.stderr
    for warning in ('Unable to parse', 'unknown parameter', 'Passed unknown', 'papermill'):
        assert warning not in r.stderr, r.stderr
    report, = out.glob('production-*.ipynb')
    assert r.stdout.strip() == f'trader: session report written to {report}'
    params = json.loads(report.read_text())['metadata']['papermill']['parameters']
    assert params['symbols'] == ['BTC/USDT'] and params['equity_usd'] == 5000.0 and params['start'] == '2024-08-04T12:00'
    with sqlite3.connect(journal) as db:
        kinds = dict(db.execute('SELECT kind, count(*) FROM events GROUP BY kind').fetchall())
        first, last = db.execute("SELECT min(ts), max(ts) FROM events WHERE kind = 'equity'").fetchone()
    assert kinds.get('position_opened', 0) > 0, kinds                       # the data file's BTC/USDT series was traded
    assert first >= 1722772800000 and last < 1722902400000 + 60_000         # inside [2024-08-04 12:00, 2024-08-06)
    for f in [*files_under(tmp_path)]:
        assert CANARY.encode() not in f.read_bytes(), f
    assert CANARY not in r.stdout + r.stderr

def test_a_failing_cell_keeps_its_partial_report_and_says_where(tmp_path):
    nb = tmp_path / 'custom.ipynb'
    cells = [{'cell_type': 'code', 'id': 'params', 'metadata': {'tags': ['parameters']}, 'source': 'mode = "simulation"\nsize = 1', 'outputs': [], 'execution_count': None},
             {'cell_type': 'code', 'id': 'divide', 'metadata': {}, 'source': 'ratio = size / 0', 'outputs': [], 'execution_count': None}]
    nb.write_text(json.dumps({'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}},
                              'nbformat': 4, 'nbformat_minor': 5}))
    r = trader('run', '--notebook', str(nb), '-p', 'size', '3', '--output-dir', str(tmp_path / 'runs'))
    # the cell is numbered as the report shows it: the parameters [1], papermill's injected parameters [2], the division [3]
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith('trader run: run failed at cell 3: ZeroDivisionError: division by zero; partial report at '), r.stderr
    partial = Path(r.stderr.strip().split('partial report at ')[-1])
    assert partial.is_absolute() and partial.exists() and 'ZeroDivisionError' in partial.read_text()

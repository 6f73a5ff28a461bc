"The documentation build: every notebook executed, processed as nbdev does, with its figures reaching _proc/."
import json
from pathlib import Path
import pytest
from trader.docs import build_docs

ROOT = Path(__file__).resolve().parent.parent

@pytest.mark.timeout(600)
def test_every_notebook_runs_and_renders_through_nbdev_processing(tmp_path):
    table, site = build_docs(tmp_path / 'build', root=ROOT)
    expected = sorted(str(p.relative_to(ROOT / 'nbs')) for p in (ROOT / 'nbs').rglob('*.ipynb')
                      if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT / 'nbs').parts))
    assert sorted(table.index) == expected and len(expected) >= 38
    failed = table[~table.ran | ~table.processed]
    assert failed.empty, failed.error.to_dict()
    assert (table.errors == 0).all(), table[table.errors > 0].index.tolist()
    # notebooks whose point is a figure carry it into the processed copy (plotly JSON, which Quarto renders)
    for nb in ['31_execution_figures.ipynb', '43_figures.ipynb', 'production.ipynb'] + [f'examples/{n}' for n in
               ('02_registering_strategies.ipynb', '03_signal_execution.ipynb', '04_position_management.ipynb',
                '05_execution_analytics.ipynb', '06_production_loop.ipynb')]:
        assert table.loc[nb, 'figures'] >= 1, nb
    # hidden cells are gone from the processed copy, and show_doc rendered each exported name
    core = json.loads((tmp_path / 'build' / '_proc' / '00_core.ipynb').read_text())
    sources = [''.join(c['source']) for c in core['cells']]
    assert not any('from fastcore.test import' in s for s in sources)
    assert any('show_doc(Signal' in s for s in sources)
    assert 'quarto' in site
    # the repository's own notebooks are untouched: still without outputs
    assert not any(c.get('outputs') for c in json.loads((ROOT / 'nbs' / '00_core.ipynb').read_text())['cells'] if c['cell_type'] == 'code')

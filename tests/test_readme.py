"""README.md is nbs/index.ipynb rendered (nbdev's `nbdev_readme` needs Quarto, which this project cannot install).

Markdown cells are copied as they are; code cells become ```python blocks (nbdev `#|` directives dropped, `#| hide`
cells skipped). The test fails when the two drift; `python tests/test_readme.py` rewrites README.md."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def render(nb_path: Path) -> str:
    "Markdown of a notebook: markdown cells verbatim, visible code cells fenced as python."
    parts = []
    for cell in json.loads(nb_path.read_text())['cells']:
        src = ''.join(cell['source']).strip('\n')
        if cell['cell_type'] == 'markdown': parts.append(src)
        elif cell['cell_type'] == 'code':
            lines = src.split('\n')
            if any(l.strip() in ('#| hide', '#|hide') for l in lines): continue
            code = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
            if code: parts.append(f"```python\n{code}\n```")
    return '\n\n'.join(parts) + '\n'

def test_readme_is_index_rendered():
    expected = render(ROOT / 'nbs' / 'index.ipynb')
    assert (ROOT / 'README.md').read_text() == expected, "README.md is out of step with nbs/index.ipynb: run `python tests/test_readme.py`"

if __name__ == '__main__':
    (ROOT / 'README.md').write_text(render(ROOT / 'nbs' / 'index.ipynb'))
    print('README.md written from nbs/index.ipynb', file=sys.stderr)

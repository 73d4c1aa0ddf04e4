"""Imports run downward only: no module imports from a layer above its own.

Layers, lowest first: the library `deeplab_axial` -> `evaluation` (metrics, the evaluation CLI) -> `trainer` ->
`benchmarks` and `tests`. Inside the library, in this order (a module may import its own level and the ones below):

  0  base       common, io_errors, temp_files, atomic_files, resize, unsupported_fields, lazy_module, protos (and
                the package)
  1  data       descriptors, formats, converters, the input pipeline
  2  model      layers, encoder, decoder, losses, post-processing, models, checkpoint readers
  3  configs    config_utils (configs -> descriptors and models), vis
  4  inference  the shared inference path, multi-scale, loading, export, runners
  5  tools      predict, tools/ (command lines over the rest)

So `model` never imports `inference`, and nothing in the library imports evaluation or the trainer. Every module's
imports are read with `ast` (nothing is imported), function-level ones included.
"""

import ast
import os
from typing import Dict, List, Optional

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE_LAYERS = {'deeplab_axial': 0, 'evaluation': 1, 'trainer': 2, 'benchmarks': 3, 'tests': 3}
_LIBRARY_LEVELS = ('base', 'data', 'model', 'configs', 'inference', 'tools')
# deeplab_axial's first name below the package -> its level in _LIBRARY_LEVELS ('' is the package itself).
LIBRARY_LAYERS = {
    '': 'base', 'common': 'base', 'io_errors': 'base', 'temp_files': 'base', 'atomic_files': 'base',
    'resize': 'base', 'unsupported_fields': 'base', 'protos': 'base', 'cli': 'base', 'lazy_module': 'base',
    'data': 'data',
    'model': 'model',
    'config_utils': 'configs', 'vis': 'configs',
    'inference': 'inference',
    'predict': 'tools', 'tools': 'tools',
}


def _module_name(root: str, path: str) -> str:
    parts = os.path.relpath(path, root)[:-len('.py')].split(os.sep)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> List[tuple]:
    """(line, module, name) of every import statement: `import a.b` is ('a.b', ''), `from a import b` is ('a', 'b')
    (b a submodule or an attribute of a), with relative imports resolved against `module`; a deferred import
    `lazy_module.load('a.b')` is ('a.b', '')."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'load'
                and isinstance(node.func.value, ast.Name) and node.func.value.id == 'lazy_module'
                and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, node.args[0].value, ''))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, '') for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                package = module.split('.') if is_package else module.split('.')[:-1]
                base = '.'.join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, base, alias.name) for alias in node.names]
    return found


class _Layers:
    """Ranks dotted module names of a source tree by the layer table above."""

    def __init__(self, root: str):
        self.root = root
        # Test and benchmark helpers are imported by their bare file name (their folder is on sys.path, after the
        # repository: benchmarks/evaluation.py does not shadow the package).
        self.local = {name[:-3]: folder for folder in ('tests', 'benchmarks')
                      if os.path.isdir(os.path.join(root, folder))
                      for name in os.listdir(os.path.join(root, folder))
                      if name.endswith('.py') and name[:-3] not in _PACKAGE_LAYERS}

    def exists(self, name: str) -> bool:
        """Whether `name` is a module or package of this tree."""
        parts = name.split('.')
        path = os.path.join(self.root, self.local.get(parts[0], ''), *parts)
        return os.path.isfile(path + '.py') or os.path.isdir(path)

    def rank(self, name: str) -> Optional[tuple]:
        """(package layer, library level, how messages name it) of a module of this tree; None for one from
        elsewhere."""
        parts = name.split('.')
        top = self.local.get(parts[0], parts[0])
        if top not in _PACKAGE_LAYERS:
            return None
        if top != 'deeplab_axial':
            return _PACKAGE_LAYERS[top], 0, f'layer {top!r}'
        sub = parts[1] if len(parts) > 1 else ''
        if sub not in LIBRARY_LAYERS:
            raise AssertionError(f'deeplab_axial.{sub} has no level in LIBRARY_LAYERS (tests/test_import_direction.py)'
                                 f'; place it in one of {_LIBRARY_LEVELS}')
        level = LIBRARY_LAYERS[sub]
        return 0, _LIBRARY_LEVELS.index(level), f'library level {level!r}'


def upward_imports(root: str) -> List[str]:
    """One line per import of a higher layer in the tree at `root`: file:line, importer, imported module."""
    layers = _Layers(root)
    problems = []
    for top in _PACKAGE_LAYERS:
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith(('.', '__pycache__')))
            for file in sorted(f for f in files if f.endswith('.py')):
                path = os.path.join(folder, file)
                module = _module_name(root, path)
                own = layers.rank(module) if top not in ('tests', 'benchmarks') else (_PACKAGE_LAYERS[top], 0, '')
                with open(path, encoding='utf-8') as f:
                    tree = ast.parse(f.read(), path)
                for line, base, name in _imports(tree, module, file == '__init__.py'):
                    target = f'{base}.{name}' if name and layers.exists(f'{base}.{name}') else base
                    imported = layers.rank(target)
                    if imported is not None and imported[:2] > own[:2]:
                        problems.append(f'{os.path.relpath(path, root)}:{line}: {module} ({own[2]}) imports {target} '
                                        f'({imported[2]})')
    return problems


def test_no_module_imports_from_a_layer_above_its_own():
    problems = upward_imports(_REPO)
    assert not problems, 'Imports from a higher layer:\n  ' + '\n  '.join(problems)


def _write(root, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_names_each_upward_import(tmp_path):
    """The check itself: upward imports of each kind are reported with file, line and both layers; downward and
    same-level ones, third-party ones and relative ones that stay inside a level are not."""
    _write(tmp_path, {
        'deeplab_axial/__init__.py': '',
        'deeplab_axial/common.py': 'import numpy\n',
        'deeplab_axial/model/__init__.py': '',
        'deeplab_axial/model/deeplab.py': ('from deeplab_axial import common\nfrom . import heads\n\n\n'
                                           'def f():\n    from deeplab_axial.inference import runner\n'),
        'deeplab_axial/model/heads.py': ("from deeplab_axial import lazy_module\n"
                                         "runner = lazy_module.load('deeplab_axial.inference.runner')\n"),
        'deeplab_axial/lazy_module.py': '',
        'deeplab_axial/inference/__init__.py': '',
        'deeplab_axial/inference/runner.py': 'from deeplab_axial.model import deeplab\nfrom evaluation import pq\n',
        'evaluation/__init__.py': '',
        'evaluation/pq.py': 'import deeplab_axial.common\nfrom trainer.train import main\n',
        'trainer/__init__.py': '',
        'trainer/train.py': 'from evaluation import pq\nimport helper\n',
        'tests/helper.py': '',
        'tests/test_x.py': 'from trainer import train\nimport helper\n',
        'benchmarks/bench.py': 'from trainer import train\n',
    })
    assert upward_imports(str(tmp_path)) == [
        "deeplab_axial/inference/runner.py:2: deeplab_axial.inference.runner (library level 'inference') imports "
        "evaluation.pq (layer 'evaluation')",
        "deeplab_axial/model/deeplab.py:6: deeplab_axial.model.deeplab (library level 'model') imports "
        "deeplab_axial.inference.runner (library level 'inference')",
        "deeplab_axial/model/heads.py:2: deeplab_axial.model.heads (library level 'model') imports "
        "deeplab_axial.inference.runner (library level 'inference')",
        "evaluation/pq.py:2: evaluation.pq (layer 'evaluation') imports trainer.train (layer 'trainer')",
        "trainer/train.py:2: trainer.train (layer 'trainer') imports helper (layer 'tests')",
    ]


def test_a_new_library_module_must_be_placed(tmp_path):
    _write(tmp_path, {'deeplab_axial/__init__.py': '', 'deeplab_axial/shiny.py': 'import os\n',
                      'tests/test_y.py': ''})
    try:
        upward_imports(str(tmp_path))
    except AssertionError as e:
        assert 'deeplab_axial.shiny has no level in LIBRARY_LAYERS' in str(e)
    else:
        raise AssertionError('an unplaced library module passed')

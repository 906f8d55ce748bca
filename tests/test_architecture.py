"""The layout of docs/design.md §5, checked on the whole tree (``convex_attention``, the
``baselines`` folder installed as ``convex_attention.baselines``, and the ``benchmarks``
scripts): which part may import which, no import cycles (imports inside functions
included), no private module imported from outside its package, internal imports at the
top of a module (each exception listed here with its reason), and a light core import."""
from __future__ import annotations

import ast
import configparser
import functools
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "convex_attention"
# where each importable package lives (the installed layout: setup.cfg's package_dir)
LOCATIONS = {"convex_attention": PACKAGE, "convex_attention.baselines": ROOT / "baselines"}

# The parts of docs/design.md §5 and what each may import (the package's own modules).
# core: the top of the package; io: the shared floor; bench and paper: the two wings;
# baselines: what is compared against; cli: the command; benchmarks: scripts.
ALLOWED = {
    "core": {"core"},
    "io": {"io"},
    "bench": {"core", "io", "bench"},
    "baselines": {"core", "io", "baselines"},
    "paper": {"core", "io", "baselines", "paper"},
    "cli": {"core", "io", "bench", "baselines", "paper", "cli"},
    "benchmarks": {"core", "io", "bench", "baselines", "paper", "cli"},
}

# Imports of the package's own modules inside functions: each is an exception to "imports at
# the top", kept for a reason.  (module, function) -> reason.  Heavy third-party libraries
# (cvxpy, matplotlib, scipy, sklearn, captum, nibabel, PIL, tqdm, ...) may always be lazy.
LAZY_EXCEPTIONS = {
    ("convex_attention.bench.targets", "plot_core_record"):
        "the core benchmark draws its figure only when asked: the figures bring matplotlib",
    ("convex_attention.paper.config", "_check_with_the_core"):
        "the declarations stay light for --help; the checks that need the core import it when they run",
    ("convex_attention.bench.config", "_backends"):
        "the backend names come from the cvxpylayers wrapper, imported when an option lists them",
    ("convex_attention.bench.config", "_check_with_the_core"):
        "the declarations stay light for --help; the checks that need the core import it when they run",
    ("convex_attention.bench.config", "_registry"):
        "the method registry brings torch; --help lists the names of METHOD_NAMES, a check asks the registry",
    ("convex_attention.paper.config", "_registry"):
        "the method registry brings torch; --help lists the names of METHOD_NAMES, a check asks the registry",
    ("convex_attention.paper.config", "_method"):
        "a method's facts (needs_duals, ...) come from the registry, which brings torch, when a value is checked",
    ("convex_attention.bench.config", "check_device"):
        "the device checks shared with the paper's --device bring torch, when a device is checked",
    ("convex_attention.paper.config", "check_device"):
        "the device checks shared with the benchmark's --device bring torch, when a device is checked",
}
# The command layer: building its parser (and --help) reads only light declarations, and
# the work of a subcommand imports its wing when the command runs.  So in these modules
# every function but the parser builders may import lazily.
LAZY_HANDLER_MODULES = ("convex_attention.cli",)
PARSER_BUILDERS = ("build_parser", "main", "add_", "_add_")


def module_name(path: pathlib.Path) -> str:
    for package, folder in sorted(LOCATIONS.items(), key=lambda kv: -len(kv[0])):
        if folder in path.parents or path.parent == folder:
            parts = [package] + list(path.relative_to(folder).with_suffix("").parts)
            break
    else:
        parts = ["benchmarks", path.stem]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_path(module: str) -> pathlib.Path | None:
    for package, folder in sorted(LOCATIONS.items(), key=lambda kv: -len(kv[0])):
        if module == package or module.startswith(package + "."):
            base = folder.joinpath(*module[len(package):].strip(".").split(".")) if module != package else folder
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.exists():
                    return candidate
            return None
    return None


def part_of(module: str) -> str:
    if module.startswith("benchmarks."):
        return "benchmarks"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("io", "bench", "paper", "cli", "baselines"):
        return parts[1]
    return "core"


class Imports(ast.NodeVisitor):
    """Every import of the package's own modules in one file: ``(target, line, function)``
    (``function`` None at module level)."""

    def __init__(self, name: str, is_package: bool):
        self.package = name if is_package else name.rsplit(".", 1)[0]
        self.found: list[tuple[str, int, str | None]] = []
        self.function: list[str] = []

    def visit_FunctionDef(self, node):
        self.function.append(node.name)
        self.generic_visit(node)
        self.function.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _add(self, target: str, line: int) -> None:
        if module_path(target):
            self.found.append((target, line, self.function[0] if self.function else None))

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.startswith("convex_attention"):
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if not target.startswith("convex_attention"):
            return
        for alias in node.names:  # `from . import metrics` imports a module
            candidate = f"{target}.{alias.name}"
            self._add(candidate if module_path(candidate) else target, node.lineno)


def sources() -> list[pathlib.Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "baselines").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def read_imports(path: pathlib.Path) -> list[tuple[str, int, str | None]]:
    name = module_name(path)
    visitor = Imports(name, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text()))
    return [(t, line, fn) for t, line, fn in visitor.found if t != name]


@functools.cache
def imports() -> dict[str, list[tuple[str, int, str | None]]]:
    """Every module's imports, read once per process when a test first asks (parsing the
    whole tree at collection cost each pytest-xdist worker a second)."""
    return {module_name(p): read_imports(p) for p in sources()}


@functools.cache
def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in found} for m, found in imports().items()}


MODULES = sorted(module_name(p) for p in sources())


def test_the_whole_tree_was_read():
    parts = {part_of(m) for m in graph()}
    assert parts == set(ALLOWED), parts
    assert "convex_attention.solve" in graph()["convex_attention.nn"]
    assert "convex_attention.io.figures" in graph()["convex_attention.paper.explain"]
    assert "convex_attention.baselines.attributions" in graph()["convex_attention.paper.explain"]


@pytest.mark.parametrize("module", MODULES)
def test_dependencies_point_one_way(module):
    mine = part_of(module)
    bad = sorted(m for m in graph()[module] if part_of(m) not in ALLOWED[mine])
    assert not bad, f"{module} ({mine}) must not import {bad}"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph().get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph()):
        if node not in state:
            visit(node)


def _private_parent(target: str) -> str | None:
    """The package a private module belongs to (``None`` if ``target`` is not private)."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _package_of(module: str) -> str:
    path = module_path(module)
    return module if path is not None and path.name == "__init__.py" else module.rsplit(".", 1)[0]


@pytest.mark.parametrize("module", MODULES)
def test_no_private_module_is_imported_from_outside_its_package(module):
    """``a.b._c`` may be imported by the modules of package ``a.b`` (and from inside
    ``a.b._c``), by no one else: not by a subpackage of ``a.b`` either."""
    mine = _package_of(module)
    bad = sorted(t for t in graph()[module] if (owner := _private_parent(t)) is not None
                 and mine != owner and not (mine + ".").startswith(t + "."))
    assert not bad, f"{module} imports the private module(s) {bad} from outside their package"


def test_internal_imports_sit_at_the_top_of_a_module():
    lazy = []
    for module, found in imports().items():
        for target, line, function in found:
            if function is None:
                continue
            if module.startswith(LAZY_HANDLER_MODULES) and not function.startswith(PARSER_BUILDERS):
                continue
            if (module, function) in LAZY_EXCEPTIONS:
                continue
            lazy.append(f"{module}:{line} ({function}) imports {target}")
    assert not lazy, "internal imports inside functions (move them to the top, or list the exception with " \
                     "its reason in LAZY_EXCEPTIONS):\n" + "\n".join(lazy)


def test_every_listed_exception_is_still_needed():
    used = {(m, fn) for m, found in imports().items() for _, _, fn in found if fn is not None}
    assert set(LAZY_EXCEPTIONS) <= used, sorted(set(LAZY_EXCEPTIONS) - used)


def test_the_distribution_lists_every_package_and_no_generic_top_level_name():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {module_name(p) for p in sources() if p.name == "__init__.py"}
    assert listed == on_disk, (sorted(listed - on_disk), sorted(on_disk - listed))
    assert all(p.split(".")[0] == "convex_attention" for p in listed)


def test_core_stays_small():
    # (13 since given_maps.py took given maps' agreement out of dual.py, 2,274 lines then: a concept of
    # its own, with its own tests; a fourteenth module should first ask whether two can share a home)
    core = [p for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(core) <= 13, sorted(p.name for p in core)


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_import_loads_no_heavy_dependency():
    code = ("import sys, convex_attention, convex_attention.bench, convex_attention.cli\n"
            "heavy = ['torch', 'scipy', 'cvxpy', 'cvxpylayers', 'diffcp', 'matplotlib', 'captum', 'sklearn', "
            "'nibabel', 'PIL']\n"
            "print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"import convex_attention loaded {out.stdout.strip()}"


def test_docs_point_inside_the_repository():
    outside = []
    for path in list(ROOT.glob("*.md")) + list((ROOT / "docs").rglob("*.md")) + sources() \
            + list((ROOT / "tests").glob("*.py")):
        text = path.read_text(errors="replace")
        if "../shared" in text or "DESIGN.md" in text:
            if path.name != "test_architecture.py":
                outside.append(str(path.relative_to(ROOT)))
    assert not outside, f"these files point outside the repository: {outside}"


# Tests mirror modules: module m is tested in tests/test_<m>.py, or (small modules of one
# package, and names two packages share) in the file listed here.
SHARED_TEST_FILES = {
    "convex_attention.paper.data.brats": "test_data.py",
    "convex_attention.paper.data.folder": "test_data.py",
    "convex_attention.paper.data.synthetic": "test_data.py",
    "convex_attention.paper.models.unet": "test_models.py",
    "convex_attention.paper.models.plain_cnn": "test_models.py",
    "convex_attention.paper.model_scores": "test_models.py",
    "convex_attention.bench.plots._common": "test_plots.py",
    "convex_attention.bench.plots.consistency": "test_plots.py",
    "convex_attention.bench.plots.maps": "test_plots.py",
    "convex_attention.bench.plots.speed": "test_plots.py",
    "convex_attention.bench.plots.graphs": "test_plots.py",
    "convex_attention.bench.config": "test_sweep.py",  # paper.config has test_config.py
    "convex_attention.cli.paper": "test_paper_cli.py",  # paper's modules have the plain names
    "convex_attention.cli.bench": "test_cli.py",
    "convex_attention.cli.data": "test_validity.py",
    "convex_attention.cli._common": "test_cli_conventions.py",
    "convex_attention.baselines.attributions": "test_baselines.py",
    "convex_attention.baselines.paper_loss": "test_baselines.py",
    "convex_attention.baselines.linsat": "test_baselines.py",
}


def test_tests_mirror_modules():
    tests = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    missing = []
    for module in sorted(graph()):
        path = module_path(module)
        if module.startswith("benchmarks.") or path is None or path.name == "__init__.py" \
                or module.endswith("__main__"):
            continue
        wanted = SHARED_TEST_FILES.get(module, f"test_{module.rsplit('.', 1)[-1].lstrip('_')}.py")
        if wanted not in tests:
            missing.append(f"{module}: {wanted}")
    assert not missing, "modules without their test file: " + ", ".join(missing)


def test_the_public_names_are_one_list_the_lazy_table_the_type_checkers_imports_and_all():
    """``__init__``'s three views of the public API name the same things: the lazy table
    ``_PUBLIC`` (name -> core module), the imports type checkers see, and ``__all__``."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    checked = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    eager = {alias.name: stmt.module for stmt in checked.body if isinstance(stmt, ast.ImportFrom)
             for alias in stmt.names}
    import convex_attention

    lazy = convex_attention._PUBLIC
    assert eager == lazy, set(eager.items()) ^ set(lazy.items())
    assert set(convex_attention.__all__) == set(lazy) | {"__version__"}
    assert len(convex_attention.__all__) == len(set(convex_attention.__all__))


# ---- ca_rev121 (strict xfail: review of 96d96df)

def _ca_rev121_requirements() -> tuple[str, list[str]]:
    """setup.cfg's python_requires and install_requires, as written."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    options = cfg["options"]
    lines = [line.split("#")[0].strip() for line in options["install_requires"].splitlines()]
    return options["python_requires"].strip(), [line for line in lines if line]


def test_ca_rev121_every_requirement_at_its_floor_installs_on_the_oldest_python_allowed():
    """Run: in a fresh venv of Python 3.10.13 (python_requires = >=3.10; README "Python >= 3.10"),
    `pip install --dry-run /tmp/ca_rev121`. Expected: it resolves, or setup.cfg says the Python it needs.
    Observed: 'Could not find a version that satisfies the requirement cvxpylayers>=1.2 (from versions:
    ... 0.1.9)': every cvxpylayers from 1.0.0 (1.2.0 included) is 'Requires-Python >=3.11' (so are cvxpy
    1.9, which cvxpylayers 1.2 requires, numpy 2.3+ and matplotlib 3.11), and `make demo` with a Python
    3.10 `python3` fails after the torch download. Here: a requirement installed at its declared floor
    must admit the floor of python_requires."""
    import re
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    python_requires, requirements = _ca_rev121_requirements()
    python_floor = re.search(r">=\s*([0-9.]+)", python_requires).group(1)
    at_floor = {}
    for line in requirements:
        req = Requirement(line)
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        try:
            installed = Version(metadata.version(req.name))
        except metadata.PackageNotFoundError:
            continue
        if floors and installed == floors[0]:
            at_floor[req.name] = metadata.metadata(req.name).get("Requires-Python") or ""
    if not at_floor:
        pytest.skip("no requirement is installed at its declared floor here")
    refused = {name: needs for name, needs in at_floor.items() if not SpecifierSet(needs).contains(python_floor)}
    assert not refused, f"python_requires {python_requires}, but at their floors: {refused}"


@pytest.mark.slow  # a Python process of its own that imports torch (2-4 s)
def test_ca_rev121_the_checkout_runs_in_place_without_an_editable_install():
    """Run: a fresh venv, `pip install '/tmp/ca_rev121[all]'` (not -e), then from the checkout's root
    `python -m pytest --co -q` and `python -m convex_attention.cli explain --checkpoints a=x.pt`.
    Expected: the suite collects, and explain reaches its own checks (as it does from any other folder:
    "checkpoint 'x.pt' does not exist", exit 2). Observed: 4 collection errors (test_baselines,
    test_experiment, test_explain, test_reports: "No module named 'convex_attention.baselines'") and
    explain ends in that ModuleNotFoundError's traceback: the root's convex_attention/ shadows the installed
    one, and baselines/ joins it only through setup.cfg's package_dir, i.e. in an install; `make test`
    passes only because make installs with -e, whose finder maps the name. Here: the checkout first on
    sys.path, no editable finder."""
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path\n"
            "                    if not getattr(f, '__module__', '').startswith('__editable')]\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "import convex_attention.paper.explain as explain\n"
            f"assert explain.__file__.startswith({str(ROOT)!r}), explain.__file__\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


# ---- ca_rev122 (strict xfail: review of b3f1e07)

@pytest.mark.slow  # a Python process of its own that imports the package (1-3 s)
def test_ca_rev122_a_checkout_run_in_place_imports_its_own_baselines(tmp_path):
    """Run: a copy of the checkout (tar of /work/main into /tmp/ca_rev122), the venv's editable install
    pointing at /work/main (setuptools' _EditableFinder, MAPPING 'convex_attention.baselines':
    '/work/main/baselines'), `PYTHONPATH=/tmp/ca_rev122 python -c 'import convex_attention.baselines'`.
    Expected (convex_attention/__init__.py: _BaselinesBeside finds 'the baselines/ folder beside this
    package, for a source checkout run in place'): the copy's baselines/, beside the convex_attention/
    imported.  Observed: convex_attention from /tmp/ca_rev122/convex_attention/__init__.py,
    convex_attention.baselines from /work/main/baselines/__init__.py (sys.meta_path: ..., PathFinder,
    _EditableFinder, _BaselinesBeside: the finder is appended, after the other checkout's editable
    finder, whose mapping of convex_attention itself lost to the path).  Here: a finder mapping the name to
    another folder, as the editable install's does, and the checkout first on sys.path."""
    other = tmp_path / "other_checkout" / "baselines"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("OTHER = True\n", encoding="utf-8")
    code = ("import importlib.util, sys\n"
            "class Editable:  # as setuptools' editable finder of another checkout\n"
            "    @staticmethod\n"
            "    def find_spec(name, path=None, target=None):\n"
            "        if name != 'convex_attention.baselines':\n"
            "            return None\n"
            f"        return importlib.util.spec_from_file_location(name, {str(other / '__init__.py')!r},\n"
            f"                                                      submodule_search_locations=[{str(other)!r}])\n"
            "sys.meta_path[:] = [f for f in sys.meta_path\n"
            "                    if not getattr(f, '__module__', '').startswith('__editable')] + [Editable]\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "import convex_attention, convex_attention.baselines as b\n"
            f"assert convex_attention.__file__.startswith({str(ROOT)!r}), convex_attention.__file__\n"
            f"assert b.__file__.startswith({str(ROOT)!r}), b.__file__\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def test_ca_rev122_setup_cfg_says_the_torch_floor_it_requires():
    """Read: setup.cfg after 53f0e26 (torch >=2.3: 'the core uses torch.uint16/32/64, new in 2.3'; README
    'PyTorch 2.3–2.13').  Expected: the comment above install_requires states the range the requirement
    holds.  Observed: '# torch: any release from 2.1 up to 2.13.x (...)' over 'torch>=2.3,<2.14'."""
    import re

    text = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    stated = re.search(r"#\s*torch: any release from ([0-9.]+)", text)
    floor = re.search(r"^\s*torch>=([0-9.]+)", text, flags=re.M).group(1)
    assert stated is None or stated.group(1) == floor, (stated.group(0), floor)


def test_ca_rev237_the_torch_range_ci_tests_is_the_one_setup_cfg_and_readme_state():
    """setup.cfg accepted torch 2.3 and README said "PyTorch 2.3–2.13", but only 2.13 was ever run: on 2.3.1
    261 fast tests failed (wrong gradients, errors), on 2.6.0 9; on 2.14.1 (then outside the cap) 21 (ca_rev240).
    make test-floor and make test-ceiling (CI) run the fast suite on TORCH_FLOOR and TORCH_CEILING: their minor
    releases are setup.cfg's floor and the last below its cap, and README's range is theirs."""
    import re

    cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    floor, cap = re.search(r"^\s*torch>=([0-9.]+),<([0-9.]+)", cfg, flags=re.M).groups()
    makefile = (ROOT / "Makefile").read_text()
    tested = re.search(r"^TORCH_FLOOR\s*=\s*([0-9.]+)$", makefile, flags=re.M).group(1)
    newest = re.search(r"^TORCH_CEILING\s*=\s*([0-9.]+)$", makefile, flags=re.M).group(1)
    assert tested.split(".")[:2] == floor.split(".")[:2], (tested, floor)
    major, minor = cap.split(".")[:2]
    assert newest.split(".")[:2] == [major, str(int(minor) - 1)], (newest, cap)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test-floor" in ci and "make test-ceiling" in ci
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"PyTorch {floor}–{major}.{int(minor) - 1} " in readme and f"`torch>={floor},<{cap}`" in readme
    # the floor and the ceiling run on the Pythons after setup.cfg's oldest, which make test runs (3.13 changed
    # argparse: ca_rev241): every Python from python_requires to the newest tested runs the suite, CI names them
    oldest = re.search(r"^python_requires\s*=\s*>=\s*3\.([0-9]+)$", cfg, flags=re.M).group(1)
    pythons = [re.search(rf"^PYTHON_{end}\s*\?=\s*python3\.([0-9]+)$", makefile, flags=re.M).group(1)
               for end in ("FLOOR", "CEILING")]
    assert [int(oldest) + 1, int(oldest) + 2] == [int(p) for p in pythons], (oldest, pythons)
    for end, minor in zip(("FLOOR", "CEILING"), pythons):
        assert re.search(rf'^make test-{end.lower()} PYTHON_{end}="\$\(python_version 3\.{minor}\)"$', ci, flags=re.M)
    assert f"part also on 3.{pythons[0]} and 3.{pythons[1]} in CI" in readme
    assert f"{tested} with Python 3.{pythons[0]} and on {newest} with Python 3.{pythons[1]}" in readme


# ---- ca_rev124 (strict xfail: review of 4e56f86)

@pytest.mark.slow  # a Python process of its own that imports the package (1-3 s)
def test_ca_rev124_a_later_import_from_another_path_gets_its_own_baselines(tmp_path):
    """Run: one Python process imports convex_attention and convex_attention.baselines from the checkout
    (ROOT first on sys.path: _BaselinesBeside is inserted at sys.meta_path[0]), drops them from
    sys.modules, takes ROOT off sys.path and imports convex_attention from another folder, an install's
    layout (convex_attention/baselines/ inside the package, so no finder of its own is added), then
    convex_attention.baselines.  Expected: that install's own baselines (at fee9163, where the finder
    was appended: site/convex_attention/baselines/__init__.py).  Observed: ROOT/baselines/__init__.py:
    the first checkout's finder, still first, answers for the name whichever convex_attention is
    imported now (it never compares its folder with the package in sys.modules)."""
    site = tmp_path / "site" / "convex_attention"
    (site / "baselines").mkdir(parents=True)
    (site / "__init__.py").write_text("", encoding="utf-8")
    (site / "baselines" / "__init__.py").write_text("INSTALLED = True\n", encoding="utf-8")
    code = ("import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "import convex_attention, convex_attention.baselines\n"
            "for name in [n for n in sys.modules if n.split('.')[0] == 'convex_attention']:\n"
            "    del sys.modules[name]\n"
            f"sys.path.remove({str(ROOT)!r})\n"
            f"sys.path.insert(0, {str(site.parent)!r})\n"
            "import convex_attention, convex_attention.baselines as b\n"
            f"assert convex_attention.__file__.startswith({str(site)!r}), convex_attention.__file__\n"
            f"assert b.__file__.startswith({str(site)!r}), b.__file__\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]

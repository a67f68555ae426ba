"""`transferline deploy --from-git URL[@REF]`: what the value means and the pull steps it
registers (the deployment itself runs in tests/test_multimachine_e2e.py)."""

from __future__ import annotations

import subprocess

import pytest

from flows.deploy import DeployError, GitSource, parse_git_source, pull_steps

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("value", "expected"), [
    (f"https://git.example/org/repo.git@{SHA}", GitSource("https://git.example/org/repo.git", commit=SHA)),
    ("git@git.example:org/repo.git@main", GitSource("git@git.example:org/repo.git", branch="main")),
    ("file:///srv/repo.git@feature/x", GitSource("file:///srv/repo.git", branch="feature/x")),
])
def test_ref_is_a_pinned_commit_or_a_followed_branch(value, expected, tmp_path):
    assert parse_git_source(value, tmp_path) == expected


def test_no_ref_pins_this_checkouts_head_and_a_short_sha_is_refused(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "c"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    # the user part of an ssh URL is not a ref
    assert parse_git_source("git@git.example:org/repo.git", tmp_path) == GitSource("git@git.example:org/repo.git",
                                                                                  commit=head)
    with pytest.raises(DeployError, match="all 40 hex digits"):
        parse_git_source("https://git.example/org/repo.git@0123abc", tmp_path)
    bare = tmp_path.parent / f"{tmp_path.name}-no-git"
    bare.mkdir()
    with pytest.raises(DeployError, match="no git commit to pin"):
        parse_git_source("https://git.example/org/repo.git", bare)


def test_pull_steps_clone_install_and_pull():
    steps = pull_steps(GitSource("https://git.example/org/repo.git", commit=SHA))
    (clone,), (export,), (install,), (pull,) = (step.items() for step in steps)
    assert clone == ("prefect.deployments.steps.git_clone",
                     {"id": "clone", "repository": "https://git.example/org/repo.git", "commit_sha": SHA})
    assert "uv export --frozen --no-dev" in export[1]["script"]
    assert install[0] == "prefect.deployments.steps.pip_install_requirements"
    assert pull[1] == {"directory": "{{ clone.directory }}", "script": "dvc pull --allow-missing"}

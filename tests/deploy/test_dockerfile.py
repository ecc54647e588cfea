"""The Dockerfile, checked without a Docker engine: it parses, its final stage is lean and unprivileged,
its health check and command are the ones the tests run, and its build context installs a complete package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from proxy.settings import Settings
from tests.deploy.conftest import ROOT
from tests.deploy.dockerfile import DockerfileError, Instruction, parse
from tests.harness.proxy import ProxyProcess
from tests.harness.servers import free_port

COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|rustc|cargo)\b")
VENV_BIN = Path(sys.executable).parent


def final(stages):
    return stages[-1]


def test_every_instruction_is_valid_and_every_stage_is_slim_python(stages):
    assert len(stages) >= 2, "multi-stage: build in one stage, copy the installed venv into a clean one"
    for number, stage in enumerate(stages):
        earlier = {other.name for other in stages[:number]}
        assert stage.base == "python:3.11-slim" or stage.base in earlier, f"stage {stage.name}: FROM {stage.base}"


def by_name(stages, name):
    (stage,) = [stage for stage in stages if stage.name == name]
    return stage


def lineage(stages, stage) -> list:
    """The stage and every stage it is built FROM, back to the base image."""
    names = {other.name: other for other in stages}
    chain = [stage]
    while chain[-1].base in names:
        chain.append(names[chain[-1].base])
    return chain


def venv_source(stages, stage):
    """The stage whose /opt/recguard a final stage copies."""
    (copy,) = [copy for copy in stage.all("COPY") if copy.arguments.split()[1:2] == ["/opt/recguard"]]
    return by_name(stages, copy.arguments.split()[0].removeprefix("--from="))


def pip_installs(stages, stage) -> list[str]:
    return [run.arguments for built in lineage(stages, stage) for run in built.all("RUN") if "pip install" in run.arguments]


def test_the_serving_image_is_the_default_target_and_installs_no_training_dependency(stages):
    """`docker build .` builds the last stage: the runtime, its venv installed without torch or the train extra."""
    runtime = final(stages)
    assert runtime.name == "runtime" and runtime.last("CMD").exec_form() == ["recguard", "serve"]
    installs = pip_installs(stages, venv_source(stages, runtime))
    assert installs and not [run for run in installs if "torch" in run or "[train]" in run], installs


def test_a_train_target_installs_the_pinned_torch_and_the_train_extra(stages):
    train = by_name(stages, "train")
    installs = pip_installs(stages, venv_source(stages, train))
    assert any("torch==" in run for run in installs) and any('".[train]"' in run for run in installs), installs
    (torch,) = [run for run in installs if "torch==" in run]
    assert "TORCH_INDEX_URL" in torch and "TORCH_FIND_LINKS" in torch, "a CPU wheel can be chosen at build time"
    for run in train.all("RUN"):
        assert not COMPILERS.search(run.arguments) and "pip install" not in run.arguments
    assert all(copy.arguments.startswith("--from=") for copy in train.all("COPY"))
    assert train.last("ENTRYPOINT").exec_form() == ["recguard"]
    uid = train.last("USER").arguments.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_the_parser_refuses_broken_instructions(tmp_path):
    for text, message in [("RUNN echo\n", "unknown instruction"), ("RUN echo\n", "only ARG"),
                          ('FROM x\nCMD ["a", \n', "JSON array"), ("FROM x\nRUN a \\\n", "past the end")]:
        (tmp_path / "Dockerfile").write_text(text)
        with pytest.raises(DockerfileError, match=message):
            parse(tmp_path / "Dockerfile")


def test_the_final_stage_has_no_compilers_and_no_sources(stages):
    runtime = final(stages)
    for run in runtime.all("RUN"):
        assert not COMPILERS.search(run.arguments), f"line {run.line}: compiler in the final stage"
        assert "apt-get install" not in run.arguments and "pip install" not in run.arguments
    copies = [copy.arguments.split() for copy in runtime.all("COPY")]
    assert copies and all(words[0].startswith("--from=") for words in copies), "the final stage copies only built artefacts"


def test_the_final_stage_runs_as_a_numeric_non_root_user(stages):
    user = final(stages).last("USER")
    assert user is not None
    uid = user.arguments.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_exposed_port_is_the_bind_port(stages):
    runtime = final(stages)
    port = Settings.from_env({"RECGUARD_BIND": runtime.env()["RECGUARD_BIND"]}).server.bind.rpartition(":")[2]
    assert runtime.last("EXPOSE").arguments.split() == [port]
    assert runtime.env()["RECGUARD_BIND"].startswith("0.0.0.0:"), "listen on all interfaces inside the container"


def test_image_settings_are_valid_recguard_settings(stages):
    env = {key: value for key, value in final(stages).env().items() if key.startswith("RECGUARD_")}
    settings = Settings.from_env(env)
    assert str(settings.server.bundle) == "/bundle"


def test_health_check_calls_livez(stages, get_routes):
    health = final(stages).last("HEALTHCHECK")
    command = health.exec_form()
    assert command is not None and command[0] == "python"
    assert "/livez" in command[-1] and "/livez" in get_routes


def test_command_is_recguard_serve_as_the_end_to_end_tests_run_it(stages):
    command = final(stages).last("CMD").exec_form()
    assert command == ["recguard", "serve"], "every setting comes from RECGUARD_* variables"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["recguard"] == "proxy.cli.main:main"
    e2e = ProxyProcess(Path("bundle"), "redis://127.0.0.1:1/0").command
    assert e2e[1:3] == ["-m", "proxy.cli.main"] and e2e[3:4] == command[1:]


def test_torch_pin_matches_the_makefile():
    pin = re.compile(r"torch==([0-9][0-9.]*)")
    assert pin.findall((ROOT / "Dockerfile").read_text()) == pin.findall((ROOT / "Makefile").read_text())[:1]


def test_no_package_index_is_hard_coded():
    text = (ROOT / "Dockerfile").read_text()
    assert set(re.findall(r"https?://([^/:'\"\s]+)", text)) <= {"127.0.0.1"}


def context_sources(stages) -> list[str]:
    """The build-context paths the Dockerfile copies (COPY without --from), each once (two stages copy the sources)."""
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            words = copy.arguments.split()
            if not any(word.startswith("--from=") for word in words):
                sources += [word for word in words[:-1] if not word.startswith("--")]
    return list(dict.fromkeys(sources))


def test_dockerignore_lets_in_exactly_what_is_copied(stages):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from an empty context: nothing of .venv, data or bundles leaks in"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    assert allowed == {source.rstrip("/") for source in context_sources(stages)}


@pytest.mark.system
def test_the_build_context_installs_a_complete_package(stages, tmp_path):
    context = tmp_path / "context"
    for source in dict.fromkeys(context_sources(stages)):  # the build and train stages copy the same
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(path, context / source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "wheel"), str(context)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("recguard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"proxy/http/dashboard.html", "proxy/http/wsgi.py", "proxy/http/gunicorn_config.py", "model/bundle.py"} <= names


def run_health_check(health: Instruction, env: dict[str, str]) -> int:
    command = health.exec_form()
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=10,
                          check=False).returncode


@pytest.mark.system
def test_the_image_command_serves_and_passes_its_health_check(stages, tiny_bundle, redis_server, tmp_path):
    runtime = final(stages)
    port = free_port()
    image_env = {key: value for key, value in runtime.env().items() if key != "PATH"}
    # What `docker run -v BUNDLE:/bundle -e RECGUARD_REDIS_URL=...` would change, and nothing else.
    env = {**os.environ, **image_env, "RECGUARD_BIND": f"0.0.0.0:{port}", "RECGUARD_BUNDLE": str(tiny_bundle),
           "RECGUARD_REDIS_URL": redis_server.url}
    server = ProxyProcess(tiny_bundle, redis_server.url, log_path=tmp_path / "serve.log")
    server.command = [str(VENV_BIN / runtime.last("CMD").exec_form()[0]), *runtime.last("CMD").exec_form()[1:]]
    server.env, server.port, server.url = env, port, f"http://127.0.0.1:{port}"
    health = runtime.last("HEALTHCHECK")
    assert run_health_check(health, env) != 0, "nothing listens yet: the check must fail"
    server.start()
    try:
        assert run_health_check(health, env) == 0
    finally:
        server.stop()

"""Multi-device tests need several CPU devices, a count fixed when jax's backend starts, so they
run in child processes and folders that import jax normally keep their single device:

* ``multidevice/``: a pytest run with 8 forced host devices (collected only there: ``CHILD_ENV``);
* ``multihost_worker.py``: two processes of 2 devices each, joined by ``jax.distributed``;
* ``experiments.generate`` on a 2-device mesh (the command line and its config).

``children`` starts them all at once (their compilations overlap) for ``test_children.py``.
"""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

CHILD_ENV = "LCACHE_MULTIDEVICE_CHILD"
# -O0 XLA: the children compile ~15 small programs and run each once or twice.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
HERE = pathlib.Path(__file__).parent

collect_ignore = [] if os.environ.get(CHILD_ENV) else ["multidevice"]


def _env(devices: int, **extra) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA} " \
            f"--xla_force_host_platform_device_count={devices}"
    return {**os.environ, "XLA_FLAGS": flags.strip(), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Child:
    """A started child process whose output goes to files (pipes could fill and stall it
    while its peer waits in a collective)."""

    def __init__(self, args, env, directory: pathlib.Path):
        self.out, self.err = directory / "stdout", directory / "stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, *args], env=env, cwd=HERE.parents[1],
                                         stdout=out, stderr=err)

    def result(self, timeout: float = 900) -> tuple[int, str, str]:
        """-> (return code, stdout, stderr) once it has ended."""
        code = self.proc.wait(timeout)
        return code, self.out.read_text(), self.err.read_text()


@pytest.fixture(scope="session")
def children(tmp_path_factory):
    """``{name: Child}``, all started together."""
    port = str(_free_port())
    new = lambda name, args, env: Child(args, env, tmp_path_factory.mktemp(name))
    kids = {"multidevice": new("multidevice", ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                                               str(HERE / "multidevice")],
                               _env(8, **{CHILD_ENV: "1"}))}
    for pid in range(2):
        kids[f"process{pid}"] = new(f"process{pid}",
                                    [str(HERE / "multihost_worker.py"), str(pid), port], _env(2))
    kids["generate_cli"] = new("generate_cli", [
        "-m", "experiments.generate", "--config=configs/generate.py:smoke",
        "--config.policy=streaming_llm", "--config.budget=16", "--config.batch=2",
        "--config.mesh.data=2", "--config.sampling.max_new_tokens=4"], _env(2))
    try:
        yield kids
    finally:
        for kid in kids.values():
            kid.proc.kill()

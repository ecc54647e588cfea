"""Put this directory on PYTHONPATH and torch and torch_geometric cannot be imported, as in the serving
install (no `train` extra), in this interpreter and every one it starts (gunicorn's workers too). Each
attempt, caught or not, is appended to the file named by TORCH_IMPORT_ATTEMPTS: a serving path that
tries torch and falls back quietly is still seen."""

import os
import sys

BLOCKED = ("torch", "torch_geometric")


class _WithoutTraining:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in BLOCKED:
            return None  # noqa: RET501 (the finder protocol: None means not mine)
        log = os.environ.get("TORCH_IMPORT_ATTEMPTS")
        if log:
            with open(log, "a") as attempts:
                attempts.write(f"{os.getpid()} {name}\n")
        raise ModuleNotFoundError(f"No module named {top!r} (hidden: the serving install)", name=top)


sys.meta_path.insert(0, _WithoutTraining())

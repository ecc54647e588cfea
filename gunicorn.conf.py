# gunicorn reads this file when started from the repository root; the settings live in the package.
from proxy.http.gunicorn_config import *  # noqa: F401,F403

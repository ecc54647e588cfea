"""The one module-level app, for gunicorn: settings come from the RECGUARD_* environment `recguard serve` set."""

from proxy.http.app import create_app
from proxy.http.logs import configure_logging
from proxy.settings import Settings

settings = Settings.from_env()
configure_logging(settings.server.log_level)
app = create_app(settings)

"""A real babysit server on a loopback port, for the tests that need one."""
import contextlib

from web.app import ServerConfig, create_app
from web.serving import serve_in_thread


@contextlib.contextmanager
def serving(logdir, port: int = 0, token=None):
    """A real server on a loopback port for the block, stopped and its store closed after."""
    app = create_app(ServerConfig(logdir=logdir, token=token))
    running = serve_in_thread(app, port=port)
    try:
        yield running
    finally:
        running.stop()
        app.store.close()

"""babysit web: the Flask app factory, the Socket.IO channels and (issue 3) the Bokeh dashboard.

``create_app(ServerConfig(...))`` builds the app without starting anything; see
:mod:`web.app`. Importing this package never imports torch.
"""
from web.app import App, ServerConfig, create_app

__all__ = ["App", "ServerConfig", "create_app"]

"""babysit web: Flask app factory, Socket.IO namespaces and the Bokeh dashboard (issue 3)."""

"""The block and model explorer: read-only pages a supernode serves (``main.py --http PORT``) on
its own copy of the chain, its view of the network and, on the entry node, the jobs'
evaluations. Starlette routes (``app``) over a read model (``views``), Jinja2 templates, charts
rendered on the server (``charts``, matplotlib SVG: nothing loaded from elsewhere), the operator's
admin token checked in one place (``access``), served by uvicorn on a thread (``server``)."""

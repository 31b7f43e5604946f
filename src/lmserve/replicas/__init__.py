"""A model's replicas across a Ray cluster (``lmserve serve --ray``), on Ray Serve.

``cluster.py`` joins the cluster and deploys each loaded model as a Serve application;
``deployment.py`` is a replica (today's engine, on its node); ``engine.py`` is what lmserve's
server holds instead of a local engine; ``routing.py`` sends requests that share a prompt
prefix to the replica that holds it.  Ray is an optional dependency (``pip install
'lmserve[ray]'``): nothing imports this package unless the server runs with ``--ray``.
"""

"""The HTTP API: routers, protocol models, services and error mapping."""
